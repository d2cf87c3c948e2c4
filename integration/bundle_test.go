package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/bundle"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// otherArch is a platform other than the machine's, for images a node
// here cannot run.
func otherArch() string {
	if runtime.GOARCH == "arm64" {
		return "linux/amd64"
	}
	return "linux/arm64"
}

// bundleFiles reads a bundle (plain or zstd, whole or the concatenation
// of its parts) into its tar entries.
func bundleFiles(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	if bytes.HasPrefix(data, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		zr, err := zstd.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		if data, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	files, err := archivetest.Files(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func loadLock(t *testing.T, path string) *bundle.Lock {
	t.Helper()
	l, _, err := bundle.LoadLock(path)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func blobPath(d string) string { return "blobs/sha256/" + strings.TrimPrefix(d, "sha256:") }

// TestBundlePlatforms: a bundle of two platforms from a real registry
// keeps each index byte for byte with the two platforms' manifests and
// blobs and no others, says so in its lock (beside it, inside it, and as
// bundle inspect prints it), and imports on this machine's nodes.
func TestBundlePlatforms(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	native := "linux/" + runtime.GOARCH
	pushed := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10, Platforms: []string{native, otherArch()}},
		{Repo: "team/tool", Tag: "2.0", BaseLayers: 1, OwnLayers: 2, LayerSize: 32 << 10, Platforms: []string{otherArch(), "linux/s390x", native}},
	})
	dir := t.TempDir()
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	cfg := imagesYAML("none", pushed[0].Ref, pushed[1].Ref)
	cfgPath := writeFile(t, dir, "images.yaml", cfg)
	archives := t.TempDir()
	out := filepath.Join(archives, "bundle.tar.zst")
	plats := native + "," + otherArch()
	r := preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", out, "--platform", plats, "--docker-config", creds)
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("bundle --platform %s: want exit 0:\n%s", plats, r)
	}
	files := bundleFiles(t, readFile(t, out))
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	lock := loadLock(t, out+".lock")
	if !bytes.Equal(files[bundle.LockEntry], readFile(t, out+".lock")) {
		t.Errorf("the lock inside the bundle differs from %s.lock", out)
	}
	for i, img := range pushed {
		raw, _ := img.Index.RawManifest()
		if !bytes.Equal(files[blobPath(img.Digest)], raw) {
			t.Errorf("%s: its index is not in the bundle byte for byte", img.Ref)
		}
		if i >= len(index.Manifests) || index.Manifests[i].Digest.String() != img.Digest || index.Manifests[i].Annotations[bundle.AnnotationRefName] != img.Ref {
			t.Errorf("index.json entry %d: %+v, want %s named %s", i, index.Manifests, img.Digest, img.Ref)
		}
		li, ok := lock.Image(img.Ref)
		if !ok || li.Digest.String() != img.Digest || li.From != img.Ref {
			t.Errorf("lock entry of %s: %+v", img.Ref, li)
		}
		for plat, m := range img.Manifests {
			want := plat != "linux/s390x"
			_, hasManifest := files[blobPath(m.Digest)]
			_, hasOwn := files[blobPath(m.Layers[len(m.Layers)-1])]
			if hasManifest != want || hasOwn != want {
				t.Errorf("%s %s: manifest in the bundle %v, own layer %v; want %v", img.Ref, plat, hasManifest, hasOwn, want)
			}
			inLock := slices.ContainsFunc(li.Platforms, func(p bundle.LockPlatform) bool {
				return p.Platform == plat && p.Manifest.Digest.String() == m.Digest && len(p.Layers) == len(m.Layers)
			})
			if inLock != want {
				t.Errorf("%s %s: in the lock %v, want %v\n%+v", img.Ref, plat, inLock, want, li)
			}
		}
	}
	if strings.Join(lock.Platforms, ",") != plats {
		t.Errorf("lock platforms %q, want %s", lock.Platforms, plats)
	}
	// bundle inspect prints the same lock, whatever form it is given.
	r = preloader(t, time.Minute, nil, "bundle", "inspect", out)
	if r.code != 0 || strings.Contains(r.stdout, "linux/s390x") {
		t.Errorf("bundle inspect: want exit 0 and a table of the bundle's platforms only:\n%s", r)
	}
	var rows []string
	for _, line := range strings.Split(r.stdout, "\n") {
		rows = append(rows, strings.Join(strings.Fields(line), " "))
	}
	for _, img := range pushed {
		for _, plat := range []string{native, otherArch()} {
			m := img.Manifests[plat]
			row := fmt.Sprintf("%s %s %s %s %d", img.Ref, shortDigest(img.Digest), plat, shortDigest(m.Digest), len(m.Layers))
			if !slices.ContainsFunc(rows, func(r string) bool { return strings.HasPrefix(r, row+" ") }) {
				t.Errorf("bundle inspect: no row %q:\n%s", row, r.stdout)
			}
		}
	}
	r = preloader(t, time.Minute, nil, "bundle", "inspect", out, "-o", "yaml")
	if r.code != 0 || r.stdout != string(readFile(t, out+".lock")) {
		t.Errorf("bundle inspect -o yaml: want the lock as written:\n%s", r)
	}
	r = preloader(t, time.Minute, nil, "bundle", "inspect", out+".lock", "-o", "json")
	var fromJSON bundle.Lock
	if err := json.Unmarshal([]byte(r.stdout), &fromJSON); r.code != 0 || err != nil || len(fromJSON.Images) != 2 || fromJSON.Images[1].Digest != lock.Images[1].Digest {
		t.Errorf("bundle inspect FILE.lock -o json: %v\n%s", err, r)
	}

	// An image without a platform asked for fails by name.
	r = preloader(t, time.Minute, nil, "bundle", "--config", cfgPath, "-o", filepath.Join(dir, "s390x.tar"), "--platform", "linux/s390x", "--docker-config", creds)
	want := fmt.Sprintf("%s: no manifest for platform linux/s390x (the image has %s, %s)", pushed[0].Ref, native, otherArch())
	if r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("bundle of a platform an image lacks: want exit 1 saying %q:\n%s", want, r)
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
			for _, img := range pushed {
				if got[img.Ref] != "imported" {
					t.Errorf("%s: %q, want imported\n%s", img.Ref, got[img.Ref], r)
				}
			}
			assertPresent(t, node.ctrd.Endpoint, pushed[0].Ref, pushed[1].Ref)
		})
	}
}

