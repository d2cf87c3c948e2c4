package archive_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/archive/archivetest"
)

func TestPartOf(t *testing.T) {
	tests := []struct {
		name, file string
		n          int
	}{
		{"images.tar.zst.part-001", "images.tar.zst", 1},
		{"images.tar.part-999", "images.tar", 999},
		{"images.tar.part-1000", "images.tar", 1000},
		{"a.part-002.part-003", "a.part-002", 3},
		{"images.tar.part-01", "", 0},   // not as the writer writes it
		{"images.tar.part-0001", "", 0}, // nor this
		{"images.tar.part-000", "", 0},  // parts count from 1
		{"images.tar.part-abc", "", 0},
		{".part-001", "", 0},
		{"images.tar", "", 0},
	}
	for _, tt := range tests {
		file, n, ok := archive.PartOf(tt.name)
		if ok != (tt.file != "") || file != tt.file || n != tt.n {
			t.Errorf("PartOf(%q) = %q, %d, %v; want %q, %d", tt.name, file, n, ok, tt.file, tt.n)
		}
	}
}

// TestParts: the parts of a split archive are read as the archive, for
// any compression and wherever the cuts fall; a set with a part missing
// (in the middle or at the end) names the part and imports nothing.
func TestParts(t *testing.T) {
	imgs := testImages(t)
	plain := write(t, archivetest.OCILayout, imgs)
	for _, c := range []string{archivetest.Plain, archivetest.Gzip, archivetest.Zstd} {
		data, err := archivetest.Compress(plain, c)
		if err != nil {
			t.Fatal(err)
		}
		// Small parts, so that blobs span several of them; and a cut
		// exactly where the end-of-archive blocks of a plain tar start,
		// so that the first part alone is every entry and nothing more.
		sizes := map[string]int{"small": 1000, "half": len(data)/2 + 1}
		if c == archivetest.Plain {
			end := len(data) - 1024
			if strings.Trim(string(data[end:]), "\x00") != "" {
				t.Fatal("the plain tar does not end with two zero blocks")
			}
			sizes["before the end blocks"] = end
		}
		for what, size := range sizes {
			t.Run(c+"/"+what, func(t *testing.T) {
				dir := t.TempDir()
				paths, err := archivetest.WriteParts(dir, "b.tar", data, size)
				if err != nil {
					t.Fatal(err)
				}
				if len(paths) < 2 {
					t.Fatalf("%d parts, the test needs several", len(paths))
				}

				t.Run("complete", func(t *testing.T) {
					a, err := archive.Open(dir, "b.tar")
					if err != nil {
						t.Fatal(err)
					}
					defer a.Close()
					if a.Compression != c || !slices.Equal(a.Parts, paths) || a.Path != filepath.Join(dir, "b.tar") {
						t.Errorf("opened %s as %s from %v; want %s from %v", a.Path, a.Compression, a.Parts, c, paths)
					}
					contents, err := archive.Inspect(context.Background(), a, amd64)
					if err != nil {
						t.Fatal(err)
					}
					if len(contents.Images) != len(imgs) {
						t.Fatalf("%d images, want %d", len(contents.Images), len(imgs))
					}
					var descs []ocispec.Descriptor
					for _, img := range contents.Images {
						descs = append(descs, img.Blobs...)
					}
					err = contents.Each(context.Background(), descs, func(d ocispec.Descriptor, r io.Reader) error {
						b, err := io.ReadAll(r)
						if err != nil {
							return err
						}
						if digest.FromBytes(b) != d.Digest {
							t.Errorf("blob %s read across parts has digest %s", d.Digest, digest.FromBytes(b))
						}
						return nil
					})
					if err != nil {
						t.Fatal(err)
					}
				})

				for _, missing := range []int{len(paths) - 1, len(paths)} {
					t.Run("without part "+filepath.Base(paths[missing-1]), func(t *testing.T) {
						sub := t.TempDir()
						for i, p := range paths {
							if i+1 != missing {
								b, _ := os.ReadFile(p)
								if err := os.WriteFile(filepath.Join(sub, filepath.Base(p)), b, 0o644); err != nil {
									t.Fatal(err)
								}
							}
						}
						err := openInspect(sub)
						if !errors.Is(err, archive.ErrIncomplete) {
							t.Fatalf("err = %v, want ErrIncomplete", err)
						}
						name := filepath.Base(paths[missing-1])
						if !strings.Contains(err.Error(), name+" is missing") || !strings.Contains(err.Error(), filepath.Join(sub, "b.tar")) {
							t.Errorf("err = %v, want it to name the archive and say %s is missing", err, name)
						}
					})
				}
			})
		}
	}
}

func openInspect(dir string) error {
	a, err := archive.Open(dir, "b.tar")
	if err != nil {
		return err
	}
	defer a.Close()
	_, err = archive.Inspect(context.Background(), a, amd64)
	return err
}

// TestPartsBeside: a whole file wins over parts of the same name (someone
// joined them), and no file and no parts is not found.
func TestPartsBeside(t *testing.T) {
	data := write(t, archivetest.OCILayout, testImages(t))
	dir := t.TempDir()
	if _, err := archivetest.WriteParts(dir, "b.tar", data[:len(data)/2], 1000); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b.tar"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := openInspect(dir); err != nil {
		t.Errorf("whole file beside parts: %v", err)
	}
	if _, err := archive.Open(dir, "c.tar"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no file, no parts: err = %v, want not exist", err)
	}
}

// TestInspectDelta: an OCI layout may lack layers (a delta leaves out
// those of the bundle it was made since): Inspect lists them as absent for
// the import to find on the node, and Each is never asked for them.
func TestInspectDelta(t *testing.T) {
	imgs := testImages(t)
	base, err := imgs[0].Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	baseDigest, _ := base[0].Digest()
	data, err := archivetest.DropBlobs(write(t, archivetest.OCILayout, imgs), baseDigest.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{archivetest.Plain, archivetest.Zstd} {
		t.Run(c, func(t *testing.T) {
			cdata, err := archivetest.Compress(data, c)
			if err != nil {
				t.Fatal(err)
			}
			contents, err := inspectContents(t, cdata)
			if err != nil {
				t.Fatal(err)
			}
			if len(contents.Images) != 2 {
				t.Fatalf("%d images, want 2", len(contents.Images))
			}
			for _, img := range contents.Images {
				if len(img.Absent) != 1 || img.Absent[0].Digest.String() != baseDigest.String() {
					t.Errorf("%v: absent %v, want the base layer %s", img.Names, img.Absent, baseDigest)
				}
				if !slices.ContainsFunc(img.Blobs, func(d ocispec.Descriptor) bool { return d.Digest.String() == baseDigest.String() }) {
					t.Errorf("%v: blobs %v leave out the base layer the image needs", img.Names, img.Blobs)
				}
				if len(img.Layers) != 2 {
					t.Errorf("%v: %d layers to unpack, want 2", img.Names, len(img.Layers))
				}
			}
		})
	}
}
