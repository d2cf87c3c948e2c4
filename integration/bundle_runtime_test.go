package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	bundlepkg "github.com/kube-preloader/kube-preloader/bundle"
	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// otherPlatform is a platform the test machine is not.
func otherPlatform() v1.Platform {
	if nodePlatform == "linux/arm64" {
		return v1.Platform{OS: "linux", Architecture: "amd64"}
	}
	return v1.Platform{OS: "linux", Architecture: "arm64"}
}

// multiPlatform is an image of the node's platform and another.
func multiPlatform(repo string) harness.ImageSpec {
	return harness.ImageSpec{Repo: repo, Tag: "1", BaseLayers: 1, OwnLayers: 1, LayerSize: 16 << 10, Platforms: []string{nodePlatform, otherPlatform().String()}}
}

// TestExportFromContainerd reads back, through containerd's API as
// bundle --from-runtime does, images a real containerd pulled through
// `once`: the record's target is the index the registry served, its
// blobs read back byte for byte, and the platform containerd did not pull
// is named when asked for.
func TestExportFromContainerd(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testExportFromContainerd(t, flavor) })
	}
}

func testExportFromContainerd(t *testing.T, flavor harness.Flavor) {
	ctx := context.Background()
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	pushed := harness.PushTestImages(t, reg, []harness.ImageSpec{multiPlatform("team/multi"), {Repo: "team/single", Tag: "1.0", OwnLayers: 2, LayerSize: 32 << 10}})
	multiRef, idx, single := pushed[0].Ref, pushed[0].Index, pushed[1]

	node := newTestNode(t, flavor)
	creds := writeFile(t, node.dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	r := node.once(t, imagesYAML("none", multiRef, single.Ref), "--docker-config", creds)
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("once: want exit 0:\n%s", r)
	}
	reg.Stop()

	c, err := containerd.New(ctx, node.ctrd.Address, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	indexDigest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rawIndex, err := idx.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	desc, err := c.Resolve(ctx, multiRef)
	if err != nil {
		t.Fatalf("Resolve(%s): %v", multiRef, err)
	}
	if desc.Digest.String() != indexDigest.String() || desc.MediaType != ocispec.MediaTypeImageIndex {
		t.Errorf("Resolve(%s) = %s %s, want the index the registry served, %s", multiRef, desc.MediaType, desc.Digest, indexDigest)
	}
	if got := fetchAll(t, c, multiRef, desc); string(got) != string(rawIndex) {
		t.Errorf("Fetch of the index of %s: %d bytes, not the registry's %d", multiRef, len(got), len(rawIndex))
	}

	// The node's platform reads back whole: manifest, config and layers.
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var mine, theirs ocispec.Descriptor
	for _, m := range im.Manifests {
		d := ocispec.Descriptor{MediaType: string(m.MediaType), Digest: digest.Digest(m.Digest.String()), Size: m.Size,
			Platform: &ocispec.Platform{OS: m.Platform.OS, Architecture: m.Platform.Architecture}}
		if m.Platform.String() == nodePlatform {
			mine = d
		} else {
			theirs = d
		}
	}
	var manifest ocispec.Manifest
	if err := json.Unmarshal(fetchAll(t, c, multiRef, mine), &manifest); err != nil {
		t.Fatalf("manifest of %s for %s: %v", multiRef, nodePlatform, err)
	}
	for _, blob := range append([]ocispec.Descriptor{manifest.Config}, manifest.Layers...) {
		if got := fetchAll(t, c, multiRef, blob); int64(len(got)) != blob.Size {
			t.Errorf("Fetch of %s of %s: %d bytes, want %d", blob.Digest, multiRef, len(got), blob.Size)
		}
	}

	// containerd kept the index but not the other platform's manifest.
	rc, err := c.Fetch(ctx, multiRef, theirs)
	if err == nil {
		rc.Close()
		t.Fatalf("Fetch of the %s manifest of %s: no error, want it missing on a %s node", otherPlatform(), multiRef, nodePlatform)
	}
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Fetch of the %s manifest: %v, want an error wrapping errdefs.ErrNotFound", otherPlatform(), err)
	}
	for _, want := range []string{"no " + otherPlatform().String() + " manifest of " + multiRef, "(it holds " + nodePlatform + " only)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Fetch of the %s manifest: %q, want it to say %q", otherPlatform(), err, want)
		}
	}

	// A single-manifest image resolves to its manifest, by tag and by
	// digest; an image the node lacks is named.
	for _, ref := range []string{single.Ref, single.DigestRef} {
		desc, err := c.Resolve(ctx, ref)
		if err != nil || desc.Digest.String() != single.Digest {
			t.Errorf("Resolve(%s) = %v, %v; want %s", ref, desc.Digest, err, single.Digest)
		}
	}
	absent := reg.Host + "/team/absent:1"
	if _, err := c.Resolve(ctx, absent); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), absent+" is not on this node") {
		t.Errorf("Resolve(%s) = %v, want it not on this node, wrapping errdefs.ErrNotFound", absent, err)
	}

	// The kubelet's image GC removes the image mid-export: what Resolve
	// resolved stays readable until the client is closed, and goes with
	// containerd's next collection after.
	if err := node.cri(t).RemoveImage(ctx, multiRef); err != nil {
		t.Fatal(err)
	}
	if err := c.CollectGarbage(ctx); err != nil {
		t.Fatal(err)
	}
	if got := fetchAll(t, c, multiRef, mine); len(got) == 0 {
		t.Errorf("manifest of %s after the image was removed: empty", multiRef)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	after, err := containerd.New(ctx, node.ctrd.Address, "")
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if err := after.CollectGarbage(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := node.containerd(t).ContentStore().Info(ctx, mine.Digest); !errdefs.IsNotFound(err) {
		t.Errorf("manifest of the removed %s after Close and a collection: %v, want it collected", multiRef, err)
	}
}

func fetchAll(t *testing.T, c *containerd.Client, ref string, desc ocispec.Descriptor) []byte {
	t.Helper()
	rc, err := c.Fetch(context.Background(), ref, desc)
	if err != nil {
		t.Fatalf("Fetch(%s, %s): %v", ref, desc.Digest, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Fetch(%s, %s): %v", ref, desc.Digest, err)
	}
	return data
}

// TestBundleFromRuntimeCRIO: CRI-O keeps images where no containerd API
// reaches, so bundle --from-runtime refuses it, with exit 1 and what to
// do instead, and writes nothing.
func TestBundleFromRuntimeCRIO(t *testing.T) {
	crio := harness.StartCRIO(t, harness.CRIOOptions{PauseImage: "registry.example/unused/pause:0"})
	dir := t.TempDir()
	cfg := writeFile(t, dir, "images.yaml", imagesYAML("none", "registry.example/team/app:1.0"))
	out := filepath.Join(dir, "bundle.tar")
	r := preloader(t, time.Minute, nil, "bundle", "--from-runtime", "--cri-endpoint", crio.Endpoint, "--config", cfg, "-o", out)
	if r.code != 1 {
		t.Errorf("bundle --from-runtime on CRI-O: want exit 1:\n%s", r)
	}
	crioRuntime := "cri-o " + strings.TrimPrefix(harness.CRIOVersion, "v")
	for _, want := range []string{"needs containerd", crioRuntime, "without --from-runtime", "skopeo copy containers-storage:"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("bundle --from-runtime on CRI-O: stderr does not say %q:\n%s", want, r)
		}
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 1 {
		t.Errorf("bundle --from-runtime on CRI-O left files beside the config: %v %v", entries, err)
	}
}

// TestBundleFromRuntime: images a node pulled through `once` from a
// registry with credentials, the registry gone, are bundled from the
// node's containerd and imported on a fresh node, where the CRI shows
// them with the same IDs and names. An image or a platform the node
// lacks fails the bundle by name, and writes nothing.
func TestBundleFromRuntime(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testBundleFromRuntime(t, flavor) })
	}
}

