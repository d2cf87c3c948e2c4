package preload

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// What Prune did with an image.
const (
	PruneRemoved     = "removed"
	PruneWouldRemove = "would remove" // prune: dryRun
	PruneInUse       = "kept: in use"
	PruneFailed      = "failed"
)

// Pruned is one image Prune removed, would remove, or had to keep.
type Pruned struct {
	Image  string `json:"image"`
	Action string `json:"action"`
	// Reason says more: the containers that use it, or the error.
	Reason string `json:"reason,omitempty"`
}

// own records on the node that the engine's Owner brought the images
// this run pulled or imported, and keeps the prune: false mark of those it
// brought before current. Images it found present are not its own.
func (e *Engine) own(ctx context.Context, images []config.Image, results []Result) {
	if e.Owner == "" || e.pruner().Can(noderuntime.OpPrune) != nil {
		return
	}
	byName := make(map[string]config.Image, len(images))
	for _, img := range images {
		byName[img.Name] = img
	}
	owned, err := e.pruner().Owned(ctx, e.Owner)
	if err != nil {
		e.log().Warn("cannot read which images the preloader brought", "err", err)
		return
	}
	keep := make(map[string]bool, len(owned))
	for _, o := range owned {
		keep[o.Name] = o.Keep
	}
	for _, r := range results {
		img, listed := byName[r.Image]
		key := presenceKey(r.Image)
		was, ours := keep[key]
		brought := r.Status == StatusPulled || r.Status == StatusImported
		if !listed || !(brought || ours && was != img.NoPrune) {
			continue
		}
		names := []string{key}
		if r.Source != "" && r.Status == StatusPulled {
			names = append(names, presenceKey(r.Source)) // a mirror's own name
		}
		for _, n := range names {
			if err := e.pruner().Own(ctx, e.Owner, n, img.NoPrune); err != nil {
				e.log().Warn("cannot record that the preloader brought an image", "image", n, "err", err)
			}
		}
	}
}