func shortDigest(d string) string {
	alg, hex, _ := strings.Cut(d, ":")
	return alg + ":" + hex[:12]
}

// TestBundleLockAfterTagMoves: --lock rebuilds exactly the lock's digests
// after the tags moved; without it, the bundle has the new ones.
func TestBundleLockAfterTagMoves(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	specs := []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10, Platforms: []string{"linux/amd64", "linux/arm64"}},
		{Repo: "team/tool", Tag: "2.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
	}
	pushed := harness.PushTestImages(t, reg, specs)
	dir := t.TempDir()
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	cfgPath := writeFile(t, dir, "images.yaml", imagesYAML("none", pushed[0].Ref, pushed[1].Ref))
	first := filepath.Join(dir, "first.tar")
	if r := preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", first, "--platform", "all", "--docker-config", creds); r.code != 0 {
		t.Fatalf("bundle: want exit 0:\n%s", r)
	}
	for i := range specs {
		specs[i].Revision = "2"
	}
	moved := harness.PushTestImages(t, reg, specs)
	for i := range moved {
		if moved[i].Digest == pushed[i].Digest {
			t.Fatalf("%s did not move", moved[i].Ref)
		}
	}

	locked := filepath.Join(dir, "locked.tar")
	r := preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", locked, "--lock", first+".lock", "--docker-config", creds)
	if r.code != 0 {
		t.Fatalf("bundle --lock: want exit 0:\n%s", r)
	}
	if a, b := readFile(t, first+".lock"), readFile(t, locked+".lock"); !bytes.Equal(a, b) {
		t.Errorf("bundle --lock wrote another lock:\n%s\nwant\n%s", b, a)
	}
	files := bundleFiles(t, readFile(t, locked))
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	for i, img := range pushed {
		if i >= len(index.Manifests) || index.Manifests[i].Digest.String() != img.Digest {
			t.Errorf("bundle --lock: %s is %+v, want the locked %s", img.Ref, index.Manifests, img.Digest)
		}
	}
	for _, m := range pushed[0].Manifests {
		for _, l := range m.Layers {
			if _, ok := files[blobPath(l)]; !ok {
				t.Errorf("bundle --lock lacks layer %s of the locked %s", l, pushed[0].Ref)
			}
		}
	}

	now := filepath.Join(dir, "now.tar")
	if r := preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", now, "--platform", "all", "--docker-config", creds); r.code != 0 {
		t.Fatalf("bundle: want exit 0:\n%s", r)
	}
	for i, li := range loadLock(t, now+".lock").Images {
		if li.Digest.String() != moved[i].Digest {
			t.Errorf("bundle without --lock: %s is %s, want the moved %s", li.Name, li.Digest, moved[i].Digest)
		}
	}
}

