package containerd

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/distribution/reference"

	"github.com/kube-preloader/kube-preloader/artifact"
)

// Shape is what the manifest for this platform of the image record ref
// says it holds, read from the content store: no registry is asked.
func (c *Client) Shape(ctx context.Context, ref string) (artifact.Shape, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return artifact.Shape{}, err
	}
	img, err := c.c.ImageService().Get(ctx, named.String())
	if err != nil {
		return artifact.Shape{}, fmt.Errorf("image %s: %w", ref, err)
	}
	m, err := images.Manifest(ctx, c.c.ContentStore(), img.Target, c.platform)
	if err != nil {
		return artifact.Shape{}, fmt.Errorf("manifest of %s: %w", ref, err)
	}
	return artifact.ShapeOf(m), nil
}
