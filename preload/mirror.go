package preload

import (
	"context"
	"fmt"
	"time"

	"github.com/distribution/reference"

	"github.com/kube-preloader/kube-preloader/noderuntime"
)

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

// pullMirror pulls img from its mirror through the CRI, with the mirror
// host's credentials, then records the image under img.Name, so that a pod
// naming img.Name with imagePullPolicy Never finds it.
func (e *Engine) pullMirror(ctx context.Context, cfg *Config, img Image) Result {
	start := time.Now()
	// Asked first: a mirror pull that cannot be recorded under img.Name
	// is of no use to a pod that names img.Name.
	if err := e.Store.Can(noderuntime.OpTag); err != nil {
		return failed(img.Name, fmt.Errorf("mirror: %w", err), 0, 0)
	}
	src, err := MirrorRef(img.Name, img.Mirror)
	if err != nil {
		return failed(img.Name, err, 0, 0)
	}
	from := img
	from.Name = src
	r := e.pull(ctx, cfg, from)
	r.Image, r.Source = img.Name, src
	if r.Status != StatusPulled {
		return r
	}
	if err := e.Store.Tag(ctx, img.Name, src); err != nil {
		r = failed(img.Name, err, time.Since(start), r.Attempts)
		r.Source = src
		return r
	}
	if err := e.awaitCRI(ctx, img.Name, ""); err != nil {
		r = failed(img.Name, err, time.Since(start), r.Attempts)
		r.Source = src
		return r
	}
	e.log().Info("recorded mirror pull", "image", img.Name, "mirror", src)
	r.Duration = time.Since(start)
	return r
}
