package noderuntime

import (
	"context"

	"github.com/kube-preloader/kube-preloader/containerd"
)

// Transferred is what the pulls in flight on containerd have received
// and have to receive, in bytes: those through its client (PullDirect)
// and those through its CRI (PullImage), as far as they have got through
// their manifests.
type Transferred struct {
	InFlight, Done, Total int64
}

// Transfers is a Store whose pulls count their bytes while they run:
// containerd's, whose content store shows a CRI pull's downloads too. A
// CRI PullImage on another runtime is one blocking call that says nothing
// until it returns, so its pulls are in no Transfers.
type Transfers interface {
	Transferred() Transferred
}

// Transferred asks the containerd client, which counts its own pulls'
// bytes and those it follows for the CRI (*containerd.Client does); a
// Containerd that does not count reports zeros.
func (s *containerdStore) Transferred() Transferred {
	c, ok := s.ctrd.(interface {
		Transferred() (inFlight, done, total int64)
	})
	if !ok {
		return Transferred{}
	}
	var t Transferred
	t.InFlight, t.Done, t.Total = c.Transferred()
	return t
}

var _ Transfers = (*containerdStore)(nil)

// The containerd client is what counts; a change of its signature must
// not silently turn the gauges to zeros.
var _ interface {
	Transferred() (inFlight, done, total int64)
} = (*containerd.Client)(nil)

// Bytes is one pull's progress (containerd.Bytes).
type Bytes = containerd.Bytes

// Watch is what the caller of a pull follows while it runs: its Bytes and
// the stall timeout (containerd.Watch). PullDirect honours both; PullImage
// on containerd too, through containerd's content store; PullImage on
// another runtime neither.
type Watch = containerd.Watch

// WithWatch makes the pulls of ctx report to w.
func WithWatch(ctx context.Context, w Watch) context.Context { return containerd.WithWatch(ctx, w) }

// ErrStalled is why a pull was cut when a download stopped receiving
// bytes (containerd.ErrStalled).
var ErrStalled = containerd.ErrStalled

// WatchFromContext is the Watch of ctx; the zero Watch if none.
func WatchFromContext(ctx context.Context) Watch { return containerd.WatchFrom(ctx) }
