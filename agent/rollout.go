package agent

import (
	"context"

	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/waves"
)

// The rollout's logic is waves.Rollout; the agent hands it the config's
// bounds and the images, and counts what it waited for.

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

// waitFirst waits until the first nodes have each image to pull.
func (a *Agent) waitFirst(ctx context.Context, cfg *loadedConfig, images []config.Image) error {
	names := make([]string, len(images))
	for i, img := range images {
		names[i] = img.Name
	}
	return a.rollout.WaitFirst(ctx, cfg.Rollout.FirstNodes, cfg.Rollout.FirstNodesTimeout, names)
}

// tellHave tells the nodes waiting for the first ones what this node
// pulled.
func (a *Agent) tellHave(ctx context.Context, cfg *loadedConfig, results []preload.Result) {
	var pulled []string
	for _, res := range results {
		if res.Status == preload.StatusPulled {
			pulled = append(pulled, res.Image)
		}
	}
	a.rollout.TellHave(ctx, cfg.Rollout.FirstNodes, cfg.Rollout.FirstNodesTimeout, pulled)
}

// acquire waits for a slot under cfg's maxNodesPulling.
func (a *Agent) acquire(ctx context.Context, cfg *loadedConfig) (*waves.Held, error) {
	h, err := a.rollout.Acquire(ctx, cfg.Rollout.MaxNodesPulling.Of)
	if err != nil {
		return nil, err
	}
	a.metrics.slotHeld.Set(1)
	a.metrics.slotWait.Observe(h.Waited.Seconds())
	return h, nil
}

func (a *Agent) release(ctx context.Context, h *waves.Held) {
	a.rollout.Release(ctx, h)
	a.metrics.slotHeld.Set(0)
}
