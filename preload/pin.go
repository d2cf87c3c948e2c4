package preload

import (
	"context"

	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// syncPins pins every image present after the run when cfg.Pin, and
// unpins what the preloader pinned before and the run no longer lists (or
// everything, without cfg.Pin). A failure is logged: the images are
// present all the same.
func (e *Engine) syncPins(ctx context.Context, cfg *Config, results []Result) {
	if err := e.Store.Can(noderuntime.OpPin); err != nil {
		// Nothing to unpin either: the preloader pins nothing here.
		if cfg.Pin {
			e.log().Info("images not pinned", "reason", err)
		}
		return
	}
	var pin, keep []string
	if cfg.Pin {
		for _, r := range results {
			keep = append(keep, presenceKey(r.Image))
			if r.Present() {
				pin = append(pin, presenceKey(r.Image))
			}
		}
	}
	pinned, unpinned, err := e.Store.SyncPins(ctx, pin, keep)
	if err != nil {
		e.log().Warn("pinning failed", "err", err)
	}
	if len(pinned) > 0 || len(unpinned) > 0 {
		e.log().Info("pins changed", "pinned", pinned, "unpinned", unpinned)
	}
}
