package waves

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Per-image Leases (rollout.firstNodes) tell the agents which nodes pull an
// image new to the cluster first and which have it: one small object per
// image, read by name, instead of every agent reading every Node's status.
// The Lease's holder is not used; two annotations hold the node names,
// each list at most firstNodes long, so the object stays small however
// many nodes there are.
const (
	ImagePrefix      = "preloader-image-"
	KindImage        = "image"
	AnnotationImage  = "preloader.io/image"
	AnnotationFirst  = "preloader.io/first-nodes"
	AnnotationHave   = "preloader.io/have"
	firstConflictTry = 5
)

// ImageLeaseName is the Lease of image ref: a hash, since a reference is
// no valid object name.
func ImageLeaseName(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return ImagePrefix + hex.EncodeToString(sum[:10])
}

// First lets K nodes pull an image before the others.
type First struct {
	Leases   Leases
	Identity string
	K        int
	// Timeout is how long the others wait for the first K, from when the
	// image's Lease was created (the first node that needed it).
	Timeout time.Duration
	// Nodes is how many nodes may be waiting, which sets the poll interval.
	Nodes   func(ctx context.Context) (int, error)
	MinPoll time.Duration
}

func names(l *coordinationv1.Lease, key string) []string {
	v := l.Annotations[key]
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// Wait returns once this node may pull ref: it is one of the first K
// (first is true), K nodes have the image, or Timeout has passed since the
// image was first seen.
func (f *First) Wait(ctx context.Context, ref string) (first bool, err error) {
	name := ImageLeaseName(ref)
	minPoll := f.MinPoll
	if minPoll <= 0 {
		minPoll = DefaultMinPoll
	}
	for {
		first, wait, err := f.tryOnce(ctx, name, ref)
		if err != nil {
			return false, err
		}
		if wait <= 0 {
			return first, nil
		}
		nodes, err := f.Nodes(ctx)
		if err != nil {
			return false, fmt.Errorf("first nodes of %s: counting nodes: %w", ref, err)
		}
		if err := sleep(ctx, min(wait, pollInterval(nodes, minPoll))); err != nil {
			return false, err
		}
	}
}

// tryOnce reads the image's Lease, creating it or claiming a first place
// if there is one; wait > 0 is how long at most until the timeout frees
// this node to pull.
func (f *First) tryOnce(ctx context.Context, name, ref string) (first bool, wait time.Duration, err error) {
	for range firstConflictTry {
		l, err := f.Leases.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = f.Leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
				// The API server sets its own creation time; this one
				// serves clients that do not (fakes).
				CreationTimestamp: metav1.Now(),
				Name:              name,
				Labels:            map[string]string{LabelKind: KindImage, "app.kubernetes.io/name": "preloader"},
				Annotations:       map[string]string{AnnotationImage: ref, AnnotationFirst: f.Identity},
			}}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			if err != nil {
				return false, 0, fmt.Errorf("creating lease %s of %s: %w", name, ref, err)
			}
			return true, 0, nil
		}
		if err != nil {
			return false, 0, fmt.Errorf("reading lease %s of %s: %w", name, ref, err)
		}
		firsts := names(l, AnnotationFirst)
		switch {
		case len(names(l, AnnotationHave)) >= f.K:
			return false, 0, nil
		case slices.Contains(firsts, f.Identity):
			return true, 0, nil
		case len(firsts) < f.K:
			l = l.DeepCopy()
			if l.Annotations == nil {
				l.Annotations = map[string]string{}
			}
			l.Annotations[AnnotationFirst] = strings.Join(append(firsts, f.Identity), ",")
			if _, err := f.Leases.Update(ctx, l, metav1.UpdateOptions{}); apierrors.IsConflict(err) {
				continue
			} else if err != nil {
				return false, 0, fmt.Errorf("claiming a first place for %s: %w", ref, err)
			}
			return true, 0, nil
		}
		left := time.Until(l.CreationTimestamp.Add(f.Timeout))
		if left <= 0 {
			return false, 0, nil
		}
		return false, left, nil
	}
	return false, 0, fmt.Errorf("lease %s of %s: conflicts", name, ref)
}

// Have records that this node has ref, while fewer than K nodes are
// recorded: beyond that nobody waits for the list.
func (f *First) Have(ctx context.Context, ref string) error {
	name := ImageLeaseName(ref)
	for range firstConflictTry {
		l, err := f.Leases.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil // nobody waits for it
		}
		if err != nil {
			return fmt.Errorf("reading lease %s of %s: %w", name, ref, err)
		}
		have := names(l, AnnotationHave)
		if len(have) >= f.K || slices.Contains(have, f.Identity) {
			return nil
		}
		l = l.DeepCopy()
		if l.Annotations == nil {
			l.Annotations = map[string]string{}
		}
		l.Annotations[AnnotationHave] = strings.Join(append(have, f.Identity), ",")
		if _, err := f.Leases.Update(ctx, l, metav1.UpdateOptions{}); apierrors.IsConflict(err) {
			continue
		} else if err != nil {
			return fmt.Errorf("recording %s on lease %s: %w", ref, name, err)
		}
		return nil
	}
	return fmt.Errorf("lease %s of %s: conflicts", name, ref)
}
