package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// parallelBlobs is how many blobs of a plain tar Each hands out at once.
// The runtime's content store syncs every blob to disk on commit; several
// at once keep the disk busy (200 MiB: 1.9 s one at a time, 1.3 s four at
// a time, measured on containerd 2.4).
const parallelBlobs = 4

// maxBuffered bounds the blobs of a compressed archive held in memory to
// be written while the stream moves on: parallelBlobs of them at most.
const maxBuffered = 32 << 20

// Each calls fn with the content of every blob descs name, once per digest:
// several at a time from a plain tar, which can be read anywhere, and in
// archive order from a compressed one, which can only be read through.
// A layer Inspect passed over is checked as fn reads it: its last read
// fails with ErrCorrupt instead of io.EOF if its digest is not the one
// desc names. The rest is what Inspect checked only if the file has not
// changed since; fn should check digests itself (containerd's content
// store does).
// Errors do not name the archive: the caller, which opened it, does.
func (c *Contents) Each(ctx context.Context, descs []ocispec.Descriptor, fn func(ocispec.Descriptor, io.Reader) error) error {
	var (
		seen     = make(map[digest.Digest]bool)
		inFile   []ocispec.Descriptor
		inMemory []ocispec.Descriptor
	)
	for _, d := range descs {
		b, ok := c.blobs[d.Digest]
		if !ok {
			return fmt.Errorf("blob %s was not inspected", d.Digest)
		}
		if seen[d.Digest] {
			continue
		}
		seen[d.Digest] = true
		if b.data != nil {
			inMemory = append(inMemory, d)
		} else {
			inFile = append(inFile, d)
		}
	}
	for _, d := range inMemory {
		if err := fn(d, bytes.NewReader(c.blobs[d.Digest].data)); err != nil {
			return err
		}
	}
	if c.file.Compression == Plain {
		return c.eachAt(ctx, inFile, fn)
	}
	return c.eachStreamed(ctx, inFile, fn)
}

// eachAt hands out blobs in the order of descs, several at a time.
func (c *Contents) eachAt(ctx context.Context, descs []ocispec.Descriptor, fn func(ocispec.Descriptor, io.Reader) error) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(parallelBlobs)
	for _, d := range descs {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			return fn(d, c.checked(d, io.NewSectionReader(c.file.f, c.blobs[d.Digest].offset, d.Size)))
		})
	}
	return g.Wait()
}

// eachStreamed reads the tar stream through and hands out blobs as they
// come. Blobs up to maxBuffered are read into memory and handed out
// several at a time, so that the stream moves on while they are written;
// a larger one is handed out straight from the stream.
func (c *Contents) eachStreamed(ctx context.Context, descs []ocispec.Descriptor, fn func(ocispec.Descriptor, io.Reader) error) error {
	byPath := make(map[string]ocispec.Descriptor, len(descs))
	for _, d := range descs {
		byPath[c.blobs[d.Digest].path] = d
	}
	r, err := c.file.Tar()
	if err != nil {
		return err
	}
	defer r.Close()
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(parallelBlobs)
	err = func() error {
		tr := tar.NewReader(r)
		for len(byPath) > 0 {
			hdr, err := tr.Next()
			if err == io.EOF {
				return errors.New("blobs are gone: the file changed since it was inspected")
			}
			if err != nil {
				return notTar(err)
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			p := path.Clean(hdr.Name)
			d, ok := byPath[p]
			if !ok {
				continue
			}
			delete(byPath, p)
			if d.Size > maxBuffered {
				if err := fn(d, c.checked(d, tr)); err != nil {
					return err
				}
				continue
			}
			data := make([]byte, d.Size)
			if _, err := io.ReadFull(tr, data); err != nil {
				return notTar(err)
			}
			g.Go(func() error { return fn(d, c.checked(d, bytes.NewReader(data))) })
		}
		return nil
	}()
	// A failed write stops the loop with a canceled ctx: report the write.
	if werr := g.Wait(); werr != nil {
		return werr
	}
	return err
}

// checked returns r, or for a blob Inspect did not hash, r checked
// against d's digest as it is read.
func (c *Contents) checked(d ocispec.Descriptor, r io.Reader) io.Reader {
	b := c.blobs[d.Digest]
	if !b.verify || !d.Digest.Algorithm().Available() {
		// Others are not hashed here; the runtime checks them.
		return r
	}
	return &verifier{r: r, v: d.Digest.Verifier(), d: d.Digest, path: b.path}
}

// verifier hashes what is read through it and at the end of the content
// reports a digest mismatch instead of io.EOF: the reader (the content
// store's writer) never sees a clean end of a corrupt blob.
type verifier struct {
	r    io.Reader
	v    digest.Verifier
	d    digest.Digest
	path string
}

func (v *verifier) Read(b []byte) (int, error) {
	n, err := v.r.Read(b)
	v.v.Write(b[:n])
	if err == io.EOF && !v.v.Verified() {
		return n, fmt.Errorf("%w: %s does not have digest %s", ErrCorrupt, v.path, v.d)
	}
	return n, err
}
