package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestBundleVerifyKey signs images with the real cosign in a registry with
// TLS and a password, as a build team would (signature, an attestation and
// an SBOM), and bundles them with --verify-key: the signed ones are carried
// with their cosign tags; an unsigned image, or one signed with another
// key, refuses the bundle by name and leaves no file.
func TestBundleVerifyKey(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, TLS: true})
	key := harness.NewCosignKey(t)
	other := harness.NewCosignKey(t)
	pushed := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1},
		{Repo: "mirror/team/tool", Tag: "2.0", BaseLayers: 1, OwnLayers: 1},
		{Repo: "team/unsigned", Tag: "1.0", OwnLayers: 1},
		{Repo: "team/stranger", Tag: "1.0", OwnLayers: 1},
	})
	multi := pushIndex(t, reg, "team/multi:3.0")
	app, tool, unsigned, stranger := pushed[0], pushed[1], pushed[2], pushed[3]

	dir := t.TempDir()
	predicate := writeFile(t, dir, "predicate.json", `{"builder":"ci","commit":"0123abc"}`)
	sbom := writeFile(t, dir, "sbom.spdx.json", `{"spdxVersion":"SPDX-2.3","name":"app","SPDXID":"SPDXRef-DOCUMENT"}`)
	harness.CosignSign(t, reg, key, app.DigestRef)
	harness.CosignAttest(t, reg, key, app.DigestRef, predicate)
	harness.CosignAttachSBOM(t, reg, app.DigestRef, sbom)
	harness.CosignSign(t, reg, key, tool.DigestRef)
	harness.CosignSign(t, reg, key, reg.Host+"/team/multi@"+multi)
	harness.CosignSign(t, reg, other, stranger.DigestRef)

	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	env := []string{"SSL_CERT_FILE=" + reg.CACertPath}
	bundle := func(t *testing.T, images string, keys ...string) (run, string) {
		t.Helper()
		cfg := writeFile(t, t.TempDir(), "images.yaml", "sandboxImage: none\nimages:\n"+images)
		out := filepath.Join(t.TempDir(), "bundle.tar")
		args := []string{"bundle", "--config", cfg, "-o", out, "--docker-config", creds, "--platform", "linux/amd64"}
		for _, k := range keys {
			args = append(args, "--verify-key", k)
		}
		r := preloader(t, 3*time.Minute, env, args...)
		assertNoSecret(t, r.stdout, r.stderr)
		return r, out
	}

	t.Run("signed", func(t *testing.T) {
		images := fmt.Sprintf("  - image: %s\n  - image: corp.example/team/tool:2.0\n    mirror: %s/mirror\n  - image: %s/team/multi:3.0\n",
			app.Ref, reg.Host, reg.Host)
		// Any of the keys may sign: the first is a stranger's.
		r, out := bundle(t, images, other.Public, key.Public)
		if r.code != 0 {
			t.Fatalf("bundle --verify-key of signed images: want exit 0:\n%s", r)
		}
		mirrorRepo := reg.Host + "/mirror/team/tool"
		if !strings.Contains(r.stderr, mirrorRepo+":"+sigTag(tool.Digest, "sig")) {
			t.Errorf("bundle does not say it reads corp.example/team/tool's signature from the mirror's repository %s:\n%s", mirrorRepo, r.stderr)
		}
		layout := readLayout(t, out)
		want := map[string]string{ // entry name: repository its manifest is read from
			reg.Host + "/team/app:" + sigTag(app.Digest, "sig"):    reg.Host + "/team/app",
			reg.Host + "/team/app:" + sigTag(app.Digest, "att"):    reg.Host + "/team/app",
			reg.Host + "/team/app:" + sigTag(app.Digest, "sbom"):   reg.Host + "/team/app",
			"corp.example/team/tool:" + sigTag(tool.Digest, "sig"): mirrorRepo,
			reg.Host + "/team/multi:" + sigTag(multi, "sig"):       reg.Host + "/team/multi",
		}
		for entry, repo := range want {
			d, ok := layout.entries[entry]
			if !ok {
				t.Errorf("index.json has no entry %s; it has %v", entry, slices.Sorted(maps.Keys(layout.entries)))
				continue
			}
			tag := entry[strings.LastIndex(entry, ":")+1:]
			if inReg := headDigest(t, reg, repo+":"+tag); d.Digest.String() != inReg {
				t.Errorf("%s: manifest %s, the registry's %s:%s is %s", entry, d.Digest, repo, tag, inReg)
			}
			layout.wantComplete(t, entry, d)
		}
		for _, img := range []string{app.Ref, "corp.example/team/tool:2.0", reg.Host + "/team/multi:3.0"} {
			if _, ok := layout.entries[img]; !ok {
				t.Errorf("index.json lacks the image %s", img)
			}
		}
		for entry := range layout.entries {
			if strings.Contains(entry, sigTag(tool.Digest, "att")) || strings.Contains(entry, sigTag(multi, "sbom")) {
				t.Errorf("index.json has %s, which the registry does not have", entry)
			}
		}

		// The lock, beside the bundle and inside it, lists what is carried.
		for _, file := range []string{out + ".lock", out} {
			r := preloader(t, time.Minute, nil, "bundle", "inspect", file, "-o", "json")
			if r.code != 0 {
				t.Fatalf("bundle inspect %s: want exit 0:\n%s", file, r)
			}
			var lock struct {
				Images []struct {
					Name       string
					Signatures []struct{ Tag, Digest string }
				}
			}
			if err := json.Unmarshal([]byte(r.stdout), &lock); err != nil {
				t.Fatalf("bundle inspect %s -o json: %v\n%s", file, err, r.stdout)
			}
			got := map[string]string{}
			for _, img := range lock.Images {
				repo := img.Name[:strings.LastIndex(img.Name, ":")]
				for _, s := range img.Signatures {
					got[repo+":"+s.Tag] = s.Digest
				}
			}
			for entry := range want {
				if got[entry] != layout.entries[entry].Digest.String() {
					t.Errorf("%s: the lock has %q for %s, the bundle carries %s", file, got[entry], entry, layout.entries[entry].Digest)
				}
			}
			if len(got) != len(want) {
				t.Errorf("%s: the lock lists %d cosign tags, want %d: %v", file, len(got), len(want), got)
			}
		}
		r = preloader(t, time.Minute, nil, "bundle", "inspect", out)
		if d := layout.entries[reg.Host+"/team/app:"+sigTag(app.Digest, "sig")].Digest.Encoded()[:12]; !strings.Contains(r.stdout, ".sig sha256:"+d) {
			t.Errorf("bundle inspect does not show the signature sha256:%s… it carries for %s:\n%s", d, app.Ref, r)
		}

		// A node that verifies imports the bundle, its lock beside it, with
		// the signatures it carries; the cosign entries are not images.
		archives := filepath.Dir(out) // the bundle and its lock
		node := newTestNode(t, harness.Containerd2)
		nodeCfg := fmt.Sprintf("sandboxImage: none\narchiveDir: %s\nverify:\n  keys: [%s]\nimages:\n%s", archives, key.Public, images)
		r = node.once(t, nodeCfg)
		if r.code != 0 {
			t.Fatalf("once with verify on the bundle: want exit 0:\n%s", r)
		}
		got := parseArchiveResult(t, r).statuses()
		for _, ref := range []string{app.Ref, "corp.example/team/tool:2.0", reg.Host + "/team/multi:3.0"} {
			if got[ref] != "imported" {
				t.Errorf("%s: %q, want imported\n%s", ref, got[ref], r)
			}
		}
		for _, ref := range node.refs(t) {
			if strings.Contains(ref, "sha256-") {
				t.Errorf("a cosign entry was imported as an image: %s", ref)
			}
		}
	})

	t.Run("without --verify-key", func(t *testing.T) {
		images := fmt.Sprintf("  - image: %s\n", app.Ref)
		r, out := bundle(t, images)
		if r.code != 0 {
			t.Fatalf("bundle: want exit 0:\n%s", r)
		}
		for entry := range readLayout(t, out).entries {
			if strings.Contains(entry, "sha256-") {
				t.Errorf("a bundle made without --verify-key carries %s", entry)
			}
		}
		// Nothing to verify with: a node that verifies refuses the image.
		archives := filepath.Dir(out) // the bundle and its lock
		node := newTestNode(t, harness.Containerd2)
		r = node.once(t, fmt.Sprintf("sandboxImage: none\narchiveDir: %s\nverify:\n  keys: [%s]\nimages: []\n", archives, key.Public))
		var reason string
		for _, i := range parseArchiveResult(t, r).Images {
			if i.Image == app.Ref {
				reason = i.Reason
			}
		}
		if r.code != 1 || reason != "signature" {
			t.Errorf("once with verify on a bundle without signatures: want exit 1, %s refused with reason signature:\n%s", app.Ref, r)
		}
	})

	refused := []struct {
		name, image, why string
		keys             []string
	}{
		{"unsigned", unsigned.Ref, "unsigned: the registry has no signature " + reg.Host + "/team/unsigned:" + sigTag(unsigned.Digest, "sig"), []string{key.Public}},
		{"other key", stranger.Ref, "not signed by any of the keys", []string{key.Public}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			images := fmt.Sprintf("  - image: %s\n  - image: %s\n", app.Ref, tc.image)
			r, out := bundle(t, images, tc.keys...)
			if r.code != 1 {
				t.Fatalf("bundle --verify-key with %s: want exit 1:\n%s", tc.name, r)
			}
			if !strings.Contains(r.stderr, tc.image) || !strings.Contains(r.stderr, "signature") || !strings.Contains(r.stderr, tc.why) {
				t.Errorf("bundle's error does not name %s and why its signature fails (%q):\n%s", tc.image, tc.why, r.stderr)
			}
			if strings.Contains(lastLine(r.stderr), app.Ref) {
				t.Errorf("bundle's error blames the signed %s:\n%s", app.Ref, r.stderr)
			}
			files, err := os.ReadDir(filepath.Dir(out))
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range files {
				t.Errorf("refused bundle left %s behind", f.Name())
			}
		})
	}

	t.Run("no key file", func(t *testing.T) {
		r, out := bundle(t, fmt.Sprintf("  - image: %s\n", app.Ref), filepath.Join(dir, "missing.pub"))
		if r.code != 2 || !strings.Contains(r.stderr, "missing.pub") {
			t.Errorf("bundle --verify-key with no such file: want exit 2 naming it:\n%s", r)
		}
		if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("bundle wrote %s: %v", out, err)
		}
	})
}

