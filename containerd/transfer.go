package containerd

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// transfers is what this client's pulls in flight have to download (the
// config and layers their manifests name and the content store lacks) and
// what of it has arrived. Reads add to atomics as they return, so a
// scrape reads the sums without stopping a pull, and a client with no pull
// in flight does nothing at all: only a CRI pull, which has no reads
// here, is looked at on a ticker (FollowPull), and only while it runs.
type transfers struct {
	inFlight, done, total atomic.Int64
	pulls                 atomic.Int64 // pulls started, to order them
}

// Transferred is how many pulls through Pull, and CRI pulls through
// FollowPull, are in flight, the bytes they have received and the bytes
// they have to receive; zeros when none is. Done reaches total as each pull ends, whereupon both lose that pull.
func (c *Client) Transferred() (inFlight, done, total int64) {
	// done is read first: a pull that ends between the loads takes its
	// bytes out of done before total, so done never reads above total
	// because of the ordering (it may read below, for a moment).
	d := c.transfers.done.Load()
	return c.transfers.inFlight.Load(), d, c.transfers.total.Load()
}

// pullBytes is one pull's share of the client's transfers, kept so that
// the pull takes out exactly what it put in when it ends, however it ends.
type pullBytes struct {
	p           *transfers
	done, total atomic.Int64
	// watch is the pull's own caller's, which it shows per image.
	watch *Bytes
	// expected is the size of each blob counted in total whose fetch has
	// not ended: a map behind a lock, touched once per blob, never per read.
	mu       sync.Mutex
	expected map[digest.Digest]expectedBlob
	// seq is the pull's place among the client's pulls.
	seq int64
}

// expectedBlob is a blob's size and its place in its manifest.
type expectedBlob struct {
	size  int64
	index int
}

func (p *transfers) start(watch *Bytes) *pullBytes {
	p.inFlight.Add(1)
	return &pullBytes{p: p, watch: watch, expected: map[digest.Digest]expectedBlob{}, seq: p.pulls.Add(1)}
}

// end takes the pull out of the sums. client.Pull has joined its fetches
// (the dispatcher's and the unpacker's) before it returns, so no read
// adds to b after this.
func (b *pullBytes) end() {
	b.p.done.Add(-b.done.Load())
	b.p.total.Add(-b.total.Load())
	b.p.inFlight.Add(-1)
}

// expect counts into total the blobs of a manifest the content store
// lacks, once each however often the manifest names one.
func (b *pullBytes) expect(blobs []ocispec.Descriptor) {
	var n int64
	b.mu.Lock()
	for i, d := range blobs {
		if _, ok := b.expected[d.Digest]; ok || d.Size <= 0 {
			continue
		}
		b.expected[d.Digest] = expectedBlob{size: d.Size, index: i}
		n += d.Size
	}
	b.mu.Unlock()
	b.total.Add(n)
	b.p.total.Add(n)
	b.watch.Expect(n)
}

// blob is one expected blob's fetch: the bytes read for it, counted into
// done no further than its size, so that a copy that starts over (a reset
// content writer) does not count twice.
type blob struct {
	b      *pullBytes
	digest digest.Digest
	size   int64
	read   atomic.Int64
	// order is its turn for a ranged download.
	order rangeOrder
}

func (f *blob) add(n int64) {
	if n <= 0 {
		return
	}
	now := f.read.Add(n)
	if d := min(now, f.size) - min(now-n, f.size); d > 0 {
		f.b.done.Add(d)
		f.b.p.done.Add(d)
		f.b.watch.Add(d)
	}
}

// fetching starts the fetch of desc if it is expected; nil if not (the
// store had it, or it is a manifest: neither is counted).
func (b *pullBytes) fetching(desc ocispec.Descriptor) *blob {
	b.mu.Lock()
	e, ok := b.expected[desc.Digest]
	b.mu.Unlock()
	if !ok {
		return nil
	}
	return &blob{b: b, digest: desc.Digest, size: e.size, order: rangeOrder{pull: b.seq, layer: e.index}}
}

