package preload

import (
	"context"
	"fmt"
	"time"

	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// pullMirror pulls img from its mirror through the CRI, with the mirror
// host's credentials, then records the image under img.Name, so that a pod
// naming img.Name with imagePullPolicy Never finds it.
func (e *Engine) pullMirror(ctx context.Context, cfg *config.Config, img config.Image) Result {
	start := time.Now()
	// Asked first: a mirror pull that cannot be recorded under img.Name
	// is of no use to a pod that names img.Name.
	if err := e.importer().Can(noderuntime.OpTag); err != nil {
		return failed(img.Name, fmt.Errorf("mirror: %w", err), 0, 0)
	}
	src, err := config.MirrorRef(img.Name, img.Mirror)
	if err != nil {
		return failed(img.Name, err, 0, 0)
	}
	from := img
	from.Name = src
	r := e.pull(ctx, cfg, from)
	r.Image, r.Source = img.Name, src
	if r.Status != StatusPulled {
		return r
	}
	if err := e.importer().Tag(ctx, img.Name, src); err != nil {
		r = failed(img.Name, err, time.Since(start), r.Attempts)
		r.Source = src
		return r
	}
	if err := e.awaitCRI(ctx, img.Name, ""); err != nil {
		r = failed(img.Name, err, time.Since(start), r.Attempts)
		r.Source = src
		return r
	}
	e.log().Info("recorded mirror pull", "image", img.Name, "mirror", src)
	r.Duration = time.Since(start)
	return r
}
