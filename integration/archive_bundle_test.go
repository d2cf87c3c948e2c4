package integration

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// Tests of what a node does with the bundles `preloader bundle` writes:
// split into parts, deltas, several platforms.

// layoutBytes is an OCI layout of entries, named as bundles name them,
// compressed with compression.
func layoutBytes(t *testing.T, compression string, entries ...archivetest.Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := archivetest.WriteLayout(&buf, entries...); err != nil {
		t.Fatal(err)
	}
	data, err := archivetest.Compress(buf.Bytes(), compression)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// result is the one result of out for image, or fails the test.
func (o archiveResult) result(t *testing.T, image string) (status, reason, msg string) {
	t.Helper()
	for _, i := range o.Images {
		if i.Image == image {
			return i.Status, i.Reason, i.Error
		}
	}
	t.Fatalf("no result for %s in %+v", image, o.Images)
	return "", "", ""
}

// copyFile copies src into dir, as someone carrying files onto a node does.
func copyFile(t *testing.T, src, dir string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(src)), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestArchiveParts(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testArchiveParts(t, flavor) })
	}
}

// testArchiveParts carries a bundle's parts into archiveDir one at a time:
// the node imports nothing until the set is complete, and says which part
// it waits for.
func testArchiveParts(t *testing.T, flavor harness.Flavor) {
	node := newTestNode(t, flavor)
	const app, tool = "registry.example/parts/app:1", "registry.example/parts/tool:1"
	appImg, toolImg := testImage(t, nodePlatform, 601), testImage(t, nodePlatform, 602)
	data := layoutBytes(t, archivetest.Zstd,
		archivetest.Entry{Name: app, Image: appImg},
		archivetest.Entry{Name: tool, Image: toolImg},
	)
	carried := t.TempDir()
	parts, err := archivetest.WriteParts(carried, "bundle.tar.zst", data, len(data)/3+1)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 3 {
		t.Fatalf("%d parts, the test needs 3", len(parts))
	}
	dir := t.TempDir()
	// The bundle's lock travels beside it and is no archive.
	if err := os.WriteFile(filepath.Join(dir, "bundle.tar.zst.lock"), []byte("version: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The config names the bundle by the file its parts make.
	cfg := archiveConfig(dir, true, app+" archive=bundle.tar.zst")
	bundle := filepath.Join(dir, "bundle.tar.zst")

	for _, step := range []struct {
		part    int // index into parts
		missing string
	}{
		{0, "part bundle.tar.zst.part-002 is missing, or bundle.tar.zst.part-001 is incomplete"}, // the stream ends early
		{2, "part bundle.tar.zst.part-002 is missing"},                                           // a gap
	} {
		t.Run("with "+filepath.Base(parts[step.part]), func(t *testing.T) {
			copyFile(t, parts[step.part], dir)
			before := imageRecords(t, node.containerd(t))
			r := node.once(t, cfg)
			if r.code != 1 {
				t.Fatalf("want exit 1:\n%s", r)
			}
			out := parseArchiveResult(t, r)
			if len(out.Images) != 1 {
				t.Errorf("results %+v, want one for %s alone: the lock is no archive, the parts are one", out.Images, app)
			}
			status, reason, msg := out.result(t, app)
			if status != "failed" || reason != "bad archive" || !strings.Contains(msg, bundle) || !strings.Contains(msg, step.missing) {
				t.Errorf("%s: %s (%s) %q; want failed, bad archive, naming %s and saying %q", app, status, reason, msg, bundle, step.missing)
			}
			if after := imageRecords(t, node.containerd(t)); !maps.Equal(before, after) {
				t.Errorf("image records changed with the parts incomplete:\nbefore %v\nafter  %v", before, after)
			}
		})
	}

	t.Run("complete", func(t *testing.T) {
		copyFile(t, parts[1], dir)
		r := node.once(t, cfg)
		if r.code != 0 {
			t.Fatalf("want exit 0:\n%s", r)
		}
		got := parseArchiveResult(t, r)
		for _, img := range got.Images {
			if img.Status != "imported" || img.Source != bundle {
				t.Errorf("%s: %s from %s, want imported from %s", img.Image, img.Status, img.Source, bundle)
			}
		}
		if st := got.statuses(); len(st) != 2 {
			t.Errorf("results %v, want %s and %s", st, app, tool)
		}
		c := node.cri(t)
		for name, img := range map[string]v1.Image{app: appImg, tool: toolImg} {
			if st, err := c.ImageStatus(context.Background(), name); err != nil || st == nil || st.Id != imageID(t, img) {
				t.Errorf("CRI ImageStatus(%s) = %v, %v; want image %s", name, st, err, imageID(t, img))
			}
		}
	})
}

func TestArchiveDelta(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testArchiveDelta(t, flavor) })
	}
}

