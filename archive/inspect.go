package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Image is one image an archive holds for a platform.
type Image struct {
	// Names are the references the archive records for it, normalized the
	// way the kubelet asks for images (docker.io/library/app:1). An image
	// saved without a name has none.
	Names []string
	// Config is the digest of its config for the platform: the image ID
	// the CRI reports once it is present.
	Config digest.Digest
}

// Limits on what Inspect keeps in memory. Metadata (index, manifests,
// configs) is JSON and small; layers are only hashed as they stream by.
const (
	maxJSONBlob  = 20 << 20 // containerd's own limit for manifest.json
	maxJSONTotal = 256 << 20
)

// Inspect reads the whole archive once and checks it: every tar entry has a
// safe relative path, nothing is truncated, every blob has the digest it is
// stored under, and every image has a manifest and all of its layers for
// platform. It returns the archive's images, one per config; an error names
// the file and says what is wrong.
func Inspect(ctx context.Context, a *File, platform ocispec.Platform) ([]Image, error) {
	imgs, err := inspect(ctx, a, platform)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", a.Path, err)
	}
	return imgs, nil
}

func inspect(ctx context.Context, a *File, platform ocispec.Platform) ([]Image, error) {
	r, err := a.Tar()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	s := &scan{
		entries: make(map[string]entry),
		links:   make(map[string]string),
	}
	if err := s.read(r); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.platform = platforms.Normalize(platform)
	s.match = platforms.Only(s.platform)
	if _, ok := s.entries[ocispec.ImageLayoutFile]; ok {
		// Docker 25 writes both an OCI layout and manifest.json; like
		// containerd's importer, prefer the OCI layout.
		return s.ociImages(ctx)
	}
	if _, ok := s.entries["manifest.json"]; ok {
		return s.dockerImages()
	}
	return nil, errors.New("not an image archive: it has neither oci-layout nor manifest.json")
}

// entry is one regular file of the archive.
type entry struct {
	size       int64
	digest     digest.Digest // sha256 of its content
	compressed bool          // starts with gzip or zstd magic
	data       []byte        // the content, when it is JSON
}

type scan struct {
	entries   map[string]entry
	links     map[string]string // link name to target, both clean archive paths
	jsonBytes int64
	platform  ocispec.Platform
	match     platforms.MatchComparer
}

// read walks the tar stream to its end.
func (s *scan) read(r io.Reader) error {
	tr := tar.NewReader(r)
	buf := make([]byte, 1<<20)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if len(s.entries)+len(s.links) == 0 {
				return fmt.Errorf("not a tar archive: %w", err)
			}
			return notTar(err)
		}
		name, err := entryPath(hdr.Name)
		if err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old writers still use TypeRegA
			e, err := s.readEntry(tr, hdr, buf)
			if err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, notTar(err))
			}
			s.entries[name] = e
		case tar.TypeSymlink:
			// docker save links layers it stores twice: <id>/layer.tar ->
			// ../<other>/layer.tar.
			if path.IsAbs(hdr.Linkname) {
				return fmt.Errorf("entry %q: links to absolute path %q", hdr.Name, hdr.Linkname)
			}
			target := path.Join(path.Dir(name), hdr.Linkname)
			if target == ".." || strings.HasPrefix(target, "../") {
				return fmt.Errorf("entry %q: links to %q, outside the archive", hdr.Name, hdr.Linkname)
			}
			s.links[name] = target
		case tar.TypeLink:
			target, err := entryPath(hdr.Linkname)
			if err != nil {
				return fmt.Errorf("entry %q: hard link: %w", hdr.Name, err)
			}
			s.links[name] = target
		}
	}
	// Read what follows the end-of-archive blocks too, so that a
	// decompressor reaches its end and checks its checksum.
	if _, err := io.CopyBuffer(io.Discard, r, buf); err != nil {
		return notTar(err)
	}
	return nil
}

func (s *scan) readEntry(tr io.Reader, hdr *tar.Header, buf []byte) (entry, error) {
	h := sha256.New()
	e := entry{size: hdr.Size}
	head := buf[:min(int64(len(buf)), hdr.Size)]
	if _, err := io.ReadFull(tr, head); err != nil {
		return e, err
	}
	h.Write(head)
	e.compressed = bytes.HasPrefix(head, []byte{0x1f, 0x8b}) || bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd})
	trimmed := bytes.TrimLeft(head, " \t\r\n")
	isJSON := len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') && hdr.Size <= maxJSONBlob
	var data *bytes.Buffer
	if isJSON {
		if s.jsonBytes += hdr.Size; s.jsonBytes > maxJSONTotal {
			return e, fmt.Errorf("more than %d MiB of metadata", maxJSONTotal>>20)
		}
		data = bytes.NewBuffer(make([]byte, 0, hdr.Size))
		data.Write(head)
	}
	var w io.Writer = h
	if data != nil {
		w = io.MultiWriter(h, data)
	}
	if _, err := io.CopyBuffer(w, tr, buf); err != nil {
		return e, err
	}
	e.digest = digest.NewDigest(digest.SHA256, h)
	if data != nil {
		e.data = data.Bytes()
	}
	return e, nil
}

