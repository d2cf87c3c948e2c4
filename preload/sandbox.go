package preload

import (
	"context"
	"fmt"
)

// SandboxReporter is a runtime that can say which pod-infra image it uses;
// *cri.Client implements it.
type SandboxReporter interface {
	SandboxImage(ctx context.Context) (image, source string, err error)
}

// ResolveSandbox turns cfg.SandboxImage into a normalized reference, or ""
// for none. "auto" asks the runtime, so that the image preloaded is the one
// the runtime will actually use for every pod sandbox.
func ResolveSandbox(ctx context.Context, rt SandboxReporter, cfg *Config) (string, error) {
	switch cfg.SandboxImage {
	case SandboxNone:
		return "", nil
	case SandboxAuto:
		img, _, err := rt.SandboxImage(ctx)
		if err != nil {
			return "", fmt.Errorf("sandboxImage auto: %w", err)
		}
		name, err := NormalizeRef(img)
		if err != nil {
			return "", fmt.Errorf("sandboxImage auto: runtime reports %q: %w", img, err)
		}
		return name, nil
	}
	return cfg.SandboxImage, nil
}
