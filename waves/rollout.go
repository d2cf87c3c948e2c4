package waves

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/kubeapi"
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

// Nodes is the cluster's Node API, which counts the nodes behind a
// percentage.
type Nodes = kubeapi.Resource[*corev1.Node, *corev1.NodeList]

// Rollout is one agent's side of the cluster's rollout: it waits for the
// first nodes to pull an image new to the cluster (First), holds a pull
// slot while it pulls (Slots), and tells the waiting nodes what it pulled.
// One Rollout serves every sync of an agent, so that the node count is
// shared.
type Rollout struct {
	Leases   Leases
	Nodes    Nodes
	Identity string
	// LeaseDuration, if set, replaces DefaultLeaseDuration; renewals and
	// polls follow it.
	LeaseDuration time.Duration
	Log           *slog.Logger

	mu        sync.Mutex
	nodes     int
	countedAt time.Time
}

func (r *Rollout) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

func (r *Rollout) first(k int, timeout time.Duration) *First {
	return &First{
		Leases: r.Leases, Identity: r.Identity,
		K: k, Timeout: timeout,
		Nodes:   r.CountNodes,
		MinPoll: r.LeaseDuration / 10,
	}
}

// WaitFirst waits, image by image, until the first k nodes have each
// image or timeout passed; an image another node saw first is left to
// them.
func (r *Rollout) WaitFirst(ctx context.Context, k int, timeout time.Duration, images []string) error {
	f := r.first(k, timeout)
	for _, img := range images {
		start := time.Now()
		first, err := f.Wait(ctx, img)
		if err != nil {
			return fmt.Errorf("waiting for the first nodes: %w", err)
		}
		if !first && time.Since(start) > time.Second {
			r.log().Info("waited for the first nodes", "image", img, "waited", time.Since(start).Round(time.Millisecond).String())
		}
	}
	return nil
}

// TellHave records on each image's Lease that this node pulled it, for
// the nodes waiting for the first k; a failure is logged.
func (r *Rollout) TellHave(ctx context.Context, k int, timeout time.Duration, pulled []string) {
	f := r.first(k, timeout)
	for _, img := range pulled {
		if err := f.Have(ctx, img); err != nil {
			r.log().Warn("cannot record the image for the nodes waiting for it", "image", img, "err", err)
		}
	}
}

// Acquire waits for a pull slot; slots is how many there are for a
// cluster of so many nodes.
func (r *Rollout) Acquire(ctx context.Context, slots func(nodes int) int) (*Held, error) {
	s := &Slots{
		Leases:   r.Leases,
		Identity: r.Identity,
		Size: func(ctx context.Context) (int, int, error) {
			nodes, err := r.CountNodes(ctx)
			if err != nil {
				return 0, 0, err
			}
			return slots(nodes), nodes, nil
		},
		LeaseDuration: r.LeaseDuration,
		RenewEvery:    r.LeaseDuration / 3,
		MinPoll:       r.LeaseDuration / 10,
		Log:           r.Log,
	}
	return s.Acquire(ctx)
}

// Release frees h's slot, also once ctx has ended; a failure is logged,
// as the slot lapses by itself.
func (r *Rollout) Release(ctx context.Context, h *Held) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := h.Release(ctx); err != nil {
		r.log().Warn("cannot release the pull slot; it lapses by itself", "lease", h.Name, "err", err)
	}
}

// CountNodes counts the cluster's Nodes with a List of one: the API server
// says how many remain. The agent may list Nodes already (it watches its
// own), so percentages need no permission more; reading the DaemonSet's
// desiredNumberScheduled instead would need get on the DaemonSet and its
// name, which the agent is not told. The cost of the choice: nodes the
// DaemonSet does not run on count too, so a percentage allows a little
// more than it says where the DaemonSet has a nodeSelector.
func (r *Rollout) CountNodes(ctx context.Context) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.countedAt.IsZero() && time.Since(r.countedAt) < nodeCountTTL {
		return r.nodes, nil
	}
	list, err := r.Nodes.List(ctx, metav1.ListOptions{Limit: 1})
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