// testArchiveDelta imports a delta bundle (the layers of the bundle it was
// made since left out) on a node that holds the old bundle's images, and
// on a fresh node, which refuses it naming the layers it lacks and
// records nothing.
func testArchiveDelta(t *testing.T, flavor harness.Flavor) {
	const app1, app2, tool = "registry.example/delta/app:1", "registry.example/delta/app:2", "registry.example/delta/tool:1"
	appOld, appNew, toolImg := testImage(t, nodePlatform, 701), testImage(t, nodePlatform, 702), testImage(t, nodePlatform, 703)
	old := layoutBytes(t, archivetest.Plain, archivetest.Entry{Name: app1, Image: appOld}, archivetest.Entry{Name: tool, Image: toolImg})
	// The delta: app:2 is new, tool:1 unchanged; the layers the old bundle
	// holds (the shared base, tool's own) are left out, manifests and
	// configs are all there.
	toolLayers, err := toolImg.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, l := range toolLayers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		left = append(left, d.String())
	}
	full := layoutBytes(t, archivetest.Plain, archivetest.Entry{Name: app2, Image: appNew}, archivetest.Entry{Name: tool, Image: toolImg})
	delta, err := archivetest.DropBlobs(full, left...)
	if err != nil {
		t.Fatal(err)
	}
	if len(delta) >= len(full) {
		t.Fatal("the delta left nothing out")
	}
	deltaData, err := archivetest.Compress(delta, archivetest.Zstd)
	if err != nil {
		t.Fatal(err)
	}
	cfg := func(dir string) string { return archiveConfig(dir, true, app2, tool) }

	t.Run("on a node that holds the old bundle's images", func(t *testing.T) {
		node := newTestNode(t, flavor)
		dir := t.TempDir()
		writeFile(t, dir, "old.tar", string(old))
		if r := node.once(t, archiveConfig(dir, true, app1, tool)); r.code != 0 {
			t.Fatalf("old bundle: want exit 0:\n%s", r)
		}
		// The old bundle leaves the directory, the delta comes in.
		if err := os.Remove(filepath.Join(dir, "old.tar")); err != nil {
			t.Fatal(err)
		}
		writeFile(t, dir, "delta.tar.zst", string(deltaData))
		r := node.once(t, cfg(dir))
		if r.code != 0 {
			t.Fatalf("delta: want exit 0:\n%s", r)
		}
		got := parseArchiveResult(t, r).statuses()
		if got[app2] != "imported" || got[tool] != "present" {
			t.Errorf("results %v, want %s imported and %s present", got, app2, tool)
		}
		c := node.cri(t)
		for name, img := range map[string]v1.Image{app2: appNew, tool: toolImg} {
			if st, err := c.ImageStatus(context.Background(), name); err != nil || st == nil || st.Id != imageID(t, img) {
				t.Errorf("CRI ImageStatus(%s) = %v, %v; want image %s", name, st, err, imageID(t, img))
			}
		}
		// Unpacked, as a pod needs it.
		ctx := context.Background()
		img, err := node.containerd(t).GetImage(ctx, app2)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := img.IsUnpacked(ctx, "native"); !ok || err != nil {
			t.Errorf("IsUnpacked(native) = %v, %v; want true", ok, err)
		}
	})

	t.Run("on a fresh node", func(t *testing.T) {
		node := newTestNode(t, flavor)
		dir := t.TempDir()
		writeFile(t, dir, "delta.tar.zst", string(deltaData))
		before := imageRecords(t, node.containerd(t))
		r := node.once(t, cfg(dir))
		if r.code != 1 {
			t.Fatalf("want exit 1:\n%s", r)
		}
		out := parseArchiveResult(t, r)
		// All or nothing: tool:1's layers are missing, and app:2, which
		// shares the base layer, is not imported either.
		base := left[0]
		for _, name := range []string{app2, tool} {
			status, reason, msg := out.result(t, name)
			if status != "failed" || reason != "bad archive" {
				t.Errorf("%s: %s (%s), want failed, bad archive", name, status, reason)
			}
			for _, want := range []string{filepath.Join(dir, "delta.tar.zst"), "image " + app2 + " lacks " + base, "image " + tool + " lacks " + strings.Join(left, ", ")} {
				if !strings.Contains(msg, want) {
					t.Errorf("%s: error %q does not say %q", name, msg, want)
				}
			}
		}
		if after := imageRecords(t, node.containerd(t)); !maps.Equal(before, after) {
			t.Errorf("image records changed:\nbefore %v\nafter  %v", before, after)
		}
		// Refused before anything was written: not even the delta's own
		// config is in the content store.
		cfgDigest := digest.Digest(imageID(t, appNew))
		if _, err := node.containerd(t).ContentStore().Info(context.Background(), cfgDigest); err == nil {
			t.Errorf("content store has %s, a blob of the refused delta", cfgDigest)
		}
	})
}

