package bundle_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/bundle"
)

// testRegistry is an in-memory registry the tests push to.
type testRegistry struct {
	t    *testing.T
	host string
}

func newTestRegistry(t *testing.T) *testRegistry {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return &testRegistry{t: t, host: strings.TrimPrefix(srv.URL, "http://")}
}

func (r *testRegistry) layer(seed uint64) v1.Layer {
	l, err := archivetest.Layer(seed, 4096, false)
	if err != nil {
		r.t.Fatal(err)
	}
	return l
}

// index pushes to repo:tag an index of one image per platform, each with
// a layer of seed shared by all and one of its own.
func (r *testRegistry) index(ref string, seed uint64, plats ...string) v1.ImageIndex {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for i, p := range plats {
		img, err := archivetest.NewImage(p, r.layer(1), r.layer(seed+uint64(i)))
		if err != nil {
			r.t.Fatal(err)
		}
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			r.t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: plat}})
	}
	n, err := name.ParseReference(r.host + "/" + ref)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := remote.WriteIndex(n, idx); err != nil {
		r.t.Fatal(err)
	}
	return idx
}

// tarEntries are the files of a bundle's tar stream.
func tarEntries(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	files, err := archivetest.Files(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func blobName(h v1.Hash) string { return "blobs/sha256/" + h.Hex }

func write(t *testing.T, host string, opts bundle.Options, sources ...bundle.Source) ([]byte, *bundle.Lock, error) {
	t.Helper()
	var buf bytes.Buffer
	lock, err := bundle.Write(context.Background(), &buf, bundle.NewRegistry(nil, nil), sources, opts)
	return buf.Bytes(), lock, err
}

func platformsOf(t *testing.T, s string) bundle.Platforms {
	t.Helper()
	ps, err := bundle.ParsePlatforms(s)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// A bundle keeps the image's index byte for byte with the chosen
// platforms' manifests and blobs, and says so in its lock.
func TestWritePlatforms(t *testing.T) {
	reg := newTestRegistry(t)
	idx := reg.index("multi:1", 10, "linux/amd64", "linux/arm64", "linux/s390x")
	rawIndex, _ := idx.RawManifest()
	idxDigest, _ := idx.Digest()
	im, _ := idx.IndexManifest()
	src := bundle.Source{Name: "example.com/multi:1", From: reg.host + "/multi:1"}

	for _, tt := range []struct {
		platforms string
		want      []int // of the index's manifests
	}{
		{"linux/amd64,linux/arm64", []int{0, 1}},
		{"linux/arm64/v8", []int{1}},
		{"all", []int{0, 1, 2}},
	} {
		data, lock, err := write(t, reg.host, bundle.Options{Platforms: platformsOf(t, tt.platforms)}, src)
		if err != nil {
			t.Fatalf("%s: %v", tt.platforms, err)
		}
		files := tarEntries(t, data)
		if !bytes.Equal(files[blobName(idxDigest)], rawIndex) {
			t.Errorf("%s: the index is not in the bundle byte for byte", tt.platforms)
		}
		var index ocispec.Index
		if err := json.Unmarshal(files["index.json"], &index); err != nil {
			t.Fatal(err)
		}
		if len(index.Manifests) != 1 || index.Manifests[0].Digest.String() != idxDigest.String() || index.Manifests[0].Annotations[bundle.AnnotationImageName] != src.Name {
			t.Errorf("%s: index.json %+v, want the index %s named %s", tt.platforms, index.Manifests, idxDigest, src.Name)
		}
		if len(lock.Images) != 1 || len(lock.Images[0].Platforms) != len(tt.want) {
			t.Fatalf("%s: lock %+v, want %d platforms", tt.platforms, lock, len(tt.want))
		}
		for i, m := range im.Manifests {
			img, _ := idx.Image(m.Digest)
			layers, _ := img.Layers()
			own, _ := layers[1].Digest()
			cfg, _ := img.ConfigName()
			chosen := -1
			for j, w := range tt.want {
				if w == i {
					chosen = j
				}
			}
			_, hasManifest := files[blobName(m.Digest)]
			_, hasLayer := files[blobName(own)]
			if hasManifest != (chosen >= 0) || hasLayer != (chosen >= 0) {
				t.Errorf("%s: %s: manifest in bundle %v, own layer %v; want %v", tt.platforms, m.Platform, hasManifest, hasLayer, chosen >= 0)
			}
			if chosen < 0 {
				continue
			}
			lp := lock.Images[0].Platforms[chosen]
			if lp.Platform != m.Platform.String() || lp.Manifest.Digest.String() != m.Digest.String() || lp.Config.Digest.String() != cfg.String() || len(lp.Layers) != 2 || lp.Layers[1].Digest.String() != own.String() {
				t.Errorf("%s: lock platform %+v, want %s %s with config %s and layer %s", tt.platforms, lp, m.Platform, m.Digest, cfg, own)
			}
		}
		if lock.Images[0].Digest.String() != idxDigest.String() || lock.Images[0].From != src.From || lock.Images[0].MediaType != ocispec.MediaTypeImageIndex {
			t.Errorf("%s: lock image %+v", tt.platforms, lock.Images[0])
		}
		// The lock in the archive is the one returned.
		inside, err := bundle.ParseLock(files[bundle.LockEntry])
		if err != nil {
			t.Fatal(err)
		}
		if inside.Images[0].Digest != lock.Images[0].Digest || strings.Join(inside.Platforms, ",") != platformsOf(t, tt.platforms).String() {
			t.Errorf("%s: lock inside %+v", tt.platforms, inside)
		}
	}

	// A platform the image lacks fails by name, saying which it has.
	_, _, err := write(t, reg.host, bundle.Options{Platforms: platformsOf(t, "linux/amd64,linux/riscv64")}, src)
	if err == nil || !strings.Contains(err.Error(), "example.com/multi:1: no manifest for platform linux/riscv64 (the image has linux/amd64, linux/arm64, linux/s390x)") {
		t.Errorf("missing platform: %v", err)
	}
}

// --lock fetches the lock's digests after the tag moved; --since leaves
// out the old bundle's layers, and nothing else.
func TestWriteLockAndSince(t *testing.T) {
	reg := newTestRegistry(t)
	reg.index("app:1", 20, "linux/amd64", "linux/arm64")
	reg.index("tool:1", 30, "linux/amd64")
	sources := []bundle.Source{{Name: reg.host + "/app:1"}, {Name: reg.host + "/tool:1"}}
	opts := bundle.Options{Platforms: platformsOf(t, "linux/amd64,linux/arm64")}
	_, _, err := write(t, reg.host, opts, sources...)
	if err == nil {
		t.Fatal("tool:1 has no arm64: want a failure")
	}
	opts.Platforms = platformsOf(t, "all")
	_, old, err := write(t, reg.host, opts, sources...)
	if err != nil {
		t.Fatal(err)
	}
	moved := reg.index("app:1", 40, "linux/amd64", "linux/arm64")
	movedDigest, _ := moved.Digest()

	// The tag moved: a new bundle has the new digest, one with the lock
	// the old, all of it.
	_, now, err := write(t, reg.host, opts, sources...)
	if err != nil {
		t.Fatal(err)
	}
	if now.Images[0].Digest.String() != movedDigest.String() || now.Images[0].Digest == old.Images[0].Digest {
		t.Fatalf("after the tag moved: %s, want %s", now.Images[0].Digest, movedDigest)
	}
	data, relocked, err := write(t, reg.host, bundle.Options{Lock: old}, sources...)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := old.Marshal()
	b, _ := relocked.Marshal()
	if !bytes.Equal(a, b) {
		t.Errorf("--lock wrote another lock:\n%s\nwant\n%s", b, a)
	}
	files := tarEntries(t, data)
	for _, img := range old.Images {
		for _, p := range img.Platforms {
			for _, l := range append([]bundle.LockBlob{p.Manifest, p.Config}, p.Layers...) {
				if _, ok := files["blobs/sha256/"+l.Digest.Encoded()]; !ok {
					t.Errorf("--lock: %s of %s %s missing", l.Digest, img.Name, p.Platform)
				}
			}
		}
	}

	// A lock edited by hand does not pass for the digests it names.
	edited, _ := bundle.ParseLock(a)
	edited.Images[1].Platforms[0].Layers[1].Digest = digest.FromString("other")
	if _, _, err := write(t, reg.host, bundle.Options{Lock: edited}, sources...); err == nil || !strings.Contains(err.Error(), "names other blobs than the lock has") {
		t.Errorf("edited lock: %v, want a failure", err)
	}

	// A delta of the moved tag against the old lock.
	data, delta, err := write(t, reg.host, bundle.Options{Platforms: opts.Platforms, Since: &bundle.Delta{Old: old, File: "old.lock", Digest: digest.FromBytes(a)}}, sources...)
	if err != nil {
		t.Fatal(err)
	}
	if delta.Since == nil || delta.Since.File != "old.lock" || delta.Since.Digest != digest.FromBytes(a) {
		t.Errorf("delta's since: %+v", delta.Since)
	}
	files = tarEntries(t, data)
	oldLayers := old.Layers()
	for _, img := range delta.Images {
		if _, ok := files["blobs/sha256/"+img.Digest.Encoded()]; !ok {
			t.Errorf("delta lacks the index of %s", img.Name)
		}
		for _, p := range img.Platforms {
			for _, b := range []bundle.LockBlob{p.Manifest, p.Config} {
				if _, ok := files["blobs/sha256/"+b.Digest.Encoded()]; !ok {
					t.Errorf("delta lacks %s of %s %s", b.Digest, img.Name, p.Platform)
				}
			}
			for _, l := range p.Layers {
				_, ok := files["blobs/sha256/"+l.Digest.Encoded()]
				if ok == oldLayers[l.Digest] {
					t.Errorf("delta: layer %s of %s %s in it: %v, in the old bundle: %v", l.Digest, img.Name, p.Platform, ok, oldLayers[l.Digest])
				}
			}
		}
	}
}

func TestParsePlatforms(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"linux/amd64", "linux/amd64"},
		{" linux/amd64 , linux/arm64 ", "linux/amd64,linux/arm64"},
		{"linux/arm64/v8,linux/arm64", "linux/arm64"},
		{"linux/arm/v7,linux/arm/v6", "linux/arm/v7,linux/arm/v6"},
		{"all", "all"},
	} {
		ps, err := bundle.ParsePlatforms(tt.in)
		if err != nil || ps.String() != tt.want {
			t.Errorf("ParsePlatforms(%q) = %s, %v; want %s", tt.in, ps, err, tt.want)
		}
	}
}
