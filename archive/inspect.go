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
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Contents is what an archive holds for a platform, and where.
type Contents struct {
	Images []Image
	// Unavailable are the images it holds for other platforms only.
	Unavailable []*PlatformError
	// Signatures are the cosign signature manifests the archive carries
	// (index.json entries tagged sha256-<hex>.sig), by the digest they
	// sign; they, and cosign's .att and .sbom entries, are not Images.
	Signatures map[digest.Digest][]Signed

	file  *File
	blobs map[digest.Digest]blob
}

// Image is one image an archive holds for a platform.
type Image struct {
	// Names are the references the archive records for it, normalized the
	// way the kubelet asks for images (docker.io/library/app:1). An image
	// saved without a name has none.
	Names []string
	// Config is the digest of its config for the platform: the image ID
	// the CRI reports once it is present.
	Config digest.Digest
	// Target is what an image record points to: the entry of index.json,
	// or for docker save the manifest that containerd's own importer
	// would write for it.
	Target ocispec.Descriptor
	// Blobs are Target and every blob below it for the platform.
	Blobs []ocispec.Descriptor
	// Absent are the layers among Blobs that the archive does not hold: a
	// delta leaves out the layers of the bundle it was made since, which
	// the node must have already. Only an OCI layout's layers may be
	// absent; everything else an image needs must be in the archive.
	Absent []ocispec.Descriptor
	// Layers are its layers for the platform, bottom first, each with the
	// diff ID its config lists: what an unpack applies, known before any
	// blob is written so that a layer can be applied as soon as it is in.
	Layers []Layer
}

// Layer is a layer blob and the digest of its uncompressed content.
type Layer struct {
	Blob   ocispec.Descriptor
	DiffID digest.Digest
}

// blob is where a blob's content is.
type blob struct {
	path   string // the tar entry, links resolved
	offset int64  // of the entry's content in the tar stream
	data   []byte // a manifest Inspect built, not in the archive
	verify bool   // Inspect did not hash it: Each checks it as it reads
}

// Limits on what Inspect keeps in memory. Metadata (index, manifests,
// configs) is JSON and small; layers are passed over.
const (
	maxJSONBlob  = 20 << 20 // containerd's own limit for manifest.json
	maxJSONTotal = 256 << 20
)

// blockSize is a tar block: entries are padded to it, and two zero blocks
// end the archive.
const blockSize = 512

// headSize is how much of an entry Inspect reads to tell JSON and
// compressed content from the rest.
const headSize = 512

// PlatformError is an image of the archive that has no manifest for the
// platform asked for.
type PlatformError struct {
	Names    []string
	Digest   digest.Digest // of its index.json entry, or its config
	Platform string        // the one asked for
	Has      string        // the platforms the archive has for it
}

func (e *PlatformError) Error() string {
	return fmt.Sprintf("image %s: no manifest for platform %s (the archive has %s)", describe(e.Names, e.Digest), e.Platform, e.Has)
}

// ErrCorrupt is what Each reports for a blob whose content does not have
// the digest the archive stores it under or its config lists.
var ErrCorrupt = errors.New("digest mismatch")

// Inspect reads the archive's structure and checks it: every tar entry has
// a safe relative path, nothing is truncated, the metadata has the digests
// it is stored under, and every image has a manifest and all of its layers
// for platform. Layers whose digest their name or the config gives are
// passed over (a plain tar's are not even read) and checked by Each as it
// reads them for the import, so that the archive is read through once, not
// twice; the import writes nothing visible before all are checked. It
// returns the archive's images, one per config; an error names the file
// and says what is wrong.
func Inspect(ctx context.Context, a *File, platform ocispec.Platform) (*Contents, error) {
	c, err := inspect(ctx, a, platform)
	if err != nil {
		if a.parts != nil && errors.Is(err, io.ErrUnexpectedEOF) {
			// Nothing tells a missing last part from a truncated one:
			// name both.
			missing, last := a.parts.next()
			err = fmt.Errorf("%w: the parts end before the archive does: part %s is missing, or %s is incomplete (%v)", ErrIncomplete, missing, last, err)
		}
		return nil, fmt.Errorf("archive %s: %w", a.Path, err)
	}
	return c, nil
}

func inspect(ctx context.Context, a *File, platform ocispec.Platform) (*Contents, error) {
	r, err := a.Tar()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var tarStream io.Reader = r
	if a.Compression == Plain {
		// The file itself, which the tar reader can seek through.
		tarStream = a.f
	}
	s := &scan{
		entries:  make(map[string]entry),
		links:    make(map[string]string),
		contents: &Contents{file: a, blobs: make(map[digest.Digest]blob)},
		platform: platforms.Normalize(platform),
		needEnd:  a.parts != nil,
	}
	s.match = platforms.Only(s.platform)
	if err := s.read(tarStream); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch {
	case s.has(ocispec.ImageLayoutFile):
		// Docker 25 writes both an OCI layout and manifest.json; like
		// containerd's importer, prefer the OCI layout.
		err = s.ociImages(ctx)
	case s.has("manifest.json"):
		err = s.dockerImages()
	default:
		err = errors.New("not an image archive: it has neither oci-layout nor manifest.json")
	}
	if err != nil {
		return nil, err
	}
	return s.contents, nil
}

// entry is one regular file of the archive.
type entry struct {
	offset     int64
	size       int64
	digest     digest.Digest // sha256 of its content, unless skipped
	compressed bool          // starts with gzip or zstd magic
	data       []byte        // the content, when it is JSON
	skipped    bool          // not hashed: a layer whose digest is known otherwise
}

