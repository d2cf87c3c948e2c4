package containerd

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// LabelOwnerPrefix begins the label that records, on an image record,
// which of the preloader's configs brought the image to the node:
// preloader.io/owner.<owner>, where owner is "agent:NS/NAME" for an
// agent's ConfigMap or "once:PATH" for a config file. The label lives
// with the image in containerd, so it survives restarts and both commands
// read it. Its value is OwnerPrune, or OwnerKeep for an image whose
// config entry says prune: false.
const LabelOwnerPrefix = "preloader.io/owner."

const (
	OwnerPrune = "prune"
	OwnerKeep  = "keep"
)

// OwnedImage is an image record one owner's label is on.
type OwnedImage struct {
	Name string
	Keep bool
	// Others is how many other owners' labels the record has, and pins
	// others hold on it: what another config lists is not this owner's
	// alone to remove.
	Others int
}

// Own records on the image record name that owner brought it; keep marks
// it not to be pruned. A record that is gone is not an error.
func (c *Client) Own(ctx context.Context, owner, name string, keep bool) error {
	value := OwnerPrune
	if keep {
		value = OwnerKeep
	}
	if err := c.setLabels(ctx, name, map[string]string{LabelOwnerPrefix + owner: value}); err != nil {
		return fmt.Errorf("own %s: %w", name, err)
	}
	return nil
}

// Owned lists the image records owner's label is on.
func (c *Client) Owned(ctx context.Context, owner string) ([]OwnedImage, error) {
	key := LabelOwnerPrefix + owner
	imgs, err := c.c.ImageService().List(ctx, fmt.Sprintf("labels.%q", key))
	if err != nil {
		return nil, fmt.Errorf("list owned images: %w", err)
	}
	owned := make([]OwnedImage, 0, len(imgs))
	for _, img := range imgs {
		o := OwnedImage{Name: img.Name, Keep: img.Labels[key] == OwnerKeep, Others: pinHolders(img.Labels, pinMark(owner))}
		for k := range img.Labels {
			if k != key && strings.HasPrefix(k, LabelOwnerPrefix) {
				o.Others++
			}
		}
		owned = append(owned, o)
	}
	return owned, nil
}

// Disown removes owner's label from the image record name.
func (c *Client) Disown(ctx context.Context, owner, name string) error {
	if err := c.setLabels(ctx, name, map[string]string{LabelOwnerPrefix + owner: ""}); err != nil {
		return fmt.Errorf("disown %s: %w", name, err)
	}
	return nil
}

// setLabels sets labels on the image record name, and deletes those whose
// value is empty; a record that is gone is not an error.
func (c *Client) setLabels(ctx context.Context, name string, labels map[string]string) error {
	is := c.c.ImageService()
	img, err := is.Get(ctx, name)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	img.Labels = make(map[string]string, len(labels))
	paths := make([]string, 0, len(labels))
	for k, v := range labels {
		if v != "" {
			img.Labels[k] = v
		}
		paths = append(paths, "labels."+k)
	}
	if _, err := is.Update(ctx, img, paths...); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// RemoveName deletes the one image record name and no other: the image
// stays under its other names, and what no record holds any more goes to
// containerd's garbage collector.
func (c *Client) RemoveName(ctx context.Context, name string) error {
	if err := c.c.ImageService().Delete(ctx, name); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}