// deltaSpecs are ten images sharing two base layers, each with a layer of
// its own: a site's images, one of which changes between two bundles.
func deltaSpecs() []harness.ImageSpec {
	var specs []harness.ImageSpec
	for i := range 10 {
		specs = append(specs, harness.ImageSpec{Repo: fmt.Sprintf("site/app%d", i), Tag: "1.0", BaseLayers: 2, BaseLayerSize: 512 << 10, OwnLayers: 1, LayerSize: 1 << 20})
	}
	return specs
}

// TestBundleDelta measures a delta: ten images bundled, one changed, and
// the bundle --since the first lock. Its blobs and its file are within
// 1.1x the changed bytes (the changed image's blobs the first bundle
// lacks: manifest, config, new layer).
func TestBundleDelta(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	specs := deltaSpecs()
	pushed := harness.PushTestImages(t, reg, specs)
	dir := t.TempDir()
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	var refs []string
	for _, p := range pushed {
		refs = append(refs, p.Ref)
	}
	cfgPath := writeFile(t, dir, "images.yaml", imagesYAML("none", refs...))
	full := filepath.Join(dir, "full.tar")
	if r := preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", full, "--docker-config", creds); r.code != 0 {
		t.Fatalf("bundle: want exit 0:\n%s", r)
	}
	fullFiles := bundleFiles(t, readFile(t, full))

	specs[3].Revision = "2"
	changed := harness.PushTestImages(t, reg, specs[3:4])[0]
	m, err := changed.Image.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := changed.Image.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string]int64{changed.Digest: int64(len(raw)), m.Config.Digest.String(): m.Config.Size}
	for _, l := range m.Layers {
		blobs[l.Digest.String()] = l.Size
	}
	var changedBytes int64
	for d, size := range blobs {
		if _, ok := fullFiles[blobPath(d)]; !ok {
			changedBytes += size
		}
	}

	delta := filepath.Join(dir, "delta.tar")
	r := preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", delta, "--since", full+".lock", "--docker-config", creds)
	if r.code != 0 {
		t.Fatalf("bundle --since: want exit 0:\n%s", r)
	}
	data := readFile(t, delta)
	files := bundleFiles(t, data)
	var blobBytes int64
	for name, b := range files {
		if strings.HasPrefix(name, "blobs/") {
			blobBytes += int64(len(b))
		}
	}
	fullSize := int64(len(readFile(t, full)))
	t.Logf("delta of 1 changed image in 10: blobs %d bytes, file %d bytes; changed %d bytes; blobs/changed %.3f, file/changed %.3f; full bundle %d bytes",
		blobBytes, len(data), changedBytes, float64(blobBytes)/float64(changedBytes), float64(len(data))/float64(changedBytes), fullSize)
	if float64(blobBytes) > 1.1*float64(changedBytes) {
		t.Errorf("delta blobs %d bytes, more than 1.1x the %d changed bytes", blobBytes, changedBytes)
	}
	if float64(len(data)) > 1.1*float64(changedBytes) {
		t.Errorf("delta file %d bytes, more than 1.1x the %d changed bytes", len(data), changedBytes)
	}
	// Every image is named, with its manifest and config; of layers only
	// the new one.
	lock := loadLock(t, delta+".lock")
	sum := digest.FromBytes(readFile(t, full+".lock"))
	if lock.Since == nil || lock.Since.File != "full.tar.lock" || lock.Since.Digest != sum {
		t.Errorf("delta lock since: %+v, want full.tar.lock %s", lock.Since, sum)
	}
	for _, li := range lock.Images {
		for _, p := range li.Platforms {
			for _, b := range []bundle.LockBlob{p.Manifest, p.Config} {
				if _, ok := files[blobPath(b.Digest.String())]; !ok {
					t.Errorf("delta lacks %s of %s", b.Digest, li.Name)
				}
			}
		}
	}
	if _, ok := files[blobPath(changed.Layers[len(changed.Layers)-1])]; !ok {
		t.Errorf("delta lacks the changed image's new layer")
	}
	if !strings.Contains(r.stderr, "layers left out, in full.tar.lock") {
		t.Errorf("bundle --since does not say what it left out:\n%s", r.stderr)
	}
}

