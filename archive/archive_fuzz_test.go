package archive_test

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/archive/archivetest"
)

// fuzzSeeds are small valid archives, every format and compression, and
// what Inspect must find in them.
func fuzzSeeds(tb testing.TB) (map[string][]byte, map[string][]archive.Image) {
	tb.Helper()
	base, err := archivetest.Layer(1, 64, true)
	if err != nil {
		tb.Fatal(err)
	}
	top, err := archivetest.Layer(2, 64, false)
	if err != nil {
		tb.Fatal(err)
	}
	img, err := archivetest.NewImage("linux/amd64", base, top)
	if err != nil {
		tb.Fatal(err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		tb.Fatal(err)
	}
	imgs := []archivetest.Image{{Names: []string{"registry.example/team/app:1.0"}, Image: img}}
	want := []archive.Image{{Names: []string{"registry.example/team/app:1.0"}, Config: digest.Digest(cfg.String())}}
	data := map[string][]byte{}
	wants := map[string][]archive.Image{}
	for _, f := range archivetest.Formats {
		var buf bytesBuffer
		if err := archivetest.Write(&buf, f, imgs); err != nil {
			tb.Fatal(err)
		}
		for _, c := range []string{archivetest.Plain, archivetest.Gzip, archivetest.Zstd} {
			if c != archivetest.Plain && f != archivetest.DockerSave && f != archivetest.OCILayout {
				continue
			}
			b, err := archivetest.Compress(buf.b, c)
			if err != nil {
				tb.Fatal(err)
			}
			name := "valid-" + string(f) + "-" + c
			data[name], wants[string(b)] = b, want
		}
	}
	// Hostile ones: escaping paths, link loops, a truncated stream, a
	// compression it refuses, nothing at all.
	plain := data["valid-docker-save-"+archivetest.Plain]
	if b, err := archivetest.Prepend(plain, "../../etc/evil", []byte("x")); err == nil {
		data["hostile-dotdot"] = b
	}
	if b, err := archivetest.Edit(plain, func(hdr *tar.Header, content []byte) (*tar.Header, []byte) {
		if hdr.Name == "manifest.json" {
			return &tar.Header{Name: hdr.Name, Typeflag: tar.TypeSymlink, Linkname: "manifest.json", Mode: 0o777}, nil
		}
		return hdr, content
	}); err == nil {
		data["hostile-link-loop"] = b
	}
	data["hostile-truncated"] = plain[:len(plain)/2]
	data["hostile-xz"] = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00, 0, 0}
	data["hostile-empty"] = []byte{}
	if gz := data["valid-oci-layout-"+archivetest.Gzip]; len(gz) > 0 {
		data["hostile-gzip-truncated"] = gz[:len(gz)-20]
	}
	return data, wants
}

type bytesBuffer struct{ b []byte }

func (w *bytesBuffer) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// FuzzArchive reads arbitrary bytes as an archive: no panic, bounded time
// and allocation, and whatever Inspect accepts is what Each delivers, blob
// for blob, digests and sizes checked, or what Each finds corrupt; the valid seeds round-trip to the
// images they were written from.
func FuzzArchive(f *testing.F) {
	seeds, wants := fuzzSeeds(f)
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range seeds {
			if !yield(k) {
				return
			}
		}
	}) {
		f.Add(seeds[name])
	}
	dir := f.TempDir()
	amd64 := ocispec.Platform{OS: "linux", Architecture: "amd64"}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, "a.tar"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		want, valid := wants[string(data)]

		a, err := archive.Open(dir, "a.tar")
		if err != nil {
			if valid {
				t.Fatalf("Open of a valid archive: %v", err)
			}
			return
		}
		defer a.Close()
		contents, err := archive.Inspect(context.Background(), a, amd64)
		if err != nil {
			if valid {
				t.Fatalf("Inspect of a valid archive: %v", err)
			}
			if err.Error() == "" {
				t.Fatal("empty error")
			}
		} else {
			checkContents(t, contents)
			if valid {
				got := make([]archive.Image, len(contents.Images))
				for i, img := range contents.Images {
					got[i] = archive.Image{Names: img.Names, Config: img.Config}
				}
				if !slices.EqualFunc(got, want, func(a, b archive.Image) bool {
					return a.Config == b.Config && slices.Equal(a.Names, b.Names)
				}) {
					t.Fatalf("valid archive: got %+v, want %+v", got, want)
				}
			}
		}

		runtime.ReadMemStats(&after)
		// Metadata is kept up to 256 MiB by design; anything past twice
		// that for one archive is a leak or a decompressor trusting a header.
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 512<<20 {
			t.Fatalf("allocated %d MiB for %d bytes of input", alloc>>20, len(data))
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Fatalf("took %s for %d bytes of input", d, len(data))
		}
	})
}

