package integration

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// archiveResult is `once -o json` with the fields archive tests read.
type archiveResult struct {
	Images []struct {
		Image  string `json:"image"`
		Status string `json:"status"`
		Source string `json:"source"`
		Reason string `json:"reason"`
		Error  string `json:"error"`
	} `json:"images"`
}

func parseArchiveResult(t *testing.T, r run) archiveResult {
	t.Helper()
	var out archiveResult
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, r)
	}
	return out
}

// statuses maps each image of the output to its status.
func (o archiveResult) statuses() map[string]string {
	m := make(map[string]string)
	for _, i := range o.Images {
		m[i.Image] = i.Status
	}
	return m
}

// testNode is one containerd with the preloader pointed at it.
type testNode struct {
	ctrd *harness.Containerd
	env  []string
	dir  string // configs
}

func newTestNode(t *testing.T, flavor harness.Flavor) *testNode {
	t.Helper()
	// A sandbox image no test uses: containerd 2.x pins its sandbox image
	// itself, which would blur what the preloader pinned.
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: flavor, SandboxImage: "registry.example/unused/pause:0"})
	return &testNode{ctrd: ctrd, env: []string{cri.EndpointEnv + "=" + ctrd.Endpoint}, dir: t.TempDir()}
}

// once runs `preloader once` with cfg written to the node's one config
// file: every run is the same owner of pins and pruned images, as a
// node's config edited between runs is.
func (n *testNode) once(t *testing.T, cfg string, args ...string) run {
	t.Helper()
	path := filepath.Join(n.dir, "images.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return preloader(t, 3*time.Minute, n.env, append([]string{"once", "--config", path, "-o", "json"}, args...)...)
}

func (n *testNode) cri(t *testing.T) *cri.Client {
	t.Helper()
	c, err := cri.Connect(context.Background(), n.ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (n *testNode) containerd(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.New(n.ctrd.Address, client.WithDefaultNamespace(containerd.Namespace))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refs is every reference CRI ListImages shows.
func (n *testNode) refs(t *testing.T) []string {
	t.Helper()
	imgs, err := n.cri(t).ListImages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, img := range imgs {
		refs = append(refs, img.RepoTags...)
		refs = append(refs, img.RepoDigests...)
	}
	slices.Sort(refs)
	return refs
}

// archiveConfig is a config with archiveDir dir and images, each "name" or
// "name archive=file".
func archiveConfig(dir string, pin bool, entries ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "sandboxImage: none\narchiveDir: %s\npin: %v\nretry: {initialDelay: 200ms, maxDelay: 1s}\nimages:\n", dir, pin)
	for _, e := range entries {
		name, file, _ := strings.Cut(e, " archive=")
		fmt.Fprintf(&b, "  - image: %s\n", name)
		if file != "" {
			fmt.Fprintf(&b, "    archive: %s\n", file)
		}
	}
	return b.String()
}

var nodePlatform = "linux/" + runtime.GOARCH

func testLayer(t *testing.T, seed uint64, size int) v1.Layer {
	t.Helper()
	l, err := archivetest.Layer(seed, size, false)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testImage is an image for platform with the shared base layer and one of
// its own from seed.
func testImage(t *testing.T, platform string, seed uint64) v1.Image {
	t.Helper()
	img, err := archivetest.NewImage(platform, testLayer(t, 1, 32<<10), testLayer(t, seed, 16<<10))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func imageID(t *testing.T, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

func writeArchive(t *testing.T, path string, f archivetest.Format, compression string, imgs ...archivetest.Image) {
	t.Helper()
	var buf bytes.Buffer
	if err := archivetest.Write(&buf, f, imgs); err != nil {
		t.Fatal(err)
	}
	data, err := archivetest.Compress(buf.Bytes(), compression)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestArchive(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testArchive(t, flavor) })
	}
}

func testArchive(t *testing.T, flavor harness.Flavor) {
	node := newTestNode(t, flavor)
	dir := t.TempDir()
	want := map[string]string{} // image name to image ID
	var entries []string
	seed := uint64(100)
	for _, f := range archivetest.Formats {
		for _, c := range []string{archivetest.Plain, archivetest.Gzip, archivetest.Zstd} {
			seed++
			name := fmt.Sprintf("registry.example/%s-%s/app:1", f, c)
			img := testImage(t, nodePlatform, seed)
			writeArchive(t, filepath.Join(dir, fmt.Sprintf("%s-%s.tar", f, c)), f, c, archivetest.Image{Names: []string{name}, Image: img})
			want[name] = imageID(t, img)
			entries = append(entries, name)
		}
	}
	// Several images in one archive; one of them only in the archive, not
	// in the config.
	multi := []archivetest.Image{
		{Names: []string{"registry.example/multi/a:1"}, Image: testImage(t, nodePlatform, 201)},
		{Names: []string{"registry.example/multi/b:1", "registry.example/multi/b:latest"}, Image: testImage(t, nodePlatform, 202)},
	}
	writeArchive(t, filepath.Join(dir, "multi.tar.zst"), archivetest.OCILayout, archivetest.Zstd, multi...)
	want["registry.example/multi/a:1"] = imageID(t, multi[0].Image)
	want["registry.example/multi/b:1"] = imageID(t, multi[1].Image)
	want["registry.example/multi/b:latest"] = imageID(t, multi[1].Image)
	entries = append(entries, "registry.example/multi/a:1")
	// A multi-platform index: only the node's platform is imported.
	amd := testImage(t, nodePlatform, 301)
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: testImage(t, "linux/s390x", 302), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
	)
	var buf bytes.Buffer
	if err := archivetest.WriteIndex(&buf, idx, "registry.example/multiarch:1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "multiarch.tar"), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	want["registry.example/multiarch:1"] = imageID(t, amd)
	entries = append(entries, "registry.example/multiarch:1")
	// docker save of an untagged image, named by the entry that names the
	// archive.
	unnamed := testImage(t, nodePlatform, 401)
	writeArchive(t, filepath.Join(dir, "unnamed.tar.gz"), archivetest.DockerSave, archivetest.Gzip, archivetest.Image{Image: unnamed})
	want["registry.example/named/by/config:7"] = imageID(t, unnamed)
	entries = append(entries, "registry.example/named/by/config:7 archive=unnamed.tar.gz")

	cfg := archiveConfig(dir, true, entries...)
	t.Run("every format imports and is present by CRI ImageStatus", func(t *testing.T) {
		r := node.once(t, cfg)
		if r.code != 0 {
			t.Fatalf("want exit 0:\n%s", r)
		}
		got := parseArchiveResult(t, r).statuses()
		c := node.cri(t)
		for name, id := range want {
			if got[name] != "imported" {
				t.Errorf("%s: %q, want imported", name, got[name])
			}
			img, err := c.ImageStatus(context.Background(), name)
			if err != nil || img == nil || img.Id != id {
				t.Errorf("CRI ImageStatus(%s) = %v, %v; want image %s", name, img, err, id)
			}
		}
	})

	t.Run("records look like the CRI's own", func(t *testing.T) {
		reg := harness.StartRegistry(t, harness.RegistryOptions{})
		pulled := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "cri/pulled", Tag: "1", OwnLayers: 1, LayerSize: 4 << 10}})[0]
		c := node.cri(t)
		if _, err := c.PullImage(context.Background(), pulled.Ref, nil); err != nil {
			t.Fatal(err)
		}
		ctrd := node.containerd(t)
		ctx := context.Background()
		criRecords := recordLabels(t, ctrd, pulled.Ref)
		if len(criRecords) != 3 {
			t.Fatalf("a CRI pull made records %v, want tag, digest and ID", slices.Collect(maps.Keys(criRecords)))
		}
		criLabels := slices.Collect(maps.Values(criRecords))[0]
		name := "registry.example/oci-layout-zstd/app:1"
		records := recordLabels(t, ctrd, name)
		if len(records) != 3 {
			t.Errorf("import made records %v, want tag, digest and ID as the CRI does", slices.Collect(maps.Keys(records)))
		}
		for rec, labels := range records {
			delete(labels, containerd.LabelPinned)
			delete(labels, containerd.LabelPreloaderPinned)
			if !maps.Equal(labels, criLabels) {
				t.Errorf("record %s has labels %v; a CRI pull's have %v", rec, labels, criLabels)
			}
		}
		// Unpacked into the CRI's snapshotter, as a pod needs it.
		img, err := ctrd.GetImage(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := img.IsUnpacked(ctx, "native"); !ok || err != nil {
			t.Errorf("IsUnpacked(native) = %v, %v; want true", ok, err)
		}
	})

	t.Run("a second run imports nothing", func(t *testing.T) {
		before := imageRecords(t, node.containerd(t))
		r := node.once(t, cfg)
		if r.code != 0 {
			t.Fatalf("want exit 0:\n%s", r)
		}
		for name, st := range parseArchiveResult(t, r).statuses() {
			if st != "present" {
				t.Errorf("%s: %q, want present", name, st)
			}
		}
		if after := imageRecords(t, node.containerd(t)); !maps.Equal(before, after) {
			t.Errorf("image records changed on a run that had nothing to do:\nbefore %v\nafter  %v", before, after)
		}
	})

	t.Run("a replaced archive of the same name and size is imported again", func(t *testing.T) {
		path := filepath.Join(dir, "docker-save-none.tar")
		old, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		name := "registry.example/docker-save-none/app:1"
		img := testImage(t, nodePlatform, 999)
		writeArchive(t, path, archivetest.DockerSave, archivetest.Plain, archivetest.Image{Names: []string{name}, Image: img})
		if fi, _ := os.Stat(path); fi.Size() != old.Size() {
			t.Fatalf("replacement has %d bytes, the test needs the same size as before (%d)", fi.Size(), old.Size())
		}
		r := node.once(t, cfg)
		if r.code != 0 {
			t.Fatalf("want exit 0:\n%s", r)
		}
		got := parseArchiveResult(t, r).statuses()
		for n, st := range got {
			if wantSt := map[bool]string{true: "imported", false: "present"}[n == name]; st != wantSt {
				t.Errorf("%s: %q, want %s", n, st, wantSt)
			}
		}
		if st, err := node.cri(t).ImageStatus(context.Background(), name); err != nil || st == nil || st.Id != imageID(t, img) {
			t.Errorf("CRI ImageStatus(%s) = %v, %v; want the replacement %s", name, st, err, imageID(t, img))
		}
	})
}

// recordLabels returns the labels of the image records of ref: itself,
// its repository at its digest, and its image ID.
func recordLabels(t *testing.T, c *client.Client, ref string) map[string]map[string]string {
	t.Helper()
	ctx := context.Background()
	img, err := c.ImageService().Get(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := images.Config(ctx, c.ContentStore(), img.Target, nil)
	if err != nil {
		t.Fatal(err)
	}
	repo := ref[:strings.LastIndex(ref, ":")]
	out := make(map[string]map[string]string)
	for _, n := range []string{ref, repo + "@" + img.Target.Digest.String(), cfg.Digest.String()} {
		if rec, err := c.ImageService().Get(ctx, n); err == nil {
			out[n] = harness.DropBookkeeping(rec.Labels)
		}
	}
	return out
}

// imageRecords maps every image record to when it last changed.
func imageRecords(t *testing.T, c *client.Client) map[string]time.Time {
	t.Helper()
	imgs, err := c.ImageService().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]time.Time)
	for _, img := range imgs {
		m[img.Name] = img.UpdatedAt
	}
	return m
}

func TestArchiveBad(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testArchiveBad(t, flavor) })
	}
}

