package agent

import (
	"context"
	"slices"
	"time"

	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// ProgressInterval is the shortest time between two Node writes of an
// agent while it pulls: the status annotation shows the bytes of its pulls
// in flight, written no sooner than this after the Node's last write by
// the agent, so a node pulling for minutes costs the API server one patch
// per interval, and one that pulls for less costs nothing more than its
// status. Fixed rather than scaled with the cluster: the nodes pulling at
// once are what rollout.maxNodesPulling bounds.
const ProgressInterval = 15 * time.Second

// progressTick is how often a run checks whether a progress write is due.
const progressTick = time.Second

// progressDue says whether the agent may write pulling now: something is
// pulling, the Node does not show it already, and the agent's last write
// of the Node is ProgressInterval old.
func progressDue(lastWrite, now time.Time, pulling, shown []nodestatus.Pulling) bool {
	return len(pulling) > 0 && now.Sub(lastWrite) >= ProgressInterval && !slices.Equal(pulling, shown)
}

// pullingOf is what the annotation shows of the pulls in flight: the first
// MaxListed, oldest first.
func pullingOf(pulls []preload.Pull) []nodestatus.Pulling {
	var out []nodestatus.Pulling
	for _, p := range pulls[:min(len(pulls), nodestatus.MaxListed)] {
		out = append(out, nodestatus.Pulling{Image: p.Image, Done: p.Done, Total: max(p.Total, 0)})
	}
	return out
}

// showProgress writes the agent's pulls in flight on its Node while a run
// runs. Until the run ends the sync loop waits in it, so the goroutine
// stands in for the loop in ownView and writeNode; stop returns once no
// write of it is in flight, and the sync's own write, which has no
// Pulling, comes after and clears what it showed. fresh is the status to
// show beside the pulls on a Node that shows none yet.
func (a *Agent) showProgress(ctx context.Context, fresh func() nodestatus.Status) (stop func()) {
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(progressTick)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				a.writeProgress(ctx, start, now, fresh)
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// writeProgress writes the pulls in flight into the Node's status
// annotation, when due (counted from the agent's last write, or from the
// run's start: a pull shorter than ProgressInterval adds no write), and
// nothing else: the label and taint stay as the
// last sync left them, and so does the rest of the status, Changed
// included, so that a reader of the status sees progress, not a change.
func (a *Agent) writeProgress(ctx context.Context, start, now time.Time, fresh func() nodestatus.Status) {
	node, v := a.ownView()
	if node == nil {
		return
	}
	st, err := nodestatus.Decode(v.status)
	pulling := pullingOf(a.pulls.Snapshot())
	last := a.lastWrite()
	if last.Before(start) {
		last = start
	}
	if !progressDue(last, now, pulling, st.Pulling) {
		return
	}
	if v.status == "" || err != nil {
		st = fresh()
	}
	st.Pulling = pulling
	w := nodeWrite{meta: true, status: st, annotation: nodestatus.Encode(st), ready: v.ready}
	if err := a.writeNode(ctx, node, v, w); err != nil {
		if ctx.Err() == nil {
			a.log.Warn("cannot show progress on the Node", "err", err)
		}
		return
	}
	a.log.Debug("progress shown", "pulling", len(pulling))
}

// freshStatus is the status a Node that shows none yet gets beside its
// first progress: the config being applied, its images and which of them
// the runtime lists already; the rest are missing until the run tells.
func (a *Agent) freshStatus(ctx context.Context, hash string, images []config.Image) nodestatus.Status {
	st := nodestatus.Status{ConfigHash: hash, Total: len(images), Runtime: a.runtime(), Changed: time.Now().UTC().Truncate(time.Second)}
	missing, err := preload.Missing(ctx, a.opts.Store, images)
	if err != nil {
		missing = images
	}
	st.Present = len(images) - len(missing)
	st.Missing = imageNames(missing)
	return st
}

// lastWrite is when the agent last wrote its Node; zero before the first.
func (a *Agent) lastWrite() time.Time {
	ns := a.lastWriteAt.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