// entryPath cleans a tar entry name and refuses absolute paths and "..":
// an archive names files inside itself only.
func entryPath(name string) (string, error) {
	if path.IsAbs(name) || strings.HasPrefix(name, `\`) {
		return "", fmt.Errorf("entry %q: absolute path", name)
	}
	if slices.Contains(strings.FieldsFunc(name, func(r rune) bool { return r == '/' || r == '\\' }), "..") {
		return "", fmt.Errorf("entry %q: path with ..", name)
	}
	return path.Clean(name), nil
}

// notTar turns the tar reader's errors into what they mean for a user.
func notTar(err error) error {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("truncated: %w", err)
	case errors.Is(err, tar.ErrHeader):
		return fmt.Errorf("not a tar archive: %w", err)
	}
	return err
}

// entry returns the regular file at p, following links.
func (s *scan) entry(p string) (entry, bool) {
	for range 16 {
		if e, ok := s.entries[p]; ok {
			return e, true
		}
		t, ok := s.links[p]
		if !ok {
			break
		}
		p = t
	}
	return entry{}, false
}

// ociImages reads an OCI image layout: oci-layout, index.json, blobs/.
func (s *scan) ociImages(ctx context.Context) ([]Image, error) {
	var layout ocispec.ImageLayout
	if err := s.json(ocispec.ImageLayoutFile, &layout); err != nil {
		return nil, err
	}
	if layout.Version != ocispec.ImageLayoutVersion {
		return nil, fmt.Errorf("unsupported OCI layout version %q", layout.Version)
	}
	if err := s.checkBlobDigests(); err != nil {
		return nil, err
	}
	var index ocispec.Index
	if err := s.json(ocispec.ImageIndexFile, &index); err != nil {
		return nil, err
	}
	var out []Image
	for _, desc := range index.Manifests {
		if _, ok := desc.Annotations[images.AnnotationManifestSubject]; ok {
			continue // a referrer (signature, SBOM), not an image
		}
		names, err := ociNames(desc.Annotations)
		if err != nil {
			return nil, err
		}
		cfg, err := s.resolve(ctx, desc)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", describe(names, desc.Digest), err)
		}
		out = addImage(out, cfg, names)
	}
	if len(out) == 0 {
		return nil, errors.New("index.json lists no images")
	}
	return out, nil
}

// checkBlobDigests checks that every blob's content has the digest it is
// stored under.
func (s *scan) checkBlobDigests() error {
	for p, e := range s.entries {
		rest, ok := strings.CutPrefix(p, "blobs/")
		if !ok {
			continue
		}
		alg, hex, ok := strings.Cut(rest, "/")
		if !ok || alg != string(digest.SHA256) {
			continue // other algorithms are not hashed; the runtime checks them
		}
		if want := digest.NewDigestFromEncoded(digest.SHA256, hex); want != e.digest {
			return fmt.Errorf("digest mismatch: %s has content with digest %s", p, e.digest)
		}
	}
	return nil
}

// resolve finds desc's manifest for platform, checks that its config and
// layers are in the archive, and returns the config digest.
func (s *scan) resolve(ctx context.Context, desc ocispec.Descriptor) (digest.Digest, error) {
	p := provider{s}
	m, err := images.Manifest(ctx, p, desc, s.match)
	if err != nil {
		if errdefs.IsNotFound(err) && strings.Contains(err.Error(), "no match for platform") {
			return "", fmt.Errorf("no manifest for platform %s (the archive has %s)", platforms.Format(s.platform), s.platforms(ctx, desc))
		}
		return "", err
	}
	// images.Manifest does not check the platform of a top-level manifest.
	if images.IsManifestType(desc.MediaType) {
		cp, err := images.ConfigPlatform(ctx, p, m.Config)
		if err != nil {
			return "", fmt.Errorf("config %s: %w", m.Config.Digest, err)
		}
		if cp.OS != "" && !s.match.Match(cp) {
			return "", fmt.Errorf("no manifest for platform %s (the archive has %s)", platforms.Format(s.platform), platforms.Format(cp))
		}
	}
	for _, l := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		e, ok := s.entry(blobPath(l.Digest))
		if !ok {
			return "", fmt.Errorf("blob %s is missing from the archive (truncated or incomplete)", l.Digest)
		}
		if e.size != l.Size {
			return "", fmt.Errorf("blob %s has %d bytes, the manifest says %d", l.Digest, e.size, l.Size)
		}
	}
	return m.Config.Digest, nil
}

// platforms lists the platforms an index offers, for messages.
func (s *scan) platforms(ctx context.Context, desc ocispec.Descriptor) string {
	ps, err := images.Platforms(ctx, provider{s}, desc)
	if err != nil || len(ps) == 0 {
		return "none"
	}
	var names []string
	for _, p := range ps {
		names = append(names, platforms.Format(p))
	}
	return strings.Join(names, ", ")
}

// dockerImages reads `docker save` output: manifest.json, configs, layers.
func (s *scan) dockerImages() ([]Image, error) {
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := s.json("manifest.json", &manifest); err != nil {
		return nil, err
	}
	var out []Image
	for _, m := range manifest {
		var names []string
		for _, tag := range m.RepoTags {
			n, err := normalize(tag)
			if err != nil {
				return nil, fmt.Errorf("manifest.json: repo tag %q: %w", tag, err)
			}
			names = append(names, n)
		}
		cfg, err := s.dockerImage(m.Config, m.Layers)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", describe(names, digest.Digest(m.Config)), err)
		}
		out = addImage(out, cfg, names)
	}
	if len(out) == 0 {
		return nil, errors.New("manifest.json lists no images")
	}
	return out, nil
}

func (s *scan) dockerImage(configPath string, layers []string) (digest.Digest, error) {
	ce, ok := s.entry(path.Clean(configPath))
	if !ok || ce.data == nil {
		return "", fmt.Errorf("config %s is missing from the archive (truncated or incomplete)", configPath)
	}
	// The config is stored under its digest: <hex>.json, or
	// blobs/sha256/<hex> since Docker 25.
	hex := strings.TrimSuffix(path.Base(configPath), ".json")
	if want := digest.NewDigestFromEncoded(digest.SHA256, hex); want.Validate() == nil && want != ce.digest {
		return "", fmt.Errorf("digest mismatch: %s has content with digest %s", configPath, ce.digest)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(ce.data, &cfg); err != nil {
		return "", fmt.Errorf("config %s: %w", configPath, err)
	}
	if p := platforms.Normalize(cfg.Platform); p.OS != "" && !s.match.Match(p) {
		return "", fmt.Errorf("no image for platform %s (the archive has %s)", platforms.Format(s.platform), platforms.Format(p))
	}
	if len(layers) != len(cfg.RootFS.DiffIDs) {
		return "", fmt.Errorf("manifest.json lists %d layers, config %s has %d", len(layers), configPath, len(cfg.RootFS.DiffIDs))
	}
	for i, l := range layers {
		le, ok := s.entry(path.Clean(l))
		if !ok {
			return "", fmt.Errorf("layer %s is missing from the archive (truncated or incomplete)", l)
		}
		// docker save stores layers uncompressed: their digest is the
		// config's diff ID. Compressed ones are checked on unpack.
		if !le.compressed && le.digest != cfg.RootFS.DiffIDs[i] {
			return "", fmt.Errorf("digest mismatch: layer %s has digest %s, the config says %s", l, le.digest, cfg.RootFS.DiffIDs[i])
		}
	}
	return ce.digest, nil
}

func (s *scan) json(p string, v any) error {
	e, ok := s.entries[p]
	if !ok || e.data == nil {
		return fmt.Errorf("%s is missing or not JSON", p)
	}
	if err := json.Unmarshal(e.data, v); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// addImage adds names to the image with config cfg, or a new image.
func addImage(imgs []Image, cfg digest.Digest, names []string) []Image {
	for i := range imgs {
		if imgs[i].Config == cfg {
			for _, n := range names {
				if !slices.Contains(imgs[i].Names, n) {
					imgs[i].Names = append(imgs[i].Names, n)
				}
			}
			return imgs
		}
	}
	return append(imgs, Image{Names: names, Config: cfg})
}

// ociNames reads an index.json entry's names: containerd's and Docker's
// io.containerd.image.name, else org.opencontainers.image.ref.name when it
// is a full reference. A bare tag there ("1.0", as buildkit writes it)
// names nothing on its own.
func ociNames(annotations map[string]string) ([]string, error) {
	if n := annotations[images.AnnotationImageName]; n != "" {
		name, err := normalize(n)
		if err != nil {
			return nil, fmt.Errorf("index.json: %s %q: %w", images.AnnotationImageName, n, err)
		}
		return []string{name}, nil
	}
	n := annotations[ocispec.AnnotationRefName]
	ref, err := reference.ParseNormalizedNamed(n)
	if err != nil {
		return nil, nil
	}
	_, tagged := ref.(reference.Tagged)
	_, digested := ref.(reference.Digested)
	if !tagged && !digested {
		return nil, nil
	}
	return []string{ref.String()}, nil
}

// normalize is the reference as the kubelet passes it to the runtime.
func normalize(s string) (string, error) {
	ref, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return "", err
	}
	return reference.TagNameOnly(ref).String(), nil
}

func describe(names []string, d digest.Digest) string {
	if len(names) > 0 {
		return names[0]
	}
	return string(d)
}

func blobPath(d digest.Digest) string {
	return path.Join("blobs", d.Algorithm().String(), d.Encoded())
}

// provider serves the archive's JSON blobs to containerd's image functions,
// so that platforms resolve exactly as containerd resolves them.
type provider struct{ s *scan }

func (p provider) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	e, ok := p.s.entry(blobPath(desc.Digest))
	if !ok {
		return nil, fmt.Errorf("blob %s is missing from the archive (truncated or incomplete): %w", desc.Digest, errdefs.ErrNotFound)
	}
	if e.data == nil {
		return nil, fmt.Errorf("blob %s is not JSON", desc.Digest)
	}
	return readerAt{bytes.NewReader(e.data)}, nil
}

type readerAt struct{ *bytes.Reader }

func (readerAt) Close() error { return nil }