// checkContents checks what Inspect promises about an archive it accepts.
func checkContents(t *testing.T, c *archive.Contents) {
	t.Helper()
	var descs []ocispec.Descriptor
	want := map[digest.Digest]ocispec.Descriptor{}
	for _, img := range c.Images {
		if err := img.Config.Validate(); err != nil {
			t.Fatalf("image %v: config %q: %v", img.Names, img.Config, err)
		}
		if len(img.Blobs) < 2 || img.Blobs[0].Digest != img.Target.Digest {
			t.Fatalf("image %v: blobs %v do not start with the target %s", img.Names, img.Blobs, img.Target.Digest)
		}
		if !slices.ContainsFunc(img.Blobs, func(d ocispec.Descriptor) bool { return d.Digest == img.Config }) {
			t.Fatalf("image %v: config %s not among its blobs", img.Names, img.Config)
		}
		for _, n := range img.Names {
			named, err := reference.ParseNormalizedNamed(n)
			if err != nil || reference.TagNameOnly(named).String() != n {
				t.Fatalf("image name %q is not normalized: %v", n, err)
			}
		}
		absent := map[digest.Digest]bool{}
		for _, b := range img.Absent {
			// Only layers may be absent: the import checks that the node
			// has them, and reads everything else from the archive.
			if !images.IsLayerType(b.MediaType) || !slices.ContainsFunc(img.Blobs, func(d ocispec.Descriptor) bool { return d.Digest == b.Digest }) {
				t.Fatalf("image %v: absent %+v is not one of its layers", img.Names, b)
			}
			absent[b.Digest] = true
		}
		for _, b := range img.Blobs {
			if err := b.Digest.Validate(); err != nil || b.Size < 0 {
				t.Fatalf("image %v: blob %+v: %v", img.Names, b, err)
			}
			if prev, ok := want[b.Digest]; ok && prev.Size != b.Size {
				t.Fatalf("blob %s with sizes %d and %d", b.Digest, prev.Size, b.Size)
			}
			if !absent[b.Digest] {
				want[b.Digest] = b
				descs = append(descs, b)
			}
		}
	}
	for _, u := range c.Unavailable {
		if u.Platform == "" || u.Error() == "" {
			t.Fatalf("unavailable image %+v says nothing", u)
		}
	}
	var mu sync.Mutex
	got := map[digest.Digest]int{}
	err := c.Each(context.Background(), descs, func(d ocispec.Descriptor, r io.Reader) error {
		v := d.Digest.Verifier()
		n, err := io.Copy(v, r)
		if err != nil {
			return err
		}
		if n != d.Size || !v.Verified() {
			t.Errorf("blob %s: %d bytes (want %d), verified %v", d.Digest, n, d.Size, v.Verified())
		}
		mu.Lock()
		got[d.Digest]++
		mu.Unlock()
		return nil
	})
	if errors.Is(err, archive.ErrCorrupt) {
		return // a layer Inspect passed over, found corrupt as it was read
	}
	if err != nil {
		t.Fatalf("Each after a successful Inspect: %v", err)
	}
	for d := range want {
		if got[d] != 1 {
			t.Fatalf("blob %s delivered %d times, want once", d, got[d])
		}
	}
}

// TestWriteFuzzSeeds writes FuzzArchive's seed corpus under testdata; run it
// with KP_WRITE_FUZZ_SEEDS=1 after changing archivetest's formats.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("KP_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("KP_WRITE_FUZZ_SEEDS not set")
	}
	seeds, _ := fuzzSeeds(t)
	dir := filepath.Join("testdata", "fuzz", "FuzzArchive")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range seeds {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
