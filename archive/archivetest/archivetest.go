// Package archivetest writes image archives in the formats users bring to
// nodes, for tests and benchmarks: docker save before and since Docker 25,
// go-containerregistry's tarball, and OCI image layouts, each optionally
// gzip- or zstd-compressed.
package archivetest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Image is an image and the references an archive records for it.
type Image struct {
	Names []string
	Image v1.Image
}

// Layer returns a layer holding one file of size bytes. Its content comes
// from seed, so that equal seeds give equal layers; compressible makes it
// text-like, as most of a real image is, rather than random.
func Layer(seed uint64, size int, compressible bool) (v1.Layer, error) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	data := make([]byte, size)
	if compressible {
		words := []string{"kube", "preloader", "image", "layer", "node", "pod", "\n", "containerd", "archive", " "}
		for i := 0; i < size; {
			i += copy(data[i:], words[rng.IntN(len(words))])
		}
	} else {
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data/%x", seed), Mode: 0o644, Size: int64(size), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// NewImage returns an image for platform ("linux/amd64") made of layers.
func NewImage(platform string, layers ...v1.Layer) (v1.Image, error) {
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Config.Cmd = []string{"/pause"}
	return mutate.ConfigFile(img, cf)
}

// Format is an archive layout.
type Format string

const (
	// DockerSave is `docker save` before Docker 25: manifest.json,
	// <config hex>.json and <id>/layer.tar, uncompressed, with a symlink
	// where a layer repeats.
	DockerSave Format = "docker-save"
	// Docker25 is `docker save` since Docker 25: an OCI layout with
	// uncompressed layers plus manifest.json; names are in
	// io.containerd.image.name, the tag alone in ref.name.
	Docker25 Format = "docker-25"
	// GGCRTarball is go-containerregistry's (crane's) tarball: manifest.json
	// with gzip-compressed layers.
	GGCRTarball Format = "ggcr-tarball"
	// OCILayout is an OCI image layout as go-containerregistry writes it,
	// the full reference in org.opencontainers.image.ref.name.
	OCILayout Format = "oci-layout"
)

// Formats are all formats, for table-driven tests.
var Formats = []Format{DockerSave, Docker25, GGCRTarball, OCILayout}

// Write writes imgs as an archive of format f.
func Write(w io.Writer, f Format, imgs []Image) error {
	switch f {
	case DockerSave:
		return writeDockerSave(w, imgs)
	case Docker25:
		return writeDocker25(w, imgs)
	case GGCRTarball:
		refs := make(map[name.Reference]v1.Image)
		for _, img := range imgs {
			for _, n := range img.Names {
				ref, err := name.ParseReference(n)
				if err != nil {
					return err
				}
				refs[ref] = img.Image
			}
		}
		return tarball.MultiRefWrite(refs, w)
	case OCILayout:
		return writeLayout(w, func(p layout.Path) error {
			for _, img := range imgs {
				for _, n := range img.Names {
					if err := p.AppendImage(img.Image, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": n})); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	return fmt.Errorf("unknown format %q", f)
}

// WriteIndex writes an OCI layout holding one multi-platform index named
// name.
func WriteIndex(w io.Writer, idx v1.ImageIndex, name string) error {
	return writeLayout(w, func(p layout.Path) error {
		return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"io.containerd.image.name": name}))
	})
}

// writeLayout fills a temporary OCI layout with fill and writes it to w as
// a tar.
func writeLayout(w io.Writer, fill func(layout.Path) error) error {
	dir, err := os.MkdirTemp("", "oci-layout")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := fill(p); err != nil {
		return err
	}
	return tarDir(w, dir)
}

// tarDir writes the files below dir as a tar stream, paths relative to dir.
func tarDir(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, Size: fi.Size(), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// tarWriter writes each path once.
type tarWriter struct {
	tw      *tar.Writer
	written map[string]bool
}

func newTarWriter(w io.Writer) *tarWriter {
	return &tarWriter{tw: tar.NewWriter(w), written: make(map[string]bool)}
}

func (t *tarWriter) file(p string, data []byte) error {
	return t.stream(p, int64(len(data)), func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
}

func (t *tarWriter) stream(p string, size int64, open func() (io.ReadCloser, error)) error {
	if t.written[p] {
		return nil
	}
	t.written[p] = true
	if err := t.tw.WriteHeader(&tar.Header{Name: p, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(t.tw, rc)
	return err
}

func (t *tarWriter) symlink(p, target string) error {
	return t.tw.WriteHeader(&tar.Header{Name: p, Linkname: target, Mode: 0o777, Typeflag: tar.TypeSymlink})
}

func uncompressedSize(l v1.Layer) (int64, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return io.Copy(io.Discard, rc)
}

// dockerManifestEntry is one image in the manifest.json of docker save,
// in both layouts.
type dockerManifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func writeDockerSave(w io.Writer, imgs []Image) error {
	t := newTarWriter(w)
	var manifest []dockerManifestEntry
	layerDir := make(map[v1.Hash]string) // diff ID to the directory that holds it
	for _, img := range imgs {
		cfgName, err := img.Image.ConfigName()
		if err != nil {
			return err
		}
		raw, err := img.Image.RawConfigFile()
		if err != nil {
			return err
		}
		e := dockerManifestEntry{Config: cfgName.Hex + ".json", RepoTags: img.Names}
		if err := t.file(e.Config, raw); err != nil {
			return err
		}
		layers, err := img.Image.Layers()
		if err != nil {
			return err
		}
		chain := sha256.New()
		for _, l := range layers {
			diffID, err := l.DiffID()
			if err != nil {
				return err
			}
			// Docker's per-image layer directories are v1 IDs that depend
			// on the chain; a layer shared with another image becomes a
			// symlink to the first copy.
			chain.Write([]byte(diffID.String()))
			dir := hex.EncodeToString(chain.Sum(nil))
			p := dir + "/layer.tar"
			if first, ok := layerDir[diffID]; ok {
				if first != dir && !t.written[p] {
					t.written[p] = true
					if err := t.symlink(p, "../"+first+"/layer.tar"); err != nil {
						return err
					}
				}
			} else {
				layerDir[diffID] = dir
				size, err := uncompressedSize(l)
				if err != nil {
					return err
				}
				if err := t.file(dir+"/VERSION", []byte("1.0")); err != nil {
					return err
				}
				if err := t.stream(p, size, l.Uncompressed); err != nil {
					return err
				}
			}
			e.Layers = append(e.Layers, p)
		}
		manifest = append(manifest, e)
	}
	data, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	if err := t.file("manifest.json", data); err != nil {
		return err
	}
	return t.tw.Close()
}

func writeDocker25(w io.Writer, imgs []Image) error {
	t := newTarWriter(w)
	var manifest []dockerManifestEntry
	index := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	for _, img := range imgs {
		cfgName, err := img.Image.ConfigName()
		if err != nil {
			return err
		}
		raw, err := img.Image.RawConfigFile()
		if err != nil {
			return err
		}
		e := dockerManifestEntry{Config: "blobs/sha256/" + cfgName.Hex, RepoTags: img.Names}
		if err := t.file(e.Config, raw); err != nil {
			return err
		}
		m := v1.Manifest{
			SchemaVersion: 2,
			MediaType:     types.OCIManifestSchema1,
			Config:        v1.Descriptor{MediaType: types.OCIConfigJSON, Digest: cfgName, Size: int64(len(raw))},
		}
		layers, err := img.Image.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			diffID, err := l.DiffID()
			if err != nil {
				return err
			}
			size, err := uncompressedSize(l)
			if err != nil {
				return err
			}
			p := "blobs/sha256/" + diffID.Hex
			if err := t.stream(p, size, l.Uncompressed); err != nil {
				return err
			}
			e.Layers = append(e.Layers, p)
			m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.OCIUncompressedLayer, Digest: diffID, Size: size})
		}
		mb, err := json.Marshal(m)
		if err != nil {
			return err
		}
		md, _, err := v1.SHA256(bytes.NewReader(mb))
		if err != nil {
			return err
		}
		if err := t.file("blobs/sha256/"+md.Hex, mb); err != nil {
			return err
		}
		for _, n := range img.Names {
			tag := n[strings.LastIndex(n, ":")+1:]
			index.Manifests = append(index.Manifests, v1.Descriptor{
				MediaType: types.OCIManifestSchema1, Digest: md, Size: int64(len(mb)),
				Annotations: map[string]string{"io.containerd.image.name": n, "org.opencontainers.image.ref.name": tag},
			})
		}
		manifest = append(manifest, e)
	}
	for _, f := range []struct {
		name string
		v    any
	}{{"index.json", index}, {"manifest.json", manifest}, {"oci-layout", map[string]string{"imageLayoutVersion": "1.0.0"}}} {
		data, err := json.Marshal(f.v)
		if err != nil {
			return err
		}
		if err := t.file(f.name, data); err != nil {
			return err
		}
	}
	return t.tw.Close()
}

// Compressions of the outer file.
const (
	Plain = "none"
	Gzip  = "gzip"
	Zstd  = "zstd"
)

// Compress returns data compressed with c.
func Compress(data []byte, c string) ([]byte, error) {
	var buf bytes.Buffer
	var w io.WriteCloser
	switch c {
	case Plain:
		return data, nil
	case Gzip:
		w = gzip.NewWriter(&buf)
	case Zstd:
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			return nil, err
		}
		w = zw
	default:
		return nil, fmt.Errorf("unknown compression %q", c)
	}
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Edit rewrites a tar stream: edit sees each entry's header and content and
// returns what to write instead (nil header: drop the entry).
func Edit(data []byte, edit func(hdr *tar.Header, content []byte) (*tar.Header, []byte)) ([]byte, error) {
	tr := tar.NewReader(bytes.NewReader(data))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		content, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		hdr, content = edit(hdr, content)
		if hdr == nil {
			continue
		}
		hdr.Size = int64(len(content))
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(content); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Prepend returns data with a regular file entry named p before the rest.
func Prepend(data []byte, p string, content []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// Written raw: tar.Writer itself does not refuse ".." or "/".
	if err := tw.WriteHeader(&tar.Header{Name: p, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(content); err != nil {
		return nil, err
	}
	if err := tw.Flush(); err != nil {
		return nil, err
	}
	return append(buf.Bytes(), data...), nil
}

// IsBlob reports whether a tar entry name is a blob or layer file.
func IsBlob(p string) bool {
	return strings.HasPrefix(p, "blobs/") || path.Base(p) == "layer.tar" || strings.HasSuffix(p, ".tar.gz")
}

// Entry is one entry of an OCI layout's index.json: an image or an index
// (exactly one of them), named as a bundle names it.
type Entry struct {
	Name  string
	Image v1.Image
	Index v1.ImageIndex
}

// WriteLayout writes an OCI layout of entries, each named in both
// io.containerd.image.name and org.opencontainers.image.ref.name, as
// `preloader bundle` does.
func WriteLayout(w io.Writer, entries ...Entry) error {
	return writeLayout(w, func(p layout.Path) error {
		for _, e := range entries {
			opt := layout.WithAnnotations(map[string]string{"io.containerd.image.name": e.Name, "org.opencontainers.image.ref.name": e.Name})
			var err error
			if e.Index != nil {
				err = p.AppendIndex(e.Index, opt)
			} else {
				err = p.AppendImage(e.Image, opt)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// DropBlobs returns the OCI layout data without the blobs of digests, as
// a delta bundle leaves out what the bundle it was made since holds.
func DropBlobs(data []byte, digests ...string) ([]byte, error) {
	drop := make(map[string]bool)
	for _, d := range digests {
		drop["blobs/"+strings.Replace(d, ":", "/", 1)] = true
	}
	return Edit(data, func(h *tar.Header, c []byte) (*tar.Header, []byte) {
		if drop[path.Clean(h.Name)] {
			return nil, nil
		}
		return h, c
	})
}

// WriteParts splits data byte-wise into parts of size bytes (the last one
// shorter), written as dir/file.part-001, … as `preloader bundle
// --max-part-size` does, and returns their paths.
func WriteParts(dir, file string, data []byte, size int) ([]string, error) {
	var paths []string
	for i := 0; len(data) > 0 || i == 0; i++ {
		n := min(size, len(data))
		p := filepath.Join(dir, fmt.Sprintf("%s.part-%03d", file, i+1))
		if err := os.WriteFile(p, data[:n], 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, p)
		data = data[n:]
	}
	return paths, nil
}

// Files reads a tar stream (an archive, uncompressed) into its entries'
// contents by name, for tests that look at what a writer wrote.
func Files(r io.Reader) (map[string][]byte, error) {
	files := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", hdr.Name, err)
		}
		files[hdr.Name] = b
	}
}
