package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/transfer"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// A registry link is often limited per connection (a CDN's per-flow rate,
// the TCP window of a long round trip), so one layer of gigabytes on one
// connection sets the time of a whole pull. A big blob is therefore read
// as ranges of rangeChunk bytes, rangeParallel of them in flight, each
// into a buffer of this process until the content writer reaches it, in
// order. Each range is one request through containerd's fetcher, so
// hosts.toml mirrors, token services, redirects and the node's download
// slots (maxDownloads) apply to it as to a whole blob; each asks for a
// closed range, so that its connection is read to the end and kept for
// the next.
//
// The buffers are what the agent's memory limit must hold: a ranged blob
// holds rangeParallel of them, allocated once for it, and the client
// ranges rangedBuffers / (rangeParallel * rangeChunk) blobs at once.
// The figures are the fastest measured through a per-connection-limited
// link within that memory (docs/development/benchmarks.md).
var (
	rangeChunk    = 4 << 20
	rangeParallel = 8
	rangedBuffers = 32 << 20
)

// rangedMin is the smallest blob read in ranges: below two ranges the
// extra requests cost more than they bring.
func rangedMin() int64 { return 2 * int64(rangeChunk) }

// ranges is a client's budget of ranged blobs and their buffers.
type ranges struct {
	mu      sync.Mutex
	slots   int            // free
	waiting []*rangeWaiter // by rangeOrder
	free    [][]byte       // buffers of blobs that ended, for the next
	users   int
}

// rangeOrder is who gets a ranged slot first: the earlier pull, and of
// one pull the lower layer, which the unpacker applies first, so that it
// unpacks one layer while the next downloads.
type rangeOrder struct {
	pull  int64
	layer int
}

func (a rangeOrder) before(b rangeOrder) bool {
	return a.pull < b.pull || (a.pull == b.pull && a.layer < b.layer)
}

type rangeWaiter struct {
	order rangeOrder
	ready chan struct{} // closed when given the slot
}

func newRanges() *ranges {
	return &ranges{slots: max(1, rangedBuffers/(rangeParallel*rangeChunk))}
}

// take holds a slot and rangeParallel buffers for one blob. A big blob
// waits for a slot rather than be fetched whole: whole, it would keep its
// one connection's pace to its end.
func (r *ranges) take(ctx context.Context, order rangeOrder) ([][]byte, error) {
	r.mu.Lock()
	if r.slots > 0 {
		r.slots--
		defer r.mu.Unlock()
		return r.buffers(), nil
	}
	w := &rangeWaiter{order: order, ready: make(chan struct{})}
	i, _ := slices.BinarySearchFunc(r.waiting, w, func(a, b *rangeWaiter) int {
		if a.order.before(b.order) || a.order == b.order {
			return -1
		}
		return 1
	})
	r.waiting = slices.Insert(r.waiting, i, w)
	r.mu.Unlock()
	select {
	case <-w.ready:
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.buffers(), nil
	case <-ctx.Done():
		r.mu.Lock()
		if i := slices.Index(r.waiting, w); i >= 0 {
			r.waiting = slices.Delete(r.waiting, i, i+1)
			r.mu.Unlock()
		} else {
			r.mu.Unlock()
			r.release() // given the slot as ctx ended: pass it on
		}
		return nil, ctx.Err()
	}
}

// buffers are rangeParallel buffers for a blob that holds a slot; r.mu
// is held.
func (r *ranges) buffers() [][]byte {
	r.users++
	bufs := make([][]byte, 0, rangeParallel)
	for len(bufs) < rangeParallel && len(r.free) > 0 {
		bufs = append(bufs, r.free[len(r.free)-1])
		r.free = r.free[:len(r.free)-1]
	}
	for len(bufs) < rangeParallel {
		bufs = append(bufs, make([]byte, rangeChunk))
	}
	return bufs
}

// give returns a blob's buffers and slot. When no blob is ranged or
// waits to be any more, the buffers go too: an agent at rest holds none.
func (r *ranges) give(bufs [][]byte) {
	r.mu.Lock()
	if r.users--; r.users == 0 && len(r.waiting) == 0 {
		r.free = nil
	} else {
		r.free = append(r.free, bufs...)
	}
	r.mu.Unlock()
	r.release()
}

