package preload

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// Pull is one image's pull in flight, as Pulls shows it.
type Pull struct {
	Image string
	Via   string // PullViaCRI or PullViaContainerd
	// Attempt is the attempt running, from 1.
	Attempt int
	// Since is when the image's first attempt started.
	Since time.Time
	// Done and Total are the bytes the attempt running has received and
	// has to receive; Total is 0 until it has read the manifest, and
	// stays 0 where the runtime cannot say (CRI-O).
	Done, Total int64
}

// Pulls is the pulls in flight of the engines that share it, for whoever
// shows progress: `once` on its terminal, the agent in its status. It
// holds references, not figures; Snapshot reads the figures when asked.
type Pulls struct {
	mu sync.Mutex
	m  map[string]*pullState
}

type pullState struct {
	Pull
	bytes *noderuntime.Bytes
}

// Snapshot returns the pulls in flight, oldest first.
func (p *Pulls) Snapshot() []Pull {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	out := make([]Pull, 0, len(p.m))
	for _, s := range p.m {
		pl := s.Pull
		pl.Done, pl.Total = s.bytes.Load()
		out = append(out, pl)
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Pull) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		return cmp.Compare(a.Image, b.Image)
	})
	return out
}

// attempt records the start of an attempt of image's pull and returns ctx
// carrying the attempt's watch (its bytes, and the stall timeout).
func (p *Pulls) attempt(ctx context.Context, image, via string, stall time.Duration) context.Context {
	b := new(noderuntime.Bytes)
	ctx = noderuntime.WithWatch(ctx, noderuntime.Watch{Bytes: b, Stall: stall})
	if p == nil {
		return ctx
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = make(map[string]*pullState)
	}
	s, ok := p.m[image]
	if !ok {
		s = &pullState{Pull: Pull{Image: image, Since: time.Now()}}
		p.m[image] = s
	}
	s.Via, s.bytes = via, b
	s.Attempt++
	return ctx
}

// end takes image's pull out, however it ended.
func (p *Pulls) end(image string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	delete(p.m, image)
	p.mu.Unlock()
}