// TestBundleParts: --max-part-size splits the finished (compressed)
// bundle into FILE.part-NNN whose concatenation is the bundle, with one
// lock beside them and no FILE; bundle inspect reads the first part.
func TestBundleParts(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	pushed := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.0", OwnLayers: 2, LayerSize: 1 << 20},
		{Repo: "team/tool", Tag: "2.0", OwnLayers: 1, LayerSize: 1 << 20},
	})
	dir := t.TempDir()
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	cfgPath := writeFile(t, dir, "images.yaml", imagesYAML("none", pushed[0].Ref, pushed[1].Ref))
	archives := t.TempDir()
	out := filepath.Join(archives, "images.tar.zst")
	r := preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", out, "--max-part-size", "1Mi", "--docker-config", creds)
	if r.code != 0 {
		t.Fatalf("bundle --max-part-size 1Mi: want exit 0:\n%s", r)
	}
	entries, err := os.ReadDir(archives)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	var joined []byte
	n := 0
	for i := 1; slices.Contains(names, filepath.Base(bundle.PartName(out, i))); i++ {
		b := readFile(t, bundle.PartName(out, i))
		joined = append(joined, b...)
		n = i
		if slices.Contains(names, filepath.Base(bundle.PartName(out, i+1))) && len(b) != 1<<20 {
			t.Errorf("part %d: %d bytes, want 1Mi", i, len(b))
		}
	}
	// Random layers do not compress: 3 MiB of them make 4 parts.
	wantNames := []string{"images.tar.zst.lock"}
	for i := 1; i <= n; i++ {
		wantNames = append(wantNames, filepath.Base(bundle.PartName(out, i)))
	}
	slices.Sort(wantNames)
	if n < 4 || !slices.Equal(names, wantNames) {
		t.Errorf("files written: %q, want 4 or more parts and the lock: %q", names, wantNames)
	}
	if said := fmt.Sprintf("wrote %d parts, images.tar.zst.part-001 to %s, and %s.lock", n, filepath.Base(bundle.PartName(out, n)), out); !strings.Contains(r.stderr, said) {
		t.Errorf("bundle does not say %q:\n%s", said, r.stderr)
	}
	files := bundleFiles(t, joined)
	if !bytes.Equal(files[bundle.LockEntry], readFile(t, out+".lock")) {
		t.Errorf("the parts joined are not a bundle with the lock beside them")
	}
	for _, img := range pushed {
		for _, l := range img.Layers {
			if _, ok := files[blobPath(l)]; !ok {
				t.Errorf("the parts joined lack layer %s of %s", l, img.Ref)
			}
		}
	}
	for _, p := range []string{bundle.PartName(out, 1), out} {
		r = preloader(t, time.Minute, nil, "bundle", "inspect", p)
		if r.code != 0 || !strings.Contains(r.stdout, pushed[1].Ref) {
			t.Errorf("bundle inspect %s: want exit 0 and the images:\n%s", filepath.Base(p), r)
		}
	}

	// Written whole again, the parts go: left there, they would be a
	// second copy of the images.
	r = preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", out, "--docker-config", creds)
	if r.code != 0 {
		t.Fatalf("bundle: want exit 0:\n%s", r)
	}
	if parts, _ := filepath.Glob(out + ".part-*"); len(parts) != 0 {
		t.Errorf("parts of the split bundle left beside the whole one: %q", parts)
	}
}