func testBundleFromRuntime(t *testing.T, flavor harness.Flavor) {
	ctx := context.Background()
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	pushed := harness.PushTestImages(t, reg, []harness.ImageSpec{
		multiPlatform("team/multi"),
		{Repo: "team/app", Tag: "1.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
		{Repo: "team/tool", Tag: "2.0", BaseLayers: 2, OwnLayers: 2, LayerSize: 64 << 10},
		{Repo: "mirror/k8s/pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10},
	})
	multiRef := pushed[0].Ref
	byDigest := pushed[2].DigestRef
	const mirrored = "registry.k8s.io/pause:3.10"
	refs := []string{multiRef, pushed[1].Ref, byDigest, mirrored}
	cfg := fmt.Sprintf(`sandboxImage: none
retry: {initialDelay: 200ms, maxDelay: 1s}
images:
  - image: %s
  - image: %s
  - image: %s
  - image: %s
    mirror: %s/mirror/k8s
`, multiRef, pushed[1].Ref, byDigest, mirrored, reg.Host)

	source := newTestNode(t, flavor)
	creds := writeFile(t, source.dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	r := source.once(t, cfg, "--docker-config", creds)
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("once on the source node: want exit 0:\n%s", r)
	}
	reg.Stop()

	dir := t.TempDir()
	cfgPath := writeFile(t, dir, "images.yaml", cfg)
	archives := t.TempDir()
	out := filepath.Join(archives, "bundle.tar.zst")
	bundle := func(t *testing.T, cfgPath, out string, args ...string) run {
		t.Helper()
		r := preloader(t, 2*time.Minute, nil, append([]string{"bundle", "--from-runtime", "--cri-endpoint", source.ctrd.Endpoint, "--config", cfgPath, "-o", out}, args...)...)
		assertNoSecret(t, r.stdout, r.stderr)
		return r
	}

	t.Run("an image the node lacks is named, and nothing written", func(t *testing.T) {
		absent := reg.Host + "/team/absent:1"
		more := writeFile(t, dir, "more.yaml", cfg+"  - image: "+absent+"\n")
		failed := filepath.Join(dir, "failed.tar")
		r := bundle(t, more, failed)
		if r.code != 1 || !strings.Contains(r.stderr, absent+" is not on this node") {
			t.Errorf("bundle --from-runtime of an image the node lacks: want exit 1 naming %s:\n%s", absent, r)
		}
		assertNotWritten(t, failed)
	})

	t.Run("a platform the node did not pull is named, and nothing written", func(t *testing.T) {
		other := otherPlatform().String()
		failed := filepath.Join(dir, "other.tar")
		r := bundle(t, cfgPath, failed, "--platform", nodePlatform+","+other)
		if r.code != 1 || !strings.Contains(r.stderr, "no "+other+" manifest of "+multiRef) {
			t.Errorf("bundle --from-runtime of a platform the node lacks: want exit 1 naming %s and %s:\n%s", multiRef, other, r)
		}
		assertNotWritten(t, failed)
	})

	r = bundle(t, cfgPath, out)
	if r.code != 0 {
		t.Fatalf("bundle --from-runtime: want exit 0:\n%s", r)
	}
	if !strings.Contains(r.stderr, "reading images from containerd") || !strings.Contains(r.stderr, "from runtime;") {
		t.Errorf("bundle --from-runtime does not say which runtime it reads:\n%s", r.stderr)
	}
	r = preloader(t, time.Minute, nil, "bundle", "inspect", out)
	if r.code != 0 || !strings.Contains(r.stdout, "read from a node's runtime: containerd ") {
		t.Errorf("bundle inspect of a bundle from a node's runtime: want exit 0 naming the runtime:\n%s", r)
	}
	lock, _, err := bundlepkg.LoadLock(out + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	if lock.Runtime == nil || lock.Runtime.Name != "containerd" || lock.Runtime.Version == "" {
		t.Errorf("lock's runtime = %+v, want containerd and its version", lock.Runtime)
	}
	for _, img := range lock.Images {
		if img.From != "runtime" {
			t.Errorf("lock: %s from %q, want runtime", img.Name, img.From)
		}
	}
	if len(lock.Images) != len(refs) {
		t.Errorf("lock has %d images, want %d", len(lock.Images), len(refs))
	}

	// Carried across with its lock: a fresh node, with no registry,
	// imports the bundle from archiveDir.
	target := newTestNode(t, flavor)
	r = target.once(t, fmt.Sprintf("archiveDir: %s\n%s", archives, cfg))
	if r.code != 0 {
		t.Fatalf("once on a fresh node with the bundle: want exit 0:\n%s", r)
	}
	got := parseArchiveResult(t, r).statuses()
	from, to := source.cri(t), target.cri(t)
	for _, ref := range refs {
		if got[ref] != "imported" {
			t.Errorf("%s: %q on the fresh node, want imported\n%s", ref, got[ref], r)
		}
		want, err := from.ImageStatus(ctx, ref)
		if err != nil || want == nil {
			t.Fatalf("source node: CRI ImageStatus(%s) = %v, %v", ref, want, err)
		}
		img, err := to.ImageStatus(ctx, ref)
		if err != nil || img == nil {
			t.Errorf("fresh node: CRI ImageStatus(%s) = %v, %v; want present", ref, img, err)
			continue
		}
		if img.Id != want.Id {
			t.Errorf("%s: image ID %s on the fresh node, %s on the source", ref, img.Id, want.Id)
		}
		// The source also has the mirror's own names (once pulled from
		// it), which the bundle does not carry: it names images as pods do.
		wantTags, wantDigests := notMirror(want.RepoTags, reg.Host), notMirror(want.RepoDigests, reg.Host)
		if !sameSet(img.RepoTags, wantTags) || !sameSet(img.RepoDigests, wantDigests) {
			t.Errorf("%s: names %v %v on the fresh node, want %v %v as on the source", ref, img.RepoTags, img.RepoDigests, wantTags, wantDigests)
		}
	}

	t.Run("a layer containerd no longer holds is named, and nothing written", func(t *testing.T) {
		// As containerd's collector leaves a node whose CRI config sets
		// discard_unpacked_layers: the image unpacked, its layer gone.
		app := pushed[1]
		layer := digest.Digest(app.Layers[len(app.Layers)-1])
		if err := source.containerd(t).ContentStore().Delete(ctx, layer); err != nil {
			t.Fatal(err)
		}
		assertPresent(t, source.ctrd.Endpoint, app.Ref)
		failed := filepath.Join(dir, "discarded.tar")
		r := bundle(t, cfgPath, failed)
		for _, want := range []string{app.Ref, layer.String() + " (", "not in containerd's content store", "discard_unpacked_layers"} {
			if r.code != 1 || !strings.Contains(r.stderr, want) {
				t.Errorf("bundle --from-runtime of an image without its layer: want exit 1 saying %q:\n%s", want, r)
			}
		}
		assertNotWritten(t, failed)
	})
}

func notMirror(names []string, host string) []string {
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return strings.HasPrefix(n, host+"/mirror/") })
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// assertNotWritten: no bundle, part or lock at path.
func assertNotWritten(t *testing.T, path string) {
	t.Helper()
	matches, err := filepath.Glob(path + "*")
	if err != nil || len(matches) > 0 {
		t.Errorf("written after a failure: %v %v", matches, err)
	}
}