func TestArchivePlatforms(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testArchivePlatforms(t, flavor) })
	}
}

// testArchivePlatforms imports a two-platform bundle: the node takes its
// own platform of each image, and an image the bundle has for the other
// platform only fails by name, saying which platforms it has, while the
// others import.
func testArchivePlatforms(t *testing.T, flavor harness.Flavor) {
	other := "linux/arm64"
	if runtime.GOARCH == "arm64" {
		other = "linux/amd64"
	}
	plat := func(p string) *v1.Platform {
		goos, arch, _ := strings.Cut(p, "/")
		return &v1.Platform{OS: goos, Architecture: arch}
	}
	index := func(imgs map[string]v1.Image) v1.ImageIndex {
		var adds []mutate.IndexAddendum
		for _, p := range slices.Sorted(maps.Keys(imgs)) {
			adds = append(adds, mutate.IndexAddendum{Add: imgs[p], Descriptor: v1.Descriptor{Platform: plat(p)}})
		}
		return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	}
	const app, tool, armOnly = "registry.example/multi/app:1", "registry.example/multi/tool:1", "registry.example/multi/other-only:1"
	appMine, toolMine := testImage(t, nodePlatform, 801), testImage(t, nodePlatform, 803)
	data := layoutBytes(t, archivetest.Gzip,
		archivetest.Entry{Name: app, Index: index(map[string]v1.Image{nodePlatform: appMine, other: testImage(t, other, 802)})},
		archivetest.Entry{Name: armOnly, Index: index(map[string]v1.Image{other: testImage(t, other, 805)})},
		archivetest.Entry{Name: tool, Index: index(map[string]v1.Image{nodePlatform: toolMine, other: testImage(t, other, 804)})},
	)
	node := newTestNode(t, flavor)
	dir := t.TempDir()
	writeFile(t, dir, "bundle.tar.gz", string(data))
	r := node.once(t, archiveConfig(dir, true, app, tool, armOnly))
	if r.code != 1 {
		t.Fatalf("want exit 1 (one image failed):\n%s", r)
	}
	out := parseArchiveResult(t, r)
	if st := out.statuses(); st[app] != "imported" || st[tool] != "imported" {
		t.Errorf("results %v, want %s and %s imported", st, app, tool)
	}
	status, reason, msg := out.result(t, armOnly)
	want := fmt.Sprintf("image %s: no manifest for platform %s (the archive has %s)", armOnly, nodePlatform, other)
	if status != "failed" || reason != "bad archive" || !strings.Contains(msg, want) || !strings.Contains(msg, filepath.Join(dir, "bundle.tar.gz")) {
		t.Errorf("%s: %s (%s) %q; want failed, bad archive, naming the archive and saying %q", armOnly, status, reason, msg, want)
	}
	if !strings.Contains(r.stderr, armOnly) {
		t.Errorf("stderr does not name %s:\n%s", armOnly, r.stderr)
	}
	c := node.cri(t)
	for name, img := range map[string]v1.Image{app: appMine, tool: toolMine} {
		if st, err := c.ImageStatus(context.Background(), name); err != nil || st == nil || st.Id != imageID(t, img) {
			t.Errorf("CRI ImageStatus(%s) = %v, %v; want image %s", name, st, err, imageID(t, img))
		}
	}
	if st, err := c.ImageStatus(context.Background(), armOnly); err != nil || st != nil {
		t.Errorf("CRI ImageStatus(%s) = %v, %v; want no image", armOnly, st, err)
	}
}

