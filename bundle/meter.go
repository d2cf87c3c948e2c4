package bundle

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// meter is a bundle's terminal output while it runs: it counts the bytes
// of blobs written and reports them now and then, so that a long bundle
// shows it is moving.
type meter struct {
	w     io.Writer
	every time.Duration
	total int64
	done  atomic.Int64
	mu    sync.Mutex // serializes lines
}

func (p *meter) Write(b []byte) (int, error) {
	p.done.Add(int64(len(b)))
	return len(b), nil
}

func (p *meter) printf(format string, args ...any) {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}

// start reports every p.every until the returned func is called (once or
// more).
func (p *meter) start() (stop func()) {
	if p.w == nil || p.every <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(p.every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				n := p.done.Load()
				p.printf("bundle: %s of %s (%d%%)\n", mib(n), mib(p.total), percent(n, p.total))
			}
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
	}
}

func percent(n, total int64) int64 {
	if total == 0 {
		return 100
	}
	return n * 100 / total
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}