type scan struct {
	entries   map[string]entry
	links     map[string]string // link name to target, both clean archive paths
	jsonBytes int64
	contents  *Contents
	platform  ocispec.Platform
	match     platforms.MatchComparer
	// needEnd: the tar stream must end with its end-of-archive blocks.
	// A split archive's parts can end exactly where an entry does, which
	// the tar reader takes for the end of the archive.
	needEnd bool
}

// counter counts the bytes read through it: the offsets of entries.
type counter struct {
	r io.Reader
	n int64
}

func (c *counter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// seekCounter is a counter over a plain file, which tar.Reader seeks
// through past the content it is not asked to read.
type seekCounter struct {
	counter
	s io.Seeker
}

func (c *seekCounter) Seek(offset int64, whence int) (int64, error) {
	n, err := c.s.Seek(offset, whence)
	if err == nil {
		c.n = n
	}
	return n, err
}

// read walks the tar stream to its end.
func (s *scan) read(r io.Reader) error {
	cr := &counter{r: r}
	var tr *tar.Reader
	if sk, ok := r.(io.Seeker); ok {
		// Plain tar starts at offset 0: the file offset is the count.
		sc := &seekCounter{counter: counter{r: r}, s: sk}
		cr, tr = &sc.counter, tar.NewReader(sc)
	} else {
		tr = tar.NewReader(cr)
	}
	buf := make([]byte, 1<<20)
	var lastEnd int64 // where the last entry's content and padding end
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			if s.needEnd && cr.n-lastEnd < 2*blockSize {
				return fmt.Errorf("truncated: no end-of-archive blocks after the last entry: %w", io.ErrUnexpectedEOF)
			}
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
		lastEnd = cr.n
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old writers still use TypeRegA
			// tar.Reader reads exactly the header blocks: what it has
			// read so far ends where the content starts.
			offset := cr.n
			lastEnd = offset + (hdr.Size+blockSize-1)/blockSize*blockSize
			e, err := s.readEntry(tr, name, hdr, buf)
			if err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, notTar(err))
			}
			e.offset = offset
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

// readEntry reads an entry's head and, unless it is a layer whose digest
// is known without hashing it (below), all of it, hashing it and keeping
// it if it is JSON. The rest of a skipped entry is left to the tar reader
// to pass over.
func (s *scan) readEntry(tr io.Reader, name string, hdr *tar.Header, buf []byte) (entry, error) {
	h := sha256.New()
	e := entry{size: hdr.Size}
	head := buf[:min(headSize, hdr.Size)]
	if _, err := io.ReadFull(tr, head); err != nil {
		return e, err
	}
	h.Write(head)
	e.compressed = bytes.HasPrefix(head, []byte{0x1f, 0x8b}) || bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd})
	trimmed := bytes.TrimLeft(head, " \t\r\n")
	isJSON := (len(trimmed) == 0 || trimmed[0] == '{' || trimmed[0] == '[') && hdr.Size <= maxJSONBlob
	// A layer's digest is its name in an OCI layout, or for an
	// uncompressed docker save layer the diff ID its config lists: Each
	// checks it against that. A compressed layer outside blobs/ has no
	// digest but its hash.
	if !isJSON && (!e.compressed || namedByDigest(name)) {
		e.skipped = true
		return e, nil
	}
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

// namedByDigest tells whether p is blobs/sha256/<hex>: its digest.
func namedByDigest(p string) bool {
	hex, ok := strings.CutPrefix(p, "blobs/sha256/")
	return ok && digest.NewDigestFromEncoded(digest.SHA256, hex).Validate() == nil
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

func (s *scan) has(p string) bool {
	_, ok := s.entries[p]
	return ok
}

// entry returns the regular file at p, following links, and its path.
func (s *scan) entry(p string) (string, entry, bool) {
	for range 16 {
		if e, ok := s.entries[p]; ok {
			return p, e, true
		}
		t, ok := s.links[p]
		if !ok {
			break
		}
		p = t
	}
	return "", entry{}, false
}

// addBlob records where the blob desc is: in entry p, which must hold
// desc.Size bytes.
func (s *scan) addBlob(desc ocispec.Descriptor, p string) error {
	real, e, ok := s.entry(p)
	if !ok {
		return fmt.Errorf("blob %s (%s) is missing from the archive (truncated or incomplete)", p, desc.Digest)
	}
	if e.size != desc.Size {
		return fmt.Errorf("blob %s has %d bytes, the manifest says %d", p, e.size, desc.Size)
	}
	s.contents.blobs[desc.Digest] = blob{path: real, offset: e.offset, verify: e.skipped}
	return nil
}

func (s *scan) json(p string, v any) error {
	_, e, ok := s.entry(p)
	if !ok || e.data == nil {
		return fmt.Errorf("%s is missing or not JSON", p)
	}
	if err := json.Unmarshal(e.data, v); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// addImage adds names to the image with config img.Config, or adds img.
func (s *scan) addImage(img Image) {
	imgs := s.contents.Images
	for i := range imgs {
		if imgs[i].Config == img.Config {
			for _, n := range img.Names {
				if !slices.Contains(imgs[i].Names, n) {
					imgs[i].Names = append(imgs[i].Names, n)
				}
			}
			return
		}
	}
	s.contents.Images = append(imgs, img)
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

// provider serves the archive's JSON blobs to containerd's image functions,
// so that platforms resolve exactly as containerd resolves them.
type provider struct{ s *scan }

func (p provider) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	_, e, ok := p.s.entry(blobPath(desc.Digest))
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

func blobPath(d digest.Digest) string {
	return path.Join("blobs", d.Algorithm().String(), d.Encoded())
}