// fetched ends the fetch of an expected blob: what was not read (another
// pull fetched the blob, or the download resumed a partial one) counts as
// done, so that done meets total as the pull's blobs are in. A layer the
// unpacker skips (its snapshot exists) is never handled: it stays short
// of total until the pull ends and takes its bytes out.
func (b *pullBytes) fetched(f *blob) {
	b.mu.Lock()
	_, ok := b.expected[f.digest]
	delete(b.expected, f.digest)
	b.mu.Unlock()
	if ok {
		f.add(f.size) // clamped: adds only the rest
	}
}

type blobKey struct{}

// countingHandler wraps a pull's image handler (inside the unpacker's, so
// it sees every layer the unpacker fetches) to count its bytes: at a
// manifest, what it lacks goes into total, after r has agreed to it; at
// each blob, the fetcher's reads go into done.
func (c *Client) countingHandler(b *pullBytes, r func(context.Context, []ocispec.Descriptor) error) func(images.Handler) images.Handler {
	return func(h images.Handler) images.Handler {
		return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			if !images.IsManifestType(desc.MediaType) && !images.IsIndexType(desc.MediaType) {
				f := b.fetching(desc)
				if f == nil {
					return h.Handle(ctx, desc)
				}
				children, err := h.Handle(context.WithValue(ctx, blobKey{}, f), desc)
				if err == nil || errdefs.IsAlreadyExists(err) || errors.Is(err, images.ErrSkipDesc) {
					b.fetched(f)
				}
				return children, err
			}
			children, err := h.Handle(ctx, desc)
			if err != nil || !images.IsManifestType(desc.MediaType) {
				return children, err
			}
			// One Info per child (a local gRPC, the manifest's children
			// only) serves both the reservation and total.
			var missing []ocispec.Descriptor
			for _, d := range children {
				if _, err := c.c.ContentStore().Info(ctx, d.Digest); errdefs.IsNotFound(err) {
					missing = append(missing, d)
				}
			}
			if r != nil {
				if err := r(ctx, missing); err != nil {
					return nil, err
				}
			}
			b.expect(missing)
			return children, nil
		})
	}
}

// countingResolver hands out fetchers whose readers count into the blob
// of their context. It forwards SetOptions, which client.Pull looks for
// to pass on its download limits.
type countingResolver struct{ remotes.Resolver }

func (r countingResolver) Fetcher(ctx context.Context, ref string) (remotes.Fetcher, error) {
	f, err := r.Resolver.Fetcher(ctx, ref)
	if err != nil {
		return nil, err
	}
	return countingFetcher{f}, nil
}

func (r countingResolver) SetOptions(options ...transfer.ImageResolverOption) {
	if o, ok := r.Resolver.(remotes.ResolverWithOptions); ok {
		o.SetOptions(options...)
	}
}

type countingFetcher struct{ remotes.Fetcher }

func (f countingFetcher) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := f.Fetcher.Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	_, countsItself := rc.(*rangedBlob) // as its ranges arrive, not as they are read
	rc = watchStall(ctx, desc, rc)
	b, _ := ctx.Value(blobKey{}).(*blob)
	if b == nil || countsItself {
		return rc, nil
	}
	cr := countingReader{rc: rc, b: b}
	// A resumed or reset copy seeks; hiding Seek would make content.Copy
	// read and discard the offset instead, from the registry.
	if s, ok := rc.(io.Seeker); ok {
		return countingReadSeeker{cr, s}, nil
	}
	return cr, nil
}

type countingReader struct {
	rc io.ReadCloser
	b  *blob
}

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.b.add(int64(n))
	return n, err
}

func (r countingReader) Close() error { return r.rc.Close() }

type countingReadSeeker struct {
	countingReader
	s io.Seeker
}

func (r countingReadSeeker) Seek(offset int64, whence int) (int64, error) {
	return r.s.Seek(offset, whence)
}
