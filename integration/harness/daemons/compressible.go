package daemons

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// CompressibleLayer writes to dir a gzipped tar holding one file of size
// bytes that gzip shrinks to about half, as it does the libraries of large
// real images (random bytes, which randomLayer uses, do not shrink at all),
// and returns it as a layer read from that file. Huffman coding alone gets
// that half from hex digits several times faster than a level that also
// searches for matches, which this content has none of. A layer of
// hundreds of MiB is streamed: neither its content nor its blob is held in
// memory, and its digests are computed while it is written, not by reading
// it again. The content is a function of seed and size, the blob of those
// and the compressor's version.
func CompressibleLayer(dir, seed string, size int64) (v1.Layer, error) {
	f, err := os.CreateTemp(dir, "layer-*.tar.gz")
	if err != nil {
		return nil, fmt.Errorf("compressible layer: %w", err)
	}
	defer f.Close()
	blob := sha256.New()
	zw, err := gzip.NewWriterLevel(io.MultiWriter(f, blob), gzip.HuffmanOnly)
	if err != nil {
		return nil, err
	}
	diff := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(zw, diff))
	key := sha256.Sum256([]byte(seed))
	hdr := &tar.Header{Name: fmt.Sprintf("data/%x", key[:8]), Mode: 0o644, Size: size, ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, fmt.Errorf("compressible layer %s: %w", f.Name(), err)
	}
	if _, err := io.CopyN(tw, hexStream{rand.NewChaCha8(key)}, size); err != nil {
		return nil, fmt.Errorf("compressible layer %s: %w", f.Name(), err)
	}
	for _, c := range []io.Closer{tw, zw} {
		if err := c.Close(); err != nil {
			return nil, fmt.Errorf("compressible layer %s: %w", f.Name(), err)
		}
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return &fileLayer{path: f.Name(), size: st.Size(), digest: hashOf(blob), diffID: hashOf(diff)}, f.Close()
}

// hexStream is random bytes spelled in lowercase hex digits: four bits of
// entropy per byte, fast to make and to compress.
type hexStream struct{ src *rand.ChaCha8 }

func (h hexStream) Read(p []byte) (int, error) {
	const digits = "0123456789abcdef"
	_, _ = h.src.Read(p) // never fails
	for i, b := range p {
		p[i] = digits[b&0x0f]
	}
	return len(p), nil
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
}

// fileLayer is a gzipped tar layer in a file, with digests already known.
type fileLayer struct {
	path           string
	size           int64
	digest, diffID v1.Hash
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return types.DockerLayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

func (l *fileLayer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", filepath.Base(l.path), err)
	}
	return readCloser{zr, f}, nil
}

type readCloser struct {
	io.Reader
	f *os.File
}

func (r readCloser) Close() error { return r.f.Close() }
