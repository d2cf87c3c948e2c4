package config_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/distribution/reference"

	"github.com/kube-preloader/kube-preloader/preload/config"
)

// FuzzNormalizeRef checks image reference handling on any input:
// NormalizeRef is idempotent and gives the same name for the familiar form,
// and every image/mirror pair the config parser accepts has a mirror
// reference that parses, on the mirror's registry, with the image's path,
// tag and digest.
func FuzzNormalizeRef(f *testing.F) {
	for _, s := range [][2]string{
		{"nginx", "mirror.corp"},
		{"nginx:1.27", "mirror.corp:5000/dockerhub"},
		{"library/nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "localhost"},
		{"docker.io/library/nginx:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "localhost:5000"},
		{"registry.k8s.io/coredns/coredns:v1.12.0", "artifactrepo.corp.example/k8s"},
		{"localhost:5000/a/b:t", "[::1]:5000/p"},
		{"127.0.0.1:5000/x", "10.0.0.1:443/a/b/c"},
		{"index.docker.io/user/app", "mirror.corp"},
		{"Upper/Case", "mirror"},
		{"a/b/c/d/e:tag_with-dots.1", "m.corp/x_y/z-w"},
		{"reg.example/app@sha512:" + strings.Repeat("ab", 64), "m.corp"},
		{"", ""},
		{"nginx:", "mirror.corp/"},
		{"[fe80::1%eth0]:5000/a", "[::1]/p"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, ref, mirror string) {
		// Never a panic, whatever the input.
		if s, err := config.MirrorRef(ref, mirror); err == nil {
			if _, err := reference.ParseNormalizedNamed(s); err != nil {
				t.Fatalf("MirrorRef(%q, %q) = %q, which does not parse: %v", ref, mirror, s, err)
			}
		}

		name, err := config.NormalizeRef(ref)
		if err != nil {
			return
		}
		again, err := config.NormalizeRef(name)
		if err != nil || again != name {
			t.Fatalf("NormalizeRef(%q) = %q, but NormalizeRef(%q) = %q, %v", ref, name, name, again, err)
		}
		named, err := reference.ParseNormalizedNamed(name)
		if err != nil {
			t.Fatalf("NormalizeRef(%q) = %q, which does not parse: %v", ref, name, err)
		}
		if familiar := reference.FamiliarString(named); familiar != name {
			if n, err := config.NormalizeRef(familiar); err != nil || n != name {
				t.Fatalf("familiar form %q of %q normalizes to %q, %v", familiar, name, n, err)
			}
		}
		_, tagged := named.(reference.Tagged)
		digested, isDigested := named.(reference.Digested)
		if !tagged && !isDigested {
			t.Fatalf("NormalizeRef(%q) = %q: neither tag nor digest", ref, name)
		}

		// A mirror the config accepts for this image: the mirror reference
		// must parse and keep everything but the registry.
		q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
		cfg, err := config.Parse("f.yaml", []byte("images:\n  - image: "+q(ref)+"\n    mirror: "+q(mirror)+"\n"))
		if err != nil {
			return
		}
		if len(cfg.Images) != 1 || cfg.Images[0].Name != name || cfg.Images[0].Mirror != mirror {
			t.Fatalf("Parse of %q, %q: %+v", ref, mirror, cfg.Images)
		}
		s, err := config.MirrorRef(name, mirror)
		if err != nil {
			t.Fatalf("MirrorRef(%q, %q) of an accepted config: %v", name, mirror, err)
		}
		m, err := reference.ParseNormalizedNamed(s)
		if err != nil {
			t.Fatalf("MirrorRef(%q, %q) = %q, which does not parse: %v", name, mirror, s, err)
		}
		host, _, _ := strings.Cut(mirror, "/")
		if reference.Domain(m) != host {
			t.Fatalf("MirrorRef(%q, %q) = %q, on registry %q", name, mirror, s, reference.Domain(m))
		}
		if want := strings.TrimPrefix(strings.TrimPrefix(mirror, host), "/"); !strings.HasSuffix(reference.Path(m), reference.Path(named)) ||
			!strings.HasPrefix(reference.Path(m), want) {
			t.Fatalf("MirrorRef(%q, %q) = %q: path %q", name, mirror, s, reference.Path(m))
		}
		if tg, ok := named.(reference.Tagged); ok {
			if mt, ok := m.(reference.Tagged); !ok || mt.Tag() != tg.Tag() {
				t.Fatalf("MirrorRef(%q, %q) = %q lost the tag", name, mirror, s)
			}
		}
		if isDigested {
			if md, ok := m.(reference.Digested); !ok || md.Digest() != digested.Digest() {
				t.Fatalf("MirrorRef(%q, %q) = %q lost the digest", name, mirror, s)
			}
		}
		if n, err := config.NormalizeRef(s); err != nil || n != s && n != reference.TagNameOnly(m).String() {
			t.Fatalf("MirrorRef(%q, %q) = %q normalizes to %q, %v", name, mirror, s, n, err)
		}
	})
}