// TestBundlePeers compares preloader bundle with skopeo, the tool people
// use for this, on the same ten two-platform images from one registry:
// skopeo copy --all of each into one OCI layout, and skopeo sync (which
// writes only dir or docker here) into a directory. It asserts that the
// bundle holds the blobs skopeo copies, and logs times, bytes and ratios
// (times are distorted by whatever else runs on the machine).
func TestBundlePeers(t *testing.T) {
	const skopeo = "/usr/bin/skopeo"
	harness.Require(t, "skopeo", skopeo)
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	specs := deltaSpecs()
	for i := range specs {
		specs[i].Platforms = []string{"linux/amd64", "linux/arm64"}
		specs[i].LayerSize = 512 << 10
	}
	pushed := harness.PushTestImages(t, reg, specs)
	dir := t.TempDir()
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	var refs []string
	for _, p := range pushed {
		refs = append(refs, p.Ref)
	}
	cfgPath := writeFile(t, dir, "images.yaml", imagesYAML("none", refs...))

	out := filepath.Join(dir, "bundle.tar")
	start := time.Now()
	r := preloader(t, 3*time.Minute, nil, "bundle", "--config", cfgPath, "-o", out, "--platform", "all", "--docker-config", creds)
	bundleTime := time.Since(start)
	if r.code != 0 {
		t.Fatalf("bundle: want exit 0:\n%s", r)
	}
	data := readFile(t, out)
	files := bundleFiles(t, data)
	var blobSum int64
	for name, b := range files {
		if strings.HasPrefix(name, "blobs/") {
			blobSum += int64(len(b))
		}
	}

	layout := filepath.Join(dir, "oci")
	start = time.Now()
	for _, ref := range refs {
		runTool(t, skopeo, "copy", "--all", "--src-tls-verify=false", "--src-creds", testUser+":"+testPassword, "docker://"+ref, "oci:"+layout+":"+strings.TrimPrefix(ref, reg.Host+"/"))
	}
	copyTime := time.Since(start)
	copyBytes, copyBlobs := dirBytes(t, layout)
	// The same layers; skopeo writes Docker manifests (and their configs
	// and indexes) converted to OCI ones, under other digests, where the
	// bundle keeps what the tags name.
	layers := loadLock(t, out+".lock").Layers()
	for l := range layers {
		if !copyBlobs[l.Encoded()] {
			t.Errorf("skopeo copy --all copied no layer %s, which the bundle holds", l)
		}
	}
	converted := 0
	for b := range copyBlobs {
		if _, ok := files["blobs/sha256/"+b]; !ok {
			converted++
		}
	}

	var syncCfg strings.Builder
	fmt.Fprintf(&syncCfg, "%s:\n  tls-verify: false\n  credentials: {username: %s, password: %s}\n  images:\n", reg.Host, testUser, testPassword)
	for _, s := range specs {
		fmt.Fprintf(&syncCfg, "    %s: [%q]\n", s.Repo, s.Tag)
	}
	syncPath := writeFile(t, dir, "sync.yaml", syncCfg.String())
	synced := filepath.Join(dir, "sync")
	start = time.Now()
	runTool(t, skopeo, "sync", "--all", "--src", "yaml", "--dest", "dir", syncPath, synced)
	syncTime := time.Since(start)
	syncBytes, _ := dirBytes(t, synced)

	ratio := func(a, b float64) string { return fmt.Sprintf("%.2f", a/b) }
	t.Logf("10 images x 2 platforms: bundle %d blobs (%d layers), %d blob bytes; skopeo copy %d blobs, %d of them converted manifests, configs and indexes", len(files)-3, len(layers), blobSum, len(copyBlobs), converted)
	t.Logf("preloader bundle --platform all: %s, %d bytes (archive/blobs %s)", bundleTime.Round(time.Millisecond), len(data), ratio(float64(len(data)), float64(blobSum)))
	t.Logf("skopeo copy --all into one OCI layout: %s, %d bytes; bundle/skopeo time %s, bytes %s",
		copyTime.Round(time.Millisecond), copyBytes, ratio(bundleTime.Seconds(), copyTime.Seconds()), ratio(float64(len(data)), float64(copyBytes)))
	t.Logf("skopeo sync --all into dir: %s, %d bytes; bundle/skopeo time %s, bytes %s",
		syncTime.Round(time.Millisecond), syncBytes, ratio(bundleTime.Seconds(), syncTime.Seconds()), ratio(float64(len(data)), float64(syncBytes)))
}

func runTool(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
}

// dirBytes is the size of the files under dir, and the names of those
// that are blobs (digest-named, in an OCI layout's blobs/).
func dirBytes(t *testing.T, dir string) (int64, map[string]bool) {
	t.Helper()
	var n int64
	blobs := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n += fi.Size()
		if filepath.Base(filepath.Dir(p)) == "sha256" {
			blobs[d.Name()] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, blobs
}
