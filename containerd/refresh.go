package containerd

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/distribution/reference"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// LabelChecked records on an image record when the preloader last asked
// the registry which manifest its tag names (Unix seconds), so that
// refresh asks at most once an interval, across restarts and between
// once and the agent.
const LabelChecked = "preloader.io/checked"

// TagDigest asks the registry of the tag reference ref which manifest (or
// index) it names now: one HEAD of the manifest, reached as a pull of ref
// would reach it.
func (c *Client) TagDigest(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", ref, err)
	}
	_, desc, err := c.resolver(ctx, auth).Resolve(ctx, named.String())
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", ref, err)
	}
	return desc.Digest.String(), nil
}

// LocalDigest is the digest the image record name points to, and when
// the preloader last checked its tag (zero: never).
func (c *Client) LocalDigest(ctx context.Context, name string) (string, time.Time, error) {
	img, err := c.c.ImageService().Get(ctx, name)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("image %s: %w", name, err)
	}
	var checked time.Time
	if s, err := strconv.ParseInt(img.Labels[LabelChecked], 10, 64); err == nil {
		checked = time.Unix(s, 0)
	}
	return img.Target.Digest.String(), checked, nil
}

// MarkChecked records on the image record name that its tag was checked
// at t.
func (c *Client) MarkChecked(ctx context.Context, name string, t time.Time) error {
	if err := c.setLabels(ctx, name, map[string]string{LabelChecked: strconv.FormatInt(t.Unix(), 10)}); err != nil {
		return fmt.Errorf("mark %s checked: %w", name, err)
	}
	return nil
}