// pushIndex pushes a two-platform index to reg as ref and returns its
// digest.
func pushIndex(t *testing.T, reg *harness.Registry, ref string) string {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for i, arch := range []string{"amd64", "arm64"} {
		img := testImage(t, "linux/"+arch, 900+uint64(i))
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	r, err := name.ParseReference(reg.Host + "/" + ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx, remote.WithAuth(reg.Authenticator()), remote.WithTransport(reg.Transport())); err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// headDigest is the digest ref's tag names in reg.
func headDigest(t *testing.T, reg *harness.Registry, ref string) string {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	d, err := remote.Head(r, remote.WithAuth(reg.Authenticator()), remote.WithTransport(reg.Transport()))
	if err != nil {
		t.Fatalf("HEAD %s: %v", ref, err)
	}
	return d.Digest.String()
}

// sigTag is the tag cosign keeps beside the image of digest d.
func sigTag(d, suffix string) string {
	return strings.Replace(d, ":", "-", 1) + "." + suffix
}

// layout is what a bundle holds: its index.json entries by name and its
// blobs.
type layout struct {
	entries map[string]ocispec.Descriptor
	blobs   map[string][]byte
}

// readLayout reads an uncompressed bundle.
func readLayout(t *testing.T, path string) layout {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l := layout{entries: make(map[string]ocispec.Descriptor), blobs: make(map[string][]byte)}
	files, err := archivetest.Files(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatalf("%s: index.json: %v", path, err)
	}
	for name, data := range files {
		if hex, ok := strings.CutPrefix(name, "blobs/sha256/"); ok {
			l.blobs["sha256:"+hex] = data
		}
	}
	for _, d := range index.Manifests {
		l.entries[d.Annotations[ocispec.AnnotationRefName]] = d
	}
	return l
}

// wantComplete checks that the layout holds an entry's manifest and every
// blob it names.
func (l layout) wantComplete(t *testing.T, entry string, d ocispec.Descriptor) {
	t.Helper()
	raw, ok := l.blobs[d.Digest.String()]
	if !ok {
		t.Errorf("%s: manifest %s not in the bundle", entry, d.Digest)
		return
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Errorf("%s: manifest: %v", entry, err)
		return
	}
	for _, b := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		if data, ok := l.blobs[b.Digest.String()]; !ok || int64(len(data)) != b.Size {
			t.Errorf("%s: blob %s (%s) not in the bundle", entry, b.Digest, b.MediaType)
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndex(s, "\n")+1:]
}
