package archive_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/artifact"
)

var amd64 = ocispec.Platform{OS: "linux", Architecture: "amd64"}

// testImages are two images that share a base layer, as most images do.
func testImages(t *testing.T) []archivetest.Image {
	t.Helper()
	base := layer(t, 1)
	app := image(t, "linux/amd64", base, layer(t, 2))
	tool := image(t, "linux/amd64", base, layer(t, 3))
	return []archivetest.Image{
		{Names: []string{"registry.example/team/app:1.0", "registry.example/team/app:latest"}, Image: app},
		{Names: []string{"registry.example/team/tool:2.0"}, Image: tool},
	}
}

func layer(t *testing.T, seed uint64) v1.Layer {
	t.Helper()
	l, err := archivetest.Layer(seed, 4096, true)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func image(t *testing.T, platform string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := archivetest.NewImage(platform, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func write(t *testing.T, f archivetest.Format, imgs []archivetest.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := archivetest.Write(&buf, f, imgs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func inspect(t *testing.T, data []byte) ([]archive.Image, error) {
	t.Helper()
	c, err := inspectContents(t, data)
	if err != nil {
		return nil, err
	}
	return c.Images, nil
}

// inspectContents inspects data as an archive file, open until the test
// ends so that its contents can be read.
func inspectContents(t *testing.T, data []byte) (*archive.Contents, error) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.tar"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := archive.Open(dir, "a.tar")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { a.Close() })
	return archive.Inspect(context.Background(), a, amd64)
}

func configDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

func TestInspectFormats(t *testing.T) {
	imgs := testImages(t)
	for _, f := range archivetest.Formats {
		plain := write(t, f, imgs)
		for _, c := range []string{archivetest.Plain, archivetest.Gzip, archivetest.Zstd} {
			t.Run(string(f)+"/"+c, func(t *testing.T) {
				data, err := archivetest.Compress(plain, c)
				if err != nil {
					t.Fatal(err)
				}
				got, err := inspect(t, data)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(imgs) {
					t.Fatalf("got %d images, want %d: %+v", len(got), len(imgs), got)
				}
				// go-containerregistry writes its tarball from a map: the
				// order of images and of their tags is not the fixture's,
				// and no reader relies on it. Images are matched by config.
				names := map[string][]string{}
				for _, g := range got {
					names[string(g.Config)] = slices.Sorted(slices.Values(g.Names))
				}
				for i, want := range imgs {
					d := configDigest(t, want.Image)
					n, ok := names[d]
					if !ok {
						t.Errorf("image %d: config %s not in the archive's %+v", i, d, got)
						continue
					}
					if w := slices.Sorted(slices.Values(want.Names)); !slices.Equal(n, w) {
						t.Errorf("image %d: names %v, want %v", i, n, w)
					}
				}
			})
		}
	}
}

func TestEach(t *testing.T) {
	imgs := testImages(t)
	for _, f := range archivetest.Formats {
		plain := write(t, f, imgs)
		for _, c := range []string{archivetest.Plain, archivetest.Zstd} {
			t.Run(string(f)+"/"+c, func(t *testing.T) {
				data, err := archivetest.Compress(plain, c)
				if err != nil {
					t.Fatal(err)
				}
				contents, err := inspectContents(t, data)
				if err != nil {
					t.Fatal(err)
				}
				want := map[digest.Digest]bool{}
				var descs []ocispec.Descriptor
				for _, img := range contents.Images {
					if img.Blobs[0].Digest != img.Target.Digest {
						t.Errorf("%v: blobs start with %s, want the target %s", img.Names, img.Blobs[0].Digest, img.Target.Digest)
					}
					// Two images with two layers each over a shared base:
					// target, config and the layers.
					if len(img.Blobs) != 4 {
						t.Errorf("%v: %d blobs, want 4", img.Names, len(img.Blobs))
					}
					for _, b := range img.Blobs {
						want[b.Digest] = true
					}
					descs = append(descs, img.Blobs...)
				}
				var mu sync.Mutex
				got := map[digest.Digest]int{}
				err = contents.Each(context.Background(), descs, func(d ocispec.Descriptor, r io.Reader) error {
					data, err := io.ReadAll(r)
					if err != nil {
						return err
					}
					if digest.FromBytes(data) != d.Digest || int64(len(data)) != d.Size {
						t.Errorf("blob %s: got %d bytes with digest %s", d.Digest, len(data), digest.FromBytes(data))
					}
					mu.Lock()
					got[d.Digest]++
					mu.Unlock()
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				for d := range want {
					if got[d] != 1 {
						t.Errorf("blob %s delivered %d times, want once", d, got[d])
					}
				}
			})
		}
	}
}

func TestInspectCompressionByContent(t *testing.T) {
	plain := write(t, archivetest.OCILayout, testImages(t))
	for _, c := range []string{archivetest.Plain, archivetest.Gzip, archivetest.Zstd} {
		data, err := archivetest.Compress(plain, c)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		// A misleading name: the content decides.
		if err := os.WriteFile(filepath.Join(dir, "images.tar.gz"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		a, err := archive.Open(dir, "images.tar.gz")
		if err != nil {
			t.Fatal(err)
		}
		if a.Compression != c {
			t.Errorf("compression %q, want %q", a.Compression, c)
		}
		a.Close()
	}
}

func TestInspectNames(t *testing.T) {
	img := image(t, "linux/amd64", layer(t, 1))
	tests := []struct {
		name  string
		f     archivetest.Format
		names []string
		want  []string
	}{
		{"docker short name", archivetest.DockerSave, []string{"app:1"}, []string{"docker.io/library/app:1"}},
		{"docker no tag", archivetest.DockerSave, nil, nil},
		{"oci full ref.name", archivetest.OCILayout, []string{"registry.example/app:1"}, []string{"registry.example/app:1"}},
		{"oci bare tag in ref.name names nothing", archivetest.OCILayout, []string{"1.0"}, nil},
		{"docker 25 image.name", archivetest.Docker25, []string{"registry.example/app:1"}, []string{"registry.example/app:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			imgs := []archivetest.Image{{Names: tt.names, Image: img}}
			if tt.names == nil && tt.f == archivetest.DockerSave {
				imgs[0].Names = nil
			}
			got, err := inspect(t, write(t, tt.f, imgs))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || !slices.Equal(got[0].Names, tt.want) {
				t.Errorf("got %+v, want one image named %v", got, tt.want)
			}
		})
	}
}

func TestInspectPlatforms(t *testing.T) {
	arm := image(t, "linux/arm64", layer(t, 1))
	amd := image(t, "linux/amd64", layer(t, 2))

	t.Run("index picks the node's platform", func(t *testing.T) {
		idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
			mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
			mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		)
		var buf bytes.Buffer
		if err := archivetest.WriteIndex(&buf, idx, "registry.example/multi:1"); err != nil {
			t.Fatal(err)
		}
		got, err := inspect(t, buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || string(got[0].Config) != configDigest(t, amd) {
			t.Errorf("got %+v, want the amd64 config %s", got, configDigest(t, amd))
		}
	})
	// An image without the node's platform is reported by name, beside
	// the images the archive has for it.
	for _, f := range archivetest.Formats {
		t.Run("only arm64, "+string(f), func(t *testing.T) {
			c, err := inspectContents(t, write(t, f, []archivetest.Image{
				{Names: []string{"registry.example/arm:1"}, Image: arm},
				{Names: []string{"registry.example/amd:1"}, Image: amd},
			}))
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Images) != 1 || !slices.Equal(c.Images[0].Names, []string{"registry.example/amd:1"}) {
				t.Errorf("images %+v, want registry.example/amd:1 alone", c.Images)
			}
			if len(c.Unavailable) != 1 {
				t.Fatalf("unavailable %v, want the arm64 image", c.Unavailable)
			}
			msg := c.Unavailable[0].Error()
			for _, want := range []string{"registry.example/arm:1", "platform linux/amd64", "the archive has linux/arm64"} {
				if !strings.Contains(msg, want) {
					t.Errorf("%q does not say %q", msg, want)
				}
			}
		})
	}
	t.Run("index without the node's platform, beside one with it", func(t *testing.T) {
		s390x := image(t, "linux/s390x", layer(t, 3))
		armOnly := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
			mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
			mutate.IndexAddendum{Add: s390x, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}},
		)
		both := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
			mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
			mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		)
		var buf bytes.Buffer
		if err := archivetest.WriteLayout(&buf,
			archivetest.Entry{Name: "registry.example/arm-only:1", Index: armOnly},
			archivetest.Entry{Name: "registry.example/both:1", Index: both},
		); err != nil {
			t.Fatal(err)
		}
		c, err := inspectContents(t, buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Images) != 1 || string(c.Images[0].Config) != configDigest(t, amd) {
			t.Errorf("images %+v, want both:1 with the amd64 config", c.Images)
		}
		if len(c.Unavailable) != 1 || !strings.Contains(c.Unavailable[0].Error(), "registry.example/arm-only:1: no manifest for platform linux/amd64 (the archive has linux/arm64, linux/s390x)") {
			t.Errorf("unavailable %v, want arm-only:1 with the platforms it has", c.Unavailable)
		}
	})
}

func TestInspectBad(t *testing.T) {
	imgs := testImages(t)
	oci := write(t, archivetest.OCILayout, imgs)
	docker := write(t, archivetest.DockerSave, imgs)
	dropLayers := func(data []byte) []byte {
		out, err := archivetest.Edit(data, func(h *tar.Header, c []byte) (*tar.Header, []byte) {
			if archivetest.IsBlob(h.Name) && len(c) > 1000 {
				return nil, nil
			}
			return h, c
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	dropConfigs := func(data []byte) []byte {
		var configs []string
		for _, img := range imgs {
			configs = append(configs, configDigest(t, img.Image))
		}
		out, err := archivetest.DropBlobs(data, configs...)
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
	gz, err := archivetest.Compress(oci, archivetest.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"truncated tar", oci[:len(oci)/2], "truncated"},
		{"truncated gzip", gz[:len(gz)-100], "truncated"},
		{"docker layers missing", dropLayers(docker), "missing from the archive"},
		{"oci config missing", dropConfigs(oci), "missing from the archive"},
		{"entry with ..", prepend(oci, "../../etc/cron.d/x"), `"../../etc/cron.d/x": path with ..`},
		{"entry with .. inside", prepend(docker, "blobs/../../x"), "path with .."},
		{"absolute entry", prepend(oci, "/etc/passwd"), "absolute path"},
		{"not an archive", []byte("images:\n  - image: nginx\n"), "not a tar archive"},
		{"empty file", nil, "not an image archive"},
		{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0, 1, 2}, "compressed with xz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := inspect(t, tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "a.tar") {
				t.Errorf("err = %v, want it to name the file", err)
			}
		})
	}
}

// TestEachCorrupt: a layer Inspect passes over is checked as Each reads
// it, and a corrupt one never reaches its end cleanly.
func TestEachCorrupt(t *testing.T) {
	imgs := testImages(t)
	flipLayers := func(data []byte) []byte {
		out, err := archivetest.Edit(data, func(h *tar.Header, c []byte) (*tar.Header, []byte) {
			if archivetest.IsBlob(h.Name) && len(c) > 1000 {
				c = slices.Clone(c)
				c[len(c)/2] ^= 0xff
			}
			return h, c
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, f := range []archivetest.Format{archivetest.OCILayout, archivetest.DockerSave} {
		for _, c := range []string{archivetest.Plain, archivetest.Gzip} {
			t.Run(string(f)+"/"+c, func(t *testing.T) {
				data, err := archivetest.Compress(flipLayers(write(t, f, imgs)), c)
				if err != nil {
					t.Fatal(err)
				}
				contents, err := inspectContents(t, data)
				if err != nil {
					t.Fatal(err)
				}
				var descs []ocispec.Descriptor
				for _, img := range contents.Images {
					descs = append(descs, img.Blobs...)
				}
				err = contents.Each(context.Background(), descs, func(d ocispec.Descriptor, r io.Reader) error {
					_, err := io.Copy(io.Discard, r)
					return err
				})
				if !errors.Is(err, archive.ErrCorrupt) || !strings.Contains(err.Error(), "digest mismatch") {
					t.Fatalf("err = %v, want a digest mismatch", err)
				}
			})
		}
	}
}

func TestInspectSymlinkOutside(t *testing.T) {
	// docker save links a layer that two images hold at different
	// positions; a hostile archive could point such a link anywhere.
	shared := layer(t, 1)
	imgs := []archivetest.Image{
		{Names: []string{"registry.example/a:1"}, Image: image(t, "linux/amd64", shared)},
		{Names: []string{"registry.example/b:1"}, Image: image(t, "linux/amd64", layer(t, 2), shared)},
	}
	data := write(t, archivetest.DockerSave, imgs)
	if _, err := inspect(t, data); err != nil {
		t.Fatalf("with a link inside the archive: %v", err)
	}
	links := 0
	data, err := archivetest.Edit(data, func(h *tar.Header, c []byte) (*tar.Header, []byte) {
		if h.Typeflag == tar.TypeSymlink {
			h.Linkname = "../../../etc/shadow"
			links++
		}
		return h, c
	})
	if err != nil {
		t.Fatal(err)
	}
	if links == 0 {
		t.Fatal("the archive has no symlink to point elsewhere")
	}
	if _, err := inspect(t, data); err == nil || !strings.Contains(err.Error(), "outside the archive") {
		t.Errorf("err = %v, want a link outside the archive", err)
	}
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside.tar")
	if err := os.WriteFile(outside, write(t, archivetest.OCILayout, testImages(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "escape.tar")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, want string
		notExist   bool
	}{
		{"escape.tar", "outside archiveDir", false},
		{outside, "outside archiveDir", false},
		{"missing.tar", "missing.tar", true},
		{"sub", "not a regular file", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := archive.Open(dir, tt.name)
			if err == nil {
				a.Close()
				t.Fatal("opened; want an error")
			}
			if !strings.Contains(err.Error(), tt.want) || errors.Is(err, os.ErrNotExist) != tt.notExist {
				t.Errorf("err = %v, want %q (not exist: %v)", err, tt.want, tt.notExist)
			}
		})
	}
}

// TestInspectArtifact: an OCI layout of an artifact (a config that is not
// an image config) fails as one, not as layers that do not match diff IDs.
func TestInspectArtifact(t *testing.T) {
	for _, mt := range []types.MediaType{"application/vnd.oci.empty.v1+json", "application/vnd.example.model.config.v1+json"} {
		t.Run(string(mt), func(t *testing.T) {
			img := mutate.ConfigMediaType(mutate.MediaType(image(t, "linux/amd64", layer(t, 1)), types.OCIManifestSchema1), mt)
			_, err := inspect(t, write(t, archivetest.OCILayout, []archivetest.Image{{Names: []string{"registry.example/model:1"}, Image: img}}))
			var art *artifact.Error
			if !errors.As(err, &art) || art.Shape.ConfigMediaType != string(mt) {
				t.Fatalf("err = %v, want an artifact.Error for config %s", err, mt)
			}
			if want := "registry.example/model:1"; !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "layers, config") {
				t.Errorf("err = %v, want it to name %s and not count layers against diff IDs", err, want)
			}
		})
	}
}
