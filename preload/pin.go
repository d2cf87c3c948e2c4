package preload

import (
	"context"

	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// syncPins makes the engine's Owner hold a pin on every image present
// after the run when cfg.Pin, and lets go of the Owner's pins on what the
// run no longer lists (or all of them, without cfg.Pin). An image another
// of the preloader's configs pinned stays pinned; an engine without an
// Owner pins and never unpins, as it cannot tell its pins from others'.
// A failure is logged: the images are present all the same.
func (e *Engine) syncPins(ctx context.Context, cfg *config.Config, results []Result) {
	if err := e.pinner().Can(noderuntime.OpPin); err != nil {
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
	ch, err := e.pinner().SyncPins(ctx, e.Owner, pin, keep)
	if err != nil {
		e.log().Warn("pinning failed", "err", err)
	}
	if ch.Empty() {
		return
	}
	attrs := []any{"pinned", ch.Pinned, "unpinned", ch.Unpinned}
	if len(ch.StillPinned) > 0 {
		attrs = append(attrs, "stillPinnedByOthers", ch.StillPinned)
	}
	e.log().Info("pins changed", attrs...)
}
