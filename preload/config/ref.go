package config

import (
	"fmt"

	"github.com/distribution/reference"
)

// NormalizeRef normalizes an image reference the way the kubelet does
// before it asks the runtime: "nginx" is docker.io/library/nginx:latest, a
// digest reference keeps its digest, and its tag if it has one.
func NormalizeRef(s string) (string, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return "", err
	}
	return reference.TagNameOnly(named).String(), nil
}

// PullRefs are the references an image may be pulled by: its name, and
// its mirror's reference when it has a mirror.
func (img Image) PullRefs() []string {
	refs := []string{img.Name}
	if img.Mirror != "" {
		if ref, err := MirrorRef(img.Name, img.Mirror); err == nil {
			refs = append(refs, ref)
		}
	}
	return refs
}

// MirrorRef is where image name is pulled from when its entry has a mirror:
// the mirror (host[:port][/path]), then the repository path without its
// registry, then the tag and/or digest.
// registry.k8s.io/coredns/coredns:v1.12.0 with mirror artifacts.corp/k8s is
// artifacts.corp/k8s/coredns/coredns:v1.12.0. Docker Hub's implicit
// library/ stays (docker.io/library/nginx:1 is mirror/library/nginx:1), as
// registry proxy caches (Harbor, Artifactory, distribution) lay them out.
func MirrorRef(name, mirror string) (string, error) {
	ref, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return "", err
	}
	s := mirror + "/" + reference.Path(ref)
	if t, ok := ref.(reference.Tagged); ok {
		s += ":" + t.Tag()
	}
	if d, ok := ref.(reference.Digested); ok {
		s += "@" + d.Digest().String()
	}
	if _, err := reference.ParseNormalizedNamed(s); err != nil {
		return "", fmt.Errorf("mirror reference %s: %w", s, err)
	}
	return s, nil
}
