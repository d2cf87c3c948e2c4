package containerd

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// stallCut is how a pull's blob readers cut it: after stall spent inside
// one Read with no byte, cut cancels the pull's context with the cause.
type stallCut struct {
	stall time.Duration
	cut   context.CancelCauseFunc
}

type stallKey struct{}

// cutStalls makes the blob readers fetched under the returned context cut
// the pull when one of them waits Watch.Stall for a byte. The pull ends
// with stalled(err), which is the stall's error (wrapping ErrStalled) in
// place of the cancellation it caused; stop releases the context.
func cutStalls(ctx context.Context) (_ context.Context, stalled func(error) error, stop func()) {
	stall := WatchFrom(ctx).Stall
	if stall <= 0 {
		return ctx, func(err error) error { return err }, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	ctx = context.WithValue(ctx, stallKey{}, stallCut{stall: stall, cut: cancel})
	stalled = func(err error) error {
		if cause := context.Cause(ctx); err != nil && errors.Is(cause, ErrStalled) {
			return cause
		}
		return err
	}
	return ctx, stalled, func() { cancel(nil) }
}

// watchStall wraps the reader of desc's blob in a watchdog when ctx is
// under cutStalls. The time counted is the time the consumer spends
// waiting in Read: a consumer slow to come back (a busy disk) is not a
// stalled download. Whatever the reader does underneath (one response, or
// ranges fetched in parallel and handed over in order), a blob whose next
// byte does not come is what is cut.
func watchStall(ctx context.Context, desc ocispec.Descriptor, rc io.ReadCloser) io.ReadCloser {
	sc, ok := ctx.Value(stallKey{}).(stallCut)
	if !ok {
		return rc
	}
	w := &stallReader{rc: rc, desc: desc, stall: sc.stall, cut: sc.cut}
	if s, ok := rc.(io.Seeker); ok {
		return stallReadSeeker{w, s}
	}
	return w
}

type stallReader struct {
	rc    io.ReadCloser
	desc  ocispec.Descriptor
	stall time.Duration
	cut   context.CancelCauseFunc

	// off is where the blob has got to, for the error; read by the timer.
	off atomic.Int64
	// timer is armed while a Read waits for bytes; a Read that returns
	// none and no error leaves it armed, as the wait goes on. since is
	// when the wait began: a timer that fires as a new wait begins finds
	// it too recent and leaves the cut to the timer reset for that wait.
	mu    sync.Mutex
	timer *time.Timer
	armed bool
	since time.Time
}

func (r *stallReader) Read(p []byte) (int, error) {
	r.arm()
	n, err := r.rc.Read(p)
	r.off.Add(int64(n))
	if n > 0 || err != nil {
		r.disarm()
	}
	return n, err
}

func (r *stallReader) arm() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.armed {
		return
	}
	r.armed, r.since = true, time.Now()
	if r.timer == nil {
		r.timer = time.AfterFunc(r.stall, r.fire)
		return
	}
	r.timer.Reset(r.stall)
}

func (r *stallReader) disarm() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.armed = false
	if r.timer != nil {
		r.timer.Stop()
	}
}

func (r *stallReader) fire() {
	r.mu.Lock()
	waited := r.armed && time.Since(r.since) >= r.stall
	r.mu.Unlock()
	if !waited { // the bytes came as the timer fired
		return
	}
	r.cut(stallError(r.desc, r.off.Load(), r.stall))
}

func (r *stallReader) Close() error {
	r.disarm()
	return r.rc.Close()
}

type stallReadSeeker struct {
	*stallReader
	s io.Seeker
}

func (r stallReadSeeker) Seek(offset int64, whence int) (int64, error) {
	n, err := r.s.Seek(offset, whence)
	if err == nil {
		r.off.Store(n)
	}
	return n, err
}