// TestBundleToNode carries what `preloader bundle` writes to nodes: a
// two-platform bundle split into parts, with an image of the other
// platform only, and then a delta --since its lock.
func TestBundleToNode(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	both := []string{nodePlatform, otherArch()}
	specs := []harness.ImageSpec{
		{Repo: "site/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 512 << 10, Platforms: both},
		{Repo: "site/tool", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 512 << 10, Platforms: both},
		{Repo: "site/other-only", Tag: "1.0", OwnLayers: 1, LayerSize: 64 << 10, Platforms: []string{otherArch()}},
	}
	pushed := harness.PushTestImages(t, reg, specs)
	app, tool, otherOnly := pushed[0].Ref, pushed[1].Ref, pushed[2].Ref
	dir := t.TempDir()
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	cfgPath := writeFile(t, dir, "images.yaml", imagesYAML("none", app, tool, otherOnly))
	full := filepath.Join(dir, "full.tar.zst")
	// --platform all: a list of platforms would refuse other-only, which
	// lacks the node's.
	r := preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", full, "--platform", "all", "--max-part-size", "1Mi", "--docker-config", creds)
	if r.code != 0 {
		t.Fatalf("bundle: want exit 0:\n%s", r)
	}
	parts, err := filepath.Glob(full + ".part-*")
	if err != nil || len(parts) < 2 {
		t.Fatalf("bundle wrote parts %q, the test needs several", parts)
	}
	slices.Sort(parts)

	// A node takes each image from the archive its entry names, never
	// from the registry.
	nodeConfig := func(archives, file string) string {
		return archiveConfig(archives, true, app+" archive="+file, tool+" archive="+file, otherOnly+" archive="+file)
	}
	node := newTestNode(t, harness.Containerd2)
	archives := t.TempDir()
	copyFile(t, full+".lock", archives)
	for _, p := range parts[:len(parts)-1] {
		copyFile(t, p, archives)
	}
	missing := fmt.Sprintf("part %s is missing", filepath.Base(parts[len(parts)-1]))
	r = node.once(t, nodeConfig(archives, "full.tar.zst"))
	out := parseArchiveResult(t, r)
	for _, name := range []string{app, tool, otherOnly} {
		if status, _, msg := out.result(t, name); status != "failed" || !strings.Contains(msg, missing) {
			t.Errorf("%s with a part missing: %s %q, want failed saying %q", name, status, msg, missing)
		}
	}
	if refs := node.refs(t); len(refs) != 0 {
		t.Errorf("CRI lists %v with a part missing, want nothing", refs)
	}

	copyFile(t, parts[len(parts)-1], archives)
	r = node.once(t, nodeConfig(archives, "full.tar.zst"))
	if r.code != 1 {
		t.Fatalf("want exit 1 (the other platform's image):\n%s", r)
	}
	out = parseArchiveResult(t, r)
	if st := out.statuses(); st[app] != "imported" || st[tool] != "imported" {
		t.Errorf("results %v, want %s and %s imported", st, app, tool)
	}
	want := fmt.Sprintf("image %s: no manifest for platform %s (the archive has %s)", otherOnly, nodePlatform, otherArch())
	if status, _, msg := out.result(t, otherOnly); status != "failed" || !strings.Contains(msg, want) {
		t.Errorf("%s: %s %q, want failed saying %q", otherOnly, status, msg, want)
	}
	assertPresent(t, node.ctrd.Endpoint, app, tool)

	// app changes; the delta leaves out every layer the full bundle has.
	specs[0].Revision = "2"
	newApp := harness.PushTestImages(t, reg, specs[:1])[0]
	delta := filepath.Join(dir, "delta.tar.zst")
	r = preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", delta, "--platform", "all", "--since", full+".lock", "--docker-config", creds)
	if r.code != 0 {
		t.Fatalf("bundle --since: want exit 0:\n%s", r)
	}

	t.Run("delta on the node that has the bundle", func(t *testing.T) {
		// The delta replaces the bundle in archiveDir.
		for _, p := range parts {
			if err := os.Remove(filepath.Join(archives, filepath.Base(p))); err != nil {
				t.Fatal(err)
			}
		}
		copyFile(t, delta, archives)
		r := node.once(t, nodeConfig(archives, "delta.tar.zst"))
		out := parseArchiveResult(t, r)
		if st := out.statuses(); st[app] != "imported" || st[tool] != "present" || st[otherOnly] != "failed" {
			t.Errorf("results %v, want %s imported, %s present, %s failed\n%s", st, app, tool, otherOnly, r)
		}
		st, err := node.cri(t).ImageStatus(context.Background(), app)
		if err != nil || st == nil || st.Id != imageID(t, newApp.Manifests[nodePlatform].Image) {
			t.Errorf("CRI ImageStatus(%s) = %v, %v; want the new image", app, st, err)
		}
	})

	t.Run("delta on a fresh node", func(t *testing.T) {
		fresh := newTestNode(t, harness.Containerd2)
		archives := t.TempDir()
		copyFile(t, delta, archives)
		r := fresh.once(t, nodeConfig(archives, "delta.tar.zst"))
		out := parseArchiveResult(t, r)
		base := pushed[1].Manifests[nodePlatform].Layers[0]
		for _, name := range []string{app, tool} {
			status, _, msg := out.result(t, name)
			if status != "failed" || !strings.Contains(msg, "image "+tool+" lacks "+base) {
				t.Errorf("%s: %s %q, want failed naming %s's missing layer %s", name, status, msg, tool, base)
			}
		}
		if refs := fresh.refs(t); len(refs) != 0 {
			t.Errorf("CRI lists %v after a refused delta, want nothing", refs)
		}
	})
}