// release hands the slot to the first waiter, or frees it.
func (r *ranges) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.waiting) > 0 {
		w := r.waiting[0]
		r.waiting = r.waiting[1:]
		close(w.ready)
		return
	}
	r.slots++
}

// rangedFetcher reads blobs of rangedMin bytes or more in ranges, through
// hosts whose transport is rangeTransport's.
type rangedFetcher struct {
	remotes.Fetcher
	ranges *ranges
}

func (f rangedFetcher) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if desc.Size < rangedMin() {
		return f.Fetcher.Fetch(ctx, desc)
	}
	b := &rangedBlob{fetcher: f.Fetcher, desc: desc, ranges: f.ranges, turn: rangeOrder{pull: math.MaxInt64}}
	if counted, ok := ctx.Value(blobKey{}).(*blob); ok {
		b.turn, b.counted = counted.order, counted
	}
	b.ctx, b.cancel = context.WithCancelCause(ctx)
	return b, nil
}

// rangedBlob is one blob read in ranges, from its first Read on, unless
// what is left to read from where it was sought is less than rangedMin
// (a resumed download near its end, a read of a gzip trailer): that is
// read whole, without a slot. Its first range is asked alone: a server that ignores Range answers with the
// whole blob, which is then read as it comes, so nothing is fetched
// twice. Otherwise the ranges are fetched rangeParallel at a time, each
// into a buffer of its own, and read in order.
type rangedBlob struct {
	fetcher remotes.Fetcher
	desc    ocispec.Descriptor
	ranges  *ranges
	turn    rangeOrder
	// counted takes the bytes as they arrive, not as they are read:
	// ranges ahead of the reader arrive too.
	counted *blob
	bufs    [][]byte

	ctx    context.Context
	cancel context.CancelCauseFunc

	started bool
	pos     int64           // the blob's bytes returned by Read, or sought past
	order   chan *blobRange // the ranges, in order
	free    chan []byte     // buffers read to the end
	whole   io.ReadCloser   // Range ignored: the blob after the first range
	cur     *blobRange      // being read
	first   *blobRange
	wg      sync.WaitGroup // the fetches
	// mu guards the ranges' filled, end and err; cond wakes the reader
	// when one of them changes, or ctx ends.
	mu     sync.Mutex
	cond   *sync.Cond
	closed sync.Once
}

// blobRange is the blob's bytes [off, off+n), arriving in buf: filled
// of them so far; end once no more will (all n, or err); done closed then.
type blobRange struct {
	off, n int64
	buf    []byte
	filled int64
	end    bool
	err    error
	done   chan struct{}
	read   int64 // by the reader
}

// Seek before the first Read starts the blob there: a copy that resumes
// an interrupted download asks only for the rest.
func (b *rangedBlob) Seek(offset int64, whence int) (int64, error) {
	if whence != io.SeekStart || b.started || offset < 0 || offset > b.desc.Size {
		if whence == io.SeekCurrent && offset == 0 {
			return b.pos, nil
		}
		return b.pos, fmt.Errorf("blob %s read in ranges: cannot seek to %d (whence %d) after reading", b.desc.Digest, offset, whence)
	}
	b.pos = offset
	return b.pos, nil
}

func (b *rangedBlob) Read(p []byte) (int, error) {
	if !b.started {
		b.started = true
		if err := b.start(); err != nil {
			return 0, err
		}
	}
	for {
		if b.cur == nil {
			if b.pos >= b.desc.Size {
				return 0, io.EOF
			}
			r, ok := <-b.order
			if !ok {
				if b.first != nil {
					<-b.first.done // it hands over the whole blob, if it was that
				}
				if b.whole != nil {
					n, err := b.whole.Read(p)
					b.pos += int64(n)
					b.count(n)
					return n, err
				}
				return 0, b.failure()
			}
			b.cur = r
		}
		r := b.cur
		b.mu.Lock()
		for r.filled == r.read && !r.end && b.ctx.Err() == nil {
			b.cond.Wait()
		}
		filled, err := r.filled, r.err
		b.mu.Unlock()
		if filled > r.read {
			n := copy(p, r.buf[r.read:filled])
			r.read += int64(n)
			b.pos += int64(n)
			if r.read == r.n {
				b.free <- r.buf
				b.cur = nil
			}
			return n, nil
		}
		switch {
		case err != nil:
			return 0, err
		case b.ctx.Err() != nil:
			return 0, b.failure()
		}
	}
}

