package containerd

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// Bytes is one pull's progress, for whoever shows it: what the pull has to
// download (the blobs the node lacks) and what of it has arrived. Pulls
// add to it as their reads return; readers load it when they want a
// figure, so nothing samples a pull that nobody watches.
type Bytes struct {
	done, total atomic.Int64
}

// Add counts n more bytes received.
func (b *Bytes) Add(n int64) {
	if b != nil && n > 0 {
		b.done.Add(n)
	}
}

// Expect counts n more bytes to receive.
func (b *Bytes) Expect(n int64) {
	if b != nil && n > 0 {
		b.total.Add(n)
	}
}

// Load returns the bytes received and the bytes to receive; total is 0
// until the pull has read its manifest, or where the runtime cannot say.
func (b *Bytes) Load() (done, total int64) {
	if b == nil {
		return 0, 0
	}
	done = b.done.Load()
	return done, b.total.Load()
}

// Watch is what the caller of a pull follows while it runs.
type Watch struct {
	// Bytes receives the pull's progress; nil: nobody watches.
	Bytes *Bytes
	// Stall cuts the pull when one of its blob downloads receives no
	// bytes this long, with an error that wraps ErrStalled; 0: never.
	Stall time.Duration
}

type watchKey struct{}

// WithWatch makes the pulls of ctx report to w.
func WithWatch(ctx context.Context, w Watch) context.Context {
	return context.WithValue(ctx, watchKey{}, w)
}

// WatchFrom is the Watch of ctx; the zero Watch if none.
func WatchFrom(ctx context.Context) Watch {
	w, _ := ctx.Value(watchKey{}).(Watch)
	return w
}

// ErrStalled is why a pull was cut when a download stopped receiving
// bytes: a transient failure, worth another attempt.
var ErrStalled = errors.New("download stalled")
