package containerd

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
)

// Pins are held per owner, as images are owned for prune: the CRI's
// LabelPinned stays on an image record while any of the preloader's owners
// holds a pin on it, so that one config's run never unpins what another
// config pinned.
const (
	// LabelPinOwnerPrefix begins the label by which an owner (as in
	// LabelOwnerPrefix: "agent:NS/NAME" or "once:PATH") holds its pin:
	// preloader.io/pin.<owner>=true.
	LabelPinOwnerPrefix = "preloader.io/pin."
	// LabelPreloaderPinned is a pin of the preloader with no owner: set by
	// versions that recorded none, and by an engine that has none. No run
	// can tell whose it is, so none lets go of it; only a person does.
	LabelPreloaderPinned = "preloader.io/pinned"

	held = "true"
)

// PinChanges is what one owner's SyncPins changed.
type PinChanges struct {
	// Pinned are the records the owner holds a pin on now and did not.
	Pinned []string
	// Unpinned are the records the owner let go of, whose pin came off.
	Unpinned []string
	// StillPinned are the records the owner let go of that another holder
	// keeps pinned.
	StillPinned []string
}

// Empty says whether nothing changed.
func (p PinChanges) Empty() bool {
	return len(p.Pinned) == 0 && len(p.Unpinned) == 0 && len(p.StillPinned) == 0
}

// SyncPins makes owner hold a pin on the image records named pin (as the
// CRI lists them: repo:tag, or repo@digest for digest references) and
// lets go of owner's pins on the records not in keep: an image that only
// failed this time keeps its pin. The pins of other owners, and those the
// preloader did not set (an admin's, containerd's own on its sandbox
// image), are left alone. An empty owner pins and never lets go.
func (c *Client) SyncPins(ctx context.Context, owner string, pin, keep []string) (PinChanges, error) {
	is := c.c.ImageService()
	var ch PinChanges
	if owner != "" {
		want := make(map[string]bool, len(pin)+len(keep))
		for _, n := range slices.Concat(pin, keep) {
			want[n] = true
		}
		mine, err := is.List(ctx, fmt.Sprintf("labels.%q", pinMark(owner)))
		if err != nil {
			return ch, fmt.Errorf("list pinned images: %w", err)
		}
		for _, img := range mine {
			if want[img.Name] {
				continue
			}
			off, err := c.letGo(ctx, owner, img.Name, img.Labels)
			if err != nil {
				return ch, err
			}
			if off {
				ch.Unpinned = append(ch.Unpinned, img.Name)
			} else {
				ch.StillPinned = append(ch.StillPinned, img.Name)
			}
		}
	}
	for _, n := range pin {
		img, err := is.Get(ctx, n)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return ch, fmt.Errorf("pin %s: %w", n, err)
		}
		u := PinUpdate(img.Labels, owner, true)
		if u == nil {
			continue
		}
		if err := c.setLabels(ctx, n, u); err != nil {
			return ch, fmt.Errorf("pin %s: %w", n, err)
		}
		ch.Pinned = append(ch.Pinned, n)
	}
	return ch, nil
}

// letGo takes owner's pin off the record name, and the CRI's pin with it
// when no other holder is left; true when the pin came off.
func (c *Client) letGo(ctx context.Context, owner, name string, labels map[string]string) (bool, error) {
	u := PinUpdate(labels, owner, false)
	if u == nil {
		return false, nil
	}
	if err := c.setLabels(ctx, name, u); err != nil {
		return false, fmt.Errorf("unpin %s: %w", name, err)
	}
	if _, off := u[LabelPinned]; !off {
		return false, nil
	}
	// Another owner may have taken a pin between the read and the write,
	// and seen the CRI's pin still on: put it back for that holder.
	img, err := c.c.ImageService().Get(ctx, name)
	if errdefs.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("unpin %s: %w", name, err)
	}
	if pinHolders(img.Labels, "") == 0 {
		return true, nil
	}
	if err := c.setLabels(ctx, name, map[string]string{LabelPinned: pinned}); err != nil {
		return false, fmt.Errorf("unpin %s: %w", name, err)
	}
	return false, nil
}

// PinUpdate is how the labels of an image record change when owner takes
// (hold) or lets go of its pin: the values to set, "" for those to
// delete; nil when nothing changes. A pin someone else set without the
// preloader (no holder's mark) is not the preloader's to hold or take
// off; the CRI's pin comes off with the last holder's mark; an empty
// owner never lets go.
func PinUpdate(labels map[string]string, owner string, hold bool) map[string]string {
	mark := pinMark(owner)
	ours := labels[mark] != ""
	isPinned := labels[LabelPinned] == pinned
	others := pinHolders(labels, mark)
	switch {
	case hold && ours && isPinned:
		return nil
	case hold && ours:
		// Unpinned by hand while the config still asks for the pin.
		return map[string]string{LabelPinned: pinned}
	case hold && isPinned && others == 0:
		return nil
	case hold:
		// The CRI's pin is set again with the mark, so that a holder
		// letting go at the same time cannot leave this one unpinned.
		return map[string]string{LabelPinned: pinned, mark: held}
	case !ours || owner == "":
		return nil
	case others > 0:
		return map[string]string{mark: ""}
	default:
		return map[string]string{mark: "", LabelPinned: ""}
	}
}

// pinMark is the label by which owner holds a pin.
func pinMark(owner string) string {
	if owner == "" {
		return LabelPreloaderPinned
	}
	return LabelPinOwnerPrefix + owner
}

// pinHolders counts the preloader's pin marks on a record besides but.
func pinHolders(labels map[string]string, but string) int {
	n := 0
	for k, v := range labels {
		if k != but && v != "" && (k == LabelPreloaderPinned || strings.HasPrefix(k, LabelPinOwnerPrefix)) {
			n++
		}
	}
	return n
}