func (b *rangedBlob) count(n int) {
	if b.counted != nil {
		b.counted.add(int64(n))
	}
}

func (b *rangedBlob) failure() error {
	if err := context.Cause(b.ctx); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}

// start fetches the first range and, once its answer shows that the
// server honours Range, the others.
func (b *rangedBlob) start() error {
	b.order = make(chan *blobRange)
	if b.desc.Size-b.pos < rangedMin() {
		close(b.order)
		rc, err := b.fetcher.Fetch(b.ctx, b.desc)
		if err != nil {
			return err
		}
		b.whole = rc
		if b.pos > 0 {
			s, ok := rc.(io.Seeker)
			if !ok {
				return fmt.Errorf("blob %s: the fetcher cannot seek", b.desc.Digest)
			}
			if _, err := s.Seek(b.pos, io.SeekStart); err != nil {
				return err
			}
		}
		return nil
	}
	bufs, err := b.ranges.take(b.ctx, b.turn)
	if err != nil {
		return err
	}
	b.bufs = bufs
	b.cond = sync.NewCond(&b.mu)
	context.AfterFunc(b.ctx, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.cond.Broadcast()
	})
	b.free = make(chan []byte, len(b.bufs))
	for _, buf := range b.bufs {
		b.free <- buf
	}
	b.order = make(chan *blobRange, len(b.bufs))
	first := b.next(b.pos)
	b.first = first
	b.order <- first
	ask := &rangeAsk{end: first.off + first.n - 1, answered: make(chan struct{})}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.fill(first, ask, true)
	}()
	select {
	case <-ask.answered:
	case <-first.done:
	case <-b.ctx.Done():
	}
	if !ask.isPartial() {
		// Range ignored, or the first request failed: fill keeps the
		// whole blob, or the error, for Read.
		close(b.order)
		return nil
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer close(b.order)
		for off := first.off + first.n; off < b.desc.Size; {
			r := b.next(off)
			if r == nil {
				return
			}
			b.order <- r // room: one buffer per place
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.fill(r, &rangeAsk{end: r.off + r.n - 1, answered: make(chan struct{})}, false)
			}()
			off += r.n
		}
	}()
	return nil
}

// next is the range at off with a free buffer; nil once the blob is
// closed.
func (b *rangedBlob) next(off int64) *blobRange {
	select {
	case buf := <-b.free:
		return &blobRange{off: off, n: min(int64(len(buf)), b.desc.Size-off), buf: buf, done: make(chan struct{})}
	case <-b.ctx.Done():
		return nil
	}
}

// fill fetches r. The first range, answered with the whole blob, leaves
// the rest of it in b.whole.
func (b *rangedBlob) fill(r *blobRange, ask *rangeAsk, first bool) {
	err := b.fillFrom(r, ask, first)
	b.mu.Lock()
	r.err, r.end = err, true
	b.cond.Broadcast()
	b.mu.Unlock()
	close(r.done)
}

// fillFrom reads r's bytes into its buffer as they come.
func (b *rangedBlob) fillFrom(r *blobRange, ask *rangeAsk, first bool) error {
	rc, err := b.fetcher.Fetch(context.WithValue(b.ctx, rangeKey{}, ask), b.desc)
	if err != nil {
		return err
	}
	if r.off > 0 {
		s, ok := rc.(io.Seeker)
		if !ok {
			rc.Close()
			return fmt.Errorf("blob %s: the fetcher cannot seek to a range", b.desc.Digest)
		}
		if _, err := s.Seek(r.off, io.SeekStart); err != nil {
			rc.Close()
			return err
		}
	}
	for filled := int64(0); filled < r.n; {
		k, err := rc.Read(r.buf[filled:r.n])
		if k > 0 {
			b.count(k)
			filled += int64(k)
			b.mu.Lock()
			r.filled = filled
			b.cond.Broadcast()
			b.mu.Unlock()
		}
		if err != nil && (filled < r.n || !errors.Is(err, io.EOF)) {
			rc.Close()
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("blob %s bytes %d-%d: %w", b.desc.Digest, r.off, r.off+r.n-1, err)
		}
	}
	if !ask.isPartial() {
		if first {
			b.whole = rc
			return nil
		}
		rc.Close()
		return fmt.Errorf("blob %s: the registry stopped honouring Range requests midway", b.desc.Digest)
	}
	// The body's last bytes came with its end (Go's client says EOF with
	// them), so the connection is already back in its pool: reading on
	// would only open a request for the bytes after the range.
	rc.Close()
	return nil
}

