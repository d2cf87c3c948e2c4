package preload

import (
	"context"
	"fmt"
	"time"

	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// SandboxReporter is a runtime that can say which pod-infra image it uses;
// *cri.Client implements it.
type SandboxReporter interface {
	SandboxImage(ctx context.Context) (image, source string, err error)
}

// Sandbox is the pod-infra image a run makes present.
type Sandbox struct {
	Name   string // normalized reference; "" for none
	Source string // "config", or where the runtime's answer came from
	// Guess: the runtime's compiled-in default, named by no config the
	// preloader found (noderuntime.SandboxGuess). A node whose config was
	// not found may use another image, and an air-gapped one cannot pull
	// this one, so a run tries it once and does not fail for it.
	Guess bool
}

// guessTimeout bounds the one attempt at a guessed sandbox image: a
// bootstrap hook must not wait out its --timeout on a registry the node
// may never reach.
const guessTimeout = time.Minute

// ResolveSandbox turns cfg.SandboxImage into a normalized reference, or ""
// for none. "auto" asks the runtime, so that the image preloaded is the one
// the runtime will actually use for every pod sandbox.
func ResolveSandbox(ctx context.Context, rt SandboxReporter, cfg *config.Config) (Sandbox, error) {
	switch cfg.SandboxImage {
	case config.SandboxNone:
		return Sandbox{}, nil
	case config.SandboxAuto:
		img, source, err := rt.SandboxImage(ctx)
		if err != nil {
			return Sandbox{}, fmt.Errorf("sandboxImage auto: %w", err)
		}
		name, err := config.NormalizeRef(img)
		if err != nil {
			return Sandbox{}, fmt.Errorf("sandboxImage auto: runtime reports %q: %w", img, err)
		}
		return Sandbox{Name: name, Source: source, Guess: noderuntime.IsSandboxGuess(source)}, nil
	}
	return Sandbox{Name: cfg.SandboxImage, Source: "config"}, nil
}
