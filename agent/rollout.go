package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
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

// toPull is what running images would pull from a registry: images
// missing and not from an archive. Images already present and archive
// imports take no slot and wait for no first node. Without coordination
// it asks nothing: the runtime is listed by the run itself.
func toPull(ctx context.Context, a *Agent, cfg *loadedConfig, images []config.Image) ([]config.Image, error) {
	if !cfg.Rollout.Coordinated() {
		return nil, nil
	}
	missing, err := preload.Missing(ctx, a.opts.Store, images)
	if err != nil {
		return nil, err
	}
	var pull []config.Image
	for _, img := range missing {
		if img.Archive == "" {
			pull = append(pull, img)
		}
	}
	return pull, nil
}

func (r *rollout) first(cfg *loadedConfig) *waves.First {
	a := r.a
	return &waves.First{
		Leases: a.opts.Client.Leases(a.opts.Namespace), Identity: a.opts.NodeName,
		K: cfg.Rollout.FirstNodes, Timeout: cfg.Rollout.FirstNodesTimeout,
		Nodes:   r.countNodes,
		MinPoll: a.testLease / 10,
	}
}

// waitFirst waits, image by image, until the first nodes have each image
// or its timeout passed; an image another node saw first is left to them.
func (r *rollout) waitFirst(ctx context.Context, cfg *loadedConfig, images []config.Image) error {
	f := r.first(cfg)
	for _, img := range images {
		start := time.Now()
		first, err := f.Wait(ctx, img.Name)
		if err != nil {
			return fmt.Errorf("waiting for the first nodes: %w", err)
		}
		if !first && time.Since(start) > time.Second {
			r.a.log.Info("waited for the first nodes", "image", img.Name, "waited", time.Since(start).Round(time.Millisecond).String())
		}
	}
	return nil
}

// tellHave records on each image's Lease that this node pulled it, for
// the nodes waiting for the first ones.
func (r *rollout) tellHave(ctx context.Context, cfg *loadedConfig, results []preload.Result) {
	f := r.first(cfg)
	for _, res := range results {
		if res.Status != preload.StatusPulled {
			continue
		}
		if err := f.Have(ctx, res.Image); err != nil {
			r.a.log.Warn("cannot record the image for the nodes waiting for it", "image", res.Image, "err", err)
		}
	}
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