// Close stops the fetches and gives back the blob's slot and buffers.
func (b *rangedBlob) Close() error {
	var err error
	b.closed.Do(func() {
		b.cancel(errors.New("blob closed"))
		b.wg.Wait()
		if b.whole != nil {
			err = b.whole.Close()
		}
		if b.bufs != nil {
			b.ranges.give(b.bufs)
		}
	})
	return err
}

type rangeKey struct{}

// rangeAsk is one range request's end, and whether the answer was the
// range (206, no content coding) rather than the whole blob.
type rangeAsk struct {
	end      int64
	once     sync.Once
	partial  bool
	answered chan struct{}
}

func (a *rangeAsk) answer(partial bool) {
	a.once.Do(func() {
		a.partial = partial
		close(a.answered)
	})
}

func (a *rangeAsk) isPartial() bool {
	select {
	case <-a.answered:
		return a.partial
	default:
		return false
	}
}

// rangeTransport closes the open-ended Range of containerd's fetcher
// ("bytes=N-", or none from the first byte) at the end its context asks,
// and tells the ask whether the server honoured it. Every hop of a
// redirect gets the same: the Range header follows the request.
type rangeTransport struct{ base http.RoundTripper }

func (t rangeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ask, _ := req.Context().Value(rangeKey{}).(*rangeAsk)
	if ask == nil || req.Method != http.MethodGet {
		return t.base.RoundTrip(req)
	}
	start, ok := openRangeStart(req.Header.Get("Range"))
	if !ok || start > ask.end {
		return t.base.RoundTrip(req)
	}
	req = req.Clone(req.Context())
	req.Header.Set("Range", "bytes="+strconv.FormatInt(start, 10)+"-"+strconv.FormatInt(ask.end, 10))
	resp, err := t.base.RoundTrip(req)
	if err == nil {
		switch {
		case resp.StatusCode == http.StatusPartialContent:
			coding := resp.Header.Get("Content-Encoding")
			ask.answer(coding == "" || coding == "identity")
		case resp.StatusCode == http.StatusOK:
			ask.answer(false)
		}
	}
	return resp, err
}

// openRangeStart reads containerd's "bytes=N-"; no header is N = 0.
func openRangeStart(h string) (int64, bool) {
	if h == "" {
		return 0, true
	}
	rest, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, false
	}
	n, ok := strings.CutSuffix(rest, "-")
	if !ok {
		return 0, false
	}
	start, err := strconv.ParseInt(n, 10, 64)
	return start, err == nil && start >= 0
}

// withRangeTransport gives each host a client whose transport is
// rangeTransport over its own.
func withRangeTransport(hosts docker.RegistryHosts) docker.RegistryHosts {
	return func(host string) ([]docker.RegistryHost, error) {
		hs, err := hosts(host)
		if err != nil {
			return nil, err
		}
		out := make([]docker.RegistryHost, len(hs))
		for i, h := range hs {
			c := http.Client{}
			if h.Client != nil {
				c = *h.Client
			}
			base := c.Transport
			if base == nil {
				base = http.DefaultTransport
			}
			c.Transport = rangeTransport{base: base}
			h.Client = &c
			out[i] = h
		}
		return out, nil
	}
}

// rangedResolver hands out rangedFetchers. It forwards SetOptions, which
// client.Pull looks for to pass on its download limiter.
type rangedResolver struct {
	remotes.Resolver
	ranges *ranges
}

func (r rangedResolver) Fetcher(ctx context.Context, ref string) (remotes.Fetcher, error) {
	f, err := r.Resolver.Fetcher(ctx, ref)
	if err != nil {
		return nil, err
	}
	return rangedFetcher{Fetcher: f, ranges: r.ranges}, nil
}

func (r rangedResolver) SetOptions(options ...transfer.ImageResolverOption) {
	if o, ok := r.Resolver.(remotes.ResolverWithOptions); ok {
		o.SetOptions(options...)
	}
}
