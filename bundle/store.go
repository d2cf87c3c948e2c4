package bundle

import (
	"context"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Store is where a bundle's images come from: a registry, or a node's runtime.
type Store interface {
	// Resolve returns the descriptor ref names: an index or a manifest.
	Resolve(ctx context.Context, ref string) (ocispec.Descriptor, error)
	// Fetch reads one blob of ref's repository; a blob the store lacks is an error that
	// wraps github.com/containerd/errdefs.ErrNotFound.
	Fetch(ctx context.Context, ref string, desc ocispec.Descriptor) (io.ReadCloser, error)
}
