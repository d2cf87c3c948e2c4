package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/waves"
)

// nodeCountTTL bounds how stale the node count behind a percentage may be:
// a waiting agent asks for its size every poll, and the number of nodes
// changes far more slowly than that. 10 minutes keeps the counting of 5000
// waiting nodes under 9 requests a second.
const nodeCountTTL = 10 * time.Minute

// releaseTimeout bounds the write that frees a slot, also when the agent
// is shutting down (then the slot would otherwise lapse only after the
// lease duration, holding up the next node).
const releaseTimeout = 5 * time.Second

// rollout coordinates this agent's registry pulls with the other nodes'
// through slot Leases (package waves). Only the sync loop uses it.
type rollout struct {
	a *Agent

	mu        sync.Mutex
	nodes     int
	countedAt time.Time
}

// needsSlot says whether running images would pull anything from a
// registry: an image is missing and does not come from an archive. Images
// already present and archive imports take no slot.
func needsSlot(ctx context.Context, a *Agent, cfg *loadedConfig, images []preload.Image) (bool, error) {
	if !cfg.Rollout.Coordinated() || cfg.Rollout.MaxNodesPulling.Unlimited() {
		return false, nil
	}
	missing, err := preload.Missing(ctx, a.opts.Store, images)
	if err != nil {
		return false, err
	}
	for _, img := range missing {
		if img.Archive == "" {
			return true, nil
		}
	}
	return false, nil
}

// acquire waits for a slot under cfg's maxNodesPulling.
func (r *rollout) acquire(ctx context.Context, cfg *loadedConfig) (*waves.Held, error) {
	a := r.a
	s := &waves.Slots{
		Leases:   a.opts.Client.Leases(a.opts.Namespace),
		Identity: a.opts.NodeName,
		Size: func(ctx context.Context) (int, int, error) {
			nodes, err := r.countNodes(ctx)
			if err != nil {
				return 0, 0, err
			}
			return cfg.Rollout.MaxNodesPulling.Of(nodes), nodes, nil
		},
		LeaseDuration: a.testLease,
		RenewEvery:    a.testLease / 3,
		MinPoll:       a.testLease / 10,
		Log:           a.log,
	}
	h, err := s.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	a.metrics.slotHeld.Set(1)
	a.metrics.slotWait.Observe(h.Waited.Seconds())
	return h, nil
}

func (r *rollout) release(ctx context.Context, h *waves.Held) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := h.Release(ctx); err != nil {
		r.a.log.Warn("cannot release the pull slot; it lapses by itself", "lease", h.Name, "err", err)
	}
	r.a.metrics.slotHeld.Set(0)
}

// countNodes counts the cluster's Nodes with a List of one: the API server
// says how many remain. The agent may list Nodes already (it watches its
// own), so percentages need no permission more; reading the DaemonSet's
// desiredNumberScheduled instead would need get on the DaemonSet and its
// name, which the agent is not told. The cost of the choice: nodes the
// DaemonSet does not run on count too, so a percentage allows a little
// more than it says where the DaemonSet has a nodeSelector.
func (r *rollout) countNodes(ctx context.Context) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.countedAt.IsZero() && time.Since(r.countedAt) < nodeCountTTL {
		return r.nodes, nil
	}
	list, err := r.a.opts.Client.Nodes().List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return 0, fmt.Errorf("listing nodes: %w", err)
	}
	n := len(list.Items)
	if rest := list.RemainingItemCount; rest != nil {
		n += int(*rest)
	}
	r.nodes, r.countedAt = n, time.Now()
	return n, nil
}