func testArchiveBad(t *testing.T, flavor harness.Flavor) {
	node := newTestNode(t, flavor)
	good := func(seed uint64, f archivetest.Format, names ...string) []byte {
		var buf bytes.Buffer
		img := testImage(t, nodePlatform, seed)
		if err := archivetest.Write(&buf, f, []archivetest.Image{{Names: names, Image: img}}); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	flip := func(data []byte, which func(name string, i int) bool) []byte {
		i := 0
		out, err := archivetest.Edit(data, func(h *tar.Header, c []byte) (*tar.Header, []byte) {
			if archivetest.IsBlob(h.Name) && len(c) > 8000 {
				if which(h.Name, i) {
					c = slices.Clone(c)
					c[len(c)/2] ^= 0xff
				}
				i++
			}
			return h, c
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	prepend := func(data []byte, name string) []byte {
		out, err := archivetest.Prepend(data, name, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// Two images whose second one's own layer is corrupt, inside gzip
	// layers that only the unpack checks: the first image unpacks fine
	// and must not become visible either.
	var two bytes.Buffer
	if err := archivetest.Write(&two, archivetest.GGCRTarball, []archivetest.Image{
		{Names: []string{"registry.example/bad/first:1"}, Image: testImage(t, nodePlatform, 501)},
		{Names: []string{"registry.example/bad/second:1"}, Image: testImage(t, nodePlatform, 502)},
	}); err != nil {
		t.Fatal(err)
	}
	second, err := testImage(t, nodePlatform, 502).Layers()
	if err != nil {
		t.Fatal(err)
	}
	secondOwn, _ := second[1].Digest()
	oci := good(510, archivetest.OCILayout, "registry.example/bad/x:1")
	outside := filepath.Join(t.TempDir(), "outside.tar")
	if err := os.WriteFile(outside, good(511, archivetest.OCILayout, "registry.example/bad/x:1"), 0o644); err != nil {
		t.Fatal(err)
	}
	var arm bytes.Buffer
	if err := archivetest.Write(&arm, archivetest.OCILayout, []archivetest.Image{{Names: []string{"registry.example/bad/x:1"}, Image: testImage(t, "linux/s390x", 512)}}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		data  []byte // nil: no file
		link  string // symlink target instead of data
		image string // the image that names the archive; default registry.example/bad/x:1
		want  string
	}{
		{name: "truncated", data: oci[:len(oci)*2/3], want: "truncated"},
		{name: "blob digest mismatch", data: flip(oci, func(string, int) bool { return true }), want: "digest mismatch"},
		{name: "corrupt layer found on unpack", data: flip(two.Bytes(), func(n string, _ int) bool { return strings.Contains(n, secondOwn.Hex) }), image: "registry.example/bad/first:1", want: "import"},
		{name: "not an archive", data: []byte("this is not an archive, it only sits in the directory\n"), want: "not a tar archive"},
		{name: "entry with ..", data: prepend(oci, "../../etc/cron.d/evil"), want: "path with .."},
		{name: "absolute entry", data: prepend(oci, "/etc/cron.d/evil"), want: "absolute path"},
		{name: "outside archiveDir", link: outside, want: "outside archiveDir"},
		{name: "missing", want: "does not exist"},
		{name: "no image for the node's platform", data: arm.Bytes(), want: "platform " + nodePlatform},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := strings.ReplaceAll(tt.name, " ", "-") + ".tar"
			path := filepath.Join(dir, file)
			switch {
			case tt.link != "":
				if err := os.Symlink(tt.link, path); err != nil {
					t.Fatal(err)
				}
			case tt.data != nil:
				if err := os.WriteFile(path, tt.data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			image := cmp.Or(tt.image, "registry.example/bad/x:1")
			before := node.refs(t)
			r := node.once(t, archiveConfig(dir, true, image+" archive="+file))
			if r.code != 1 {
				t.Fatalf("want exit 1:\n%s", r)
			}
			out := parseArchiveResult(t, r)
			var found bool
			for _, img := range out.Images {
				if img.Status != "failed" {
					t.Errorf("%s: %s, want failed", img.Image, img.Status)
				}
				if img.Image == image {
					found = true
					if !strings.Contains(img.Error, path) || !strings.Contains(img.Error, tt.want) {
						t.Errorf("error %q, want one naming %s and saying %q", img.Error, path, tt.want)
					}
				}
			}
			if !found {
				t.Errorf("no result for the image that names the archive:\n%s", r)
			}
			if !strings.Contains(r.stderr, path) {
				t.Errorf("stderr does not name %s:\n%s", path, r.stderr)
			}
			if after := node.refs(t); !slices.Equal(before, after) {
				t.Errorf("CRI ListImages changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

func TestMirror(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testMirror(t, flavor) })
	}
}

// A canonical registry.k8s.io/pause that exists only on a mirror with auth.
func testMirror(t *testing.T, flavor harness.Flavor) {
	mirror := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	harness.PushTestImages(t, mirror, []harness.ImageSpec{{Repo: "k8s/pause", Tag: "3.10-mirrored", OwnLayers: 1, LayerSize: 4 << 10}})
	node := newTestNode(t, flavor)
	creds := writeFile(t, node.dir, "config.json", harness.DockerConfigJSON(mirror.Host, testUser, testPassword))
	canonical := "registry.k8s.io/pause:3.10-mirrored"
	cfg := fmt.Sprintf("sandboxImage: none\nretry: {initialDelay: 200ms, maxDelay: 1s}\nimages:\n  - image: %s\n    mirror: %s/k8s\n", canonical, mirror.Host)

	r := node.once(t, cfg, "--docker-config", creds)
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("want exit 0:\n%s", r)
	}
	out := parseArchiveResult(t, r)
	if len(out.Images) != 1 || out.Images[0].Status != "pulled" || out.Images[0].Source != mirror.Host+"/k8s/pause:3.10-mirrored" {
		t.Errorf("got %+v, want %s pulled from the mirror", out.Images, canonical)
	}
	assertPresent(t, node.ctrd.Endpoint, canonical)
	if !slices.Contains(node.refs(t), canonical) {
		t.Errorf("CRI ListImages does not show %s: %v", canonical, node.refs(t))
	}

	// Present now: no pull at all, the mirror may be gone.
	mirror.Stop()
	r = node.once(t, cfg, "--docker-config", creds)
	if r.code != 0 || parseArchiveResult(t, r).statuses()[canonical] != "present" {
		t.Errorf("second run: want exit 0 and present:\n%s", r)
	}
}

func TestPin(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testPin(t, flavor) })
	}
}

func testPin(t *testing.T, flavor harness.Flavor) {
	node := newTestNode(t, flavor)
	dir := t.TempDir()
	names := []string{"registry.example/pin/a:1", "registry.example/pin/b:1", "registry.example/pin/admin:1"}
	var imgs []archivetest.Image
	for i, n := range names {
		imgs = append(imgs, archivetest.Image{Names: []string{n}, Image: testImage(t, nodePlatform, uint64(600+i))})
	}
	writeArchive(t, filepath.Join(dir, "pin.tar"), archivetest.OCILayout, archivetest.Plain, imgs...)
	// The archive holds all three; the config lists a and b: all three
	// are preloaded from archiveDir and pinned.
	r := node.once(t, archiveConfig(dir, true, names[0], names[1]))
	if r.code != 0 {
		t.Fatalf("want exit 0:\n%s", r)
	}
	ctrd := node.containerd(t)
	ctx := context.Background()
	// An admin pins "admin" by hand, then takes the archive away: the
	// preloader must not remove a pin it did not set.
	adminImg, err := ctrd.ImageService().Get(ctx, names[2])
	if err != nil {
		t.Fatal(err)
	}
	// The preloader pinned it too (an archive's other image): take its
	// marks off, so that the pin is the admin's alone.
	paths := []string{"labels." + containerd.LabelPinned}
	for k := range adminImg.Labels {
		if strings.HasPrefix(k, containerd.LabelPinOwnerPrefix) {
			paths = append(paths, "labels."+k)
		}
	}
	adminImg.Labels = map[string]string{containerd.LabelPinned: "pinned"}
	if _, err := ctrd.ImageService().Update(ctx, adminImg, paths...); err != nil {
		t.Fatal(err)
	}
	wantPinned(t, node, flavor, map[string]bool{names[0]: true, names[1]: true, names[2]: true})

	if err := os.Remove(filepath.Join(dir, "pin.tar")); err != nil {
		t.Fatal(err)
	}
	r = node.once(t, archiveConfig(dir, true, names[0]))
	if r.code != 0 {
		t.Fatalf("after dropping b: want exit 0:\n%s", r)
	}
	wantPinned(t, node, flavor, map[string]bool{names[0]: true, names[1]: false, names[2]: true})

	r = node.once(t, archiveConfig(dir, false, names[0]))
	if r.code != 0 {
		t.Fatalf("with pin: false: want exit 0:\n%s", r)
	}
	wantPinned(t, node, flavor, map[string]bool{names[0]: false, names[1]: false, names[2]: true})
}

// wantPinned checks the pin label in containerd and, on containerd 2.x,
// CRI ListImages' pinned field (1.6 does not report it), waiting for the
// CRI to catch up with containerd's events.
func wantPinned(t *testing.T, node *testNode, flavor harness.Flavor, want map[string]bool) {
	t.Helper()
	ctx := context.Background()
	is := node.containerd(t).ImageService()
	for name, pinned := range want {
		img, err := is.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := img.Labels[containerd.LabelPinned] == "pinned"; got != pinned {
			t.Errorf("%s: pin label %v, want %v (labels %v)", name, got, pinned, img.Labels)
		}
	}
	c := node.cri(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		imgs, err := c.ListImages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var wrong []string
		for name, pinned := range want {
			img := findImage(imgs, name)
			switch {
			case img == nil:
				wrong = append(wrong, name+" missing")
			case flavor == harness.Containerd16 && img.Pinned:
				wrong = append(wrong, name+" pinned in CRI 1.6, which does not report pins")
			case flavor != harness.Containerd16 && img.Pinned != pinned:
				wrong = append(wrong, fmt.Sprintf("%s pinned=%v", name, img.Pinned))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("CRI ListImages: %v, want pinned %v", wrong, want)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func findImage(imgs []*runtimeapi.Image, ref string) *runtimeapi.Image {
	for _, img := range imgs {
		if slices.Contains(img.RepoTags, ref) {
			return img
		}
	}
	return nil
}

// TestBundleRoundTrip bundles from a real registry with credentials, stops
// the registry, and imports the bundle from archiveDir on fresh runtimes.
func TestBundleRoundTrip(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	pushed := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
		{Repo: "team/tool", Tag: "2.0", BaseLayers: 2, OwnLayers: 2, LayerSize: 64 << 10},
		{Repo: "mirror/k8s/pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10},
	})
	dir := t.TempDir()
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	byDigest := reg.Host + "/team/tool@" + pushed[1].Digest
	cfg := fmt.Sprintf(`sandboxImage: none
images:
  - image: %s
  - image: %s
  - image: registry.k8s.io/pause:3.10
    mirror: %s/mirror/k8s
`, pushed[0].Ref, byDigest, reg.Host)
	cfgPath := writeFile(t, dir, "images.yaml", cfg)
	archives := t.TempDir()
	out := filepath.Join(archives, "bundle.tar.zst")
	r := preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", out, "--docker-config", creds)
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("bundle: want exit 0:\n%s", r)
	}
	if !strings.Contains(r.stderr, "[3/3]") {
		t.Errorf("bundle reports no progress on stderr:\n%s", r.stderr)
	}
	reg.Stop()

	nodeCfg := fmt.Sprintf("archiveDir: %s\n%s", archives, cfg)
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) {
			node := newTestNode(t, flavor)
			r := node.once(t, nodeCfg)
			if r.code != 0 {
				t.Fatalf("once: want exit 0:\n%s", r)
			}
			got := parseArchiveResult(t, r).statuses()
			for _, ref := range []string{pushed[0].Ref, byDigest, "registry.k8s.io/pause:3.10"} {
				if got[ref] != "imported" {
					t.Errorf("%s: %q, want imported\n%s", ref, got[ref], r)
				}
			}
			assertPresent(t, node.ctrd.Endpoint, pushed[0].Ref, byDigest, "registry.k8s.io/pause:3.10")
		})
	}
}