// Prune removes the images Owner brought that cfg no longer lists (or,
// with prune: dryRun, says which it would). An image a container uses, in
// any state, is kept until none does; an image another of the
// preloader's configs also brought, or holds a pin on, loses only this
// owner's mark; an
// image other names hold loses only the preloader's names. Images the
// preloader did not bring, and the runtime's sandbox image, are never
// touched. Without cfg.Prune it does nothing.
func (e *Engine) Prune(ctx context.Context, cfg *config.Config) ([]Pruned, error) {
	if cfg.Prune == config.PruneOff {
		return nil, nil
	}
	if e.Owner == "" {
		return nil, errors.New("prune: the engine has no owner")
	}
	if err := e.pruner().Can(noderuntime.OpPrune); err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	owned, err := e.pruner().Owned(ctx, e.Owner)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	left := e.leftTheList(ctx, cfg, owned)
	if len(left) == 0 {
		return nil, nil
	}
	containers, err := e.containerUses(ctx)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	leaving := make(map[string]bool, len(left))
	for _, o := range left {
		leaving[o.Name] = true
	}
	var out []Pruned
	for _, o := range left {
		if p, ok := e.pruneOne(ctx, cfg, o, containers, leaving); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// leftTheList is what of owned cfg no longer lists, less what must stay
// whatever the list says: the images marked prune: false and the
// runtime's sandbox image, which lose only this owner's mark.
func (e *Engine) leftTheList(ctx context.Context, cfg *config.Config, owned []noderuntime.OwnedImage) []noderuntime.OwnedImage {
	listed := make(map[string]bool, len(cfg.Images)+1)
	for _, img := range cfg.Images {
		listed[presenceKey(img.Name)] = true
	}
	sandbox := ""
	if s, _, err := e.pruner().SandboxImage(ctx); err == nil && s != "" {
		if n, err := config.NormalizeRef(s); err == nil {
			sandbox = presenceKey(n)
		}
	}
	var left []noderuntime.OwnedImage
	for _, o := range owned {
		switch {
		case listed[o.Name]:
		case o.Keep || o.Name == sandbox || o.Others > 0:
			if cfg.Prune == config.PruneOn {
				if err := e.pruner().Disown(ctx, e.Owner, o.Name); err != nil {
					e.log().Warn("cannot forget an image", "image", o.Name, "err", err)
				}
			}
		default:
			left = append(left, o)
		}
	}
	return left
}

// pruneOne removes (or would remove) the owned record o; false when there
// is nothing to say (the image is already gone).
func (e *Engine) pruneOne(ctx context.Context, cfg *config.Config, o noderuntime.OwnedImage, containers []containerUse, leaving map[string]bool) (Pruned, bool) {
	st, err := e.pruner().ImageStatus(ctx, o.Name)
	if err != nil {
		return Pruned{Image: o.Name, Action: PruneFailed, Reason: err.Error()}, true
	}
	if st == nil {
		// Gone (the kubelet's GC, a person): forget it.
		_ = e.pruner().Disown(ctx, e.Owner, o.Name)
		return Pruned{}, false
	}
	if why := inUse(st, containers); why != "" {
		return Pruned{Image: o.Name, Action: PruneInUse, Reason: why}, true
	}
	// Other names of the image keep it, the preloader's go: only when
	// every tag is one leaving the list does the image itself go, and
	// then as the kubelet's GC removes one, through the CRI.
	whole := !slices.ContainsFunc(st.RepoTags, func(t string) bool { return !leaving[t] })
	if cfg.Prune == config.PruneDryRun {
		return Pruned{Image: o.Name, Action: PruneWouldRemove}, true
	}
	if whole {
		err = e.pruner().RemoveImage(ctx, st.Id)
	} else {
		err = e.pruner().RemoveName(ctx, o.Name)
	}
	if err != nil {
		return Pruned{Image: o.Name, Action: PruneFailed, Reason: err.Error()}, true
	}
	e.log().Info("pruned", "image", o.Name, "wholeImage", whole)
	return Pruned{Image: o.Name, Action: PruneRemoved}, true
}

// containerUse is one container, as the kubelet's image GC sees it: the
// image it runs and the images it mounts as image volumes.
type containerUse struct {
	name   string
	image  []string // its image as ListContainers names it
	mounts []string // the image of each image volume it mounts
}

// containerUses is every container the runtime has, in any state, with
// the image volumes it mounts. The kubelet's image GC asks the same: each
// container's status, whose mounts carry the image of an image volume.
func (e *Engine) containerUses(ctx context.Context) ([]containerUse, error) {
	containers, err := e.pruner().ListContainers(ctx)
	if err != nil {
		return nil, err
	}
	uses := make([]containerUse, 0, len(containers))
	for _, c := range containers {
		mounts, err := e.pruner().ContainerMounts(ctx, c.Id)
		if err != nil {
			// Not knowing what it mounts, prune cannot tell what is unused.
			return nil, err
		}
		uses = append(uses, useOf(c, mounts))
	}
	return uses, nil
}

func useOf(c *runtimeapi.Container, mounts []*runtimeapi.Mount) containerUse {
	u := containerUse{name: containerName(c), image: []string{c.ImageRef, c.GetImage().GetImage(), c.ImageId}}
	for _, m := range mounts {
		if img := m.GetImage().GetImage(); img != "" {
			u.mounts = append(u.mounts, img)
		}
	}
	return u
}

// inUse says which containers keep img, by image ID or any of its names
// (the kubelet's image GC matches the ID; a runtime that records a name
// is matched too): those that run it, and those that mount it as an image
// volume. Empty when none does.
func inUse(img *runtimeapi.Image, containers []containerUse) string {
	names := make(map[string]bool, 1+len(img.RepoTags)+len(img.RepoDigests))
	names[img.Id] = true
	for _, n := range slices.Concat(img.RepoTags, img.RepoDigests) {
		names[n] = true
	}
	var run, mount []string
	for _, c := range containers {
		if slices.ContainsFunc(c.image, func(n string) bool { return names[n] }) {
			run = append(run, c.name)
		}
		if slices.ContainsFunc(c.mounts, func(n string) bool { return names[n] }) {
			mount = append(mount, c.name)
		}
	}
	var why []string
	if len(run) > 0 {
		why = append(why, "used by container "+strings.Join(run, ", "))
	}
	if len(mount) > 0 {
		why = append(why, "mounted as an image volume by container "+strings.Join(mount, ", "))
	}
	return strings.Join(why, "; ")
}

func containerName(c *runtimeapi.Container) string {
	if n := c.GetMetadata().GetName(); n != "" {
		if pod := c.Labels["io.kubernetes.pod.name"]; pod != "" {
			return c.Labels["io.kubernetes.pod.namespace"] + "/" + pod + "/" + n
		}
		return n
	}
	return c.Id
}
