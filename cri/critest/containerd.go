package critest

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/artifact"
	"github.com/kube-preloader/kube-preloader/containerd"
)

// Containerd is the containerd behind a Server (noderuntime.Containerd):
// it works on the Server's image records and labels as containerd's API
// works on the CRI plugin's, so that what it records shows in the CRI as
// on a node, and records what it was asked.
type Containerd struct {
	cri *Server

	mu        sync.Mutex
	imports   int
	pulls     []string
	artifacts map[string]artifact.Shape
}

// Artifact makes the manifest of ref, once pulled, that of an artifact of
// shape s.
func (f *Containerd) Artifact(ref string, s artifact.Shape) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.artifacts == nil {
		f.artifacts = make(map[string]artifact.Shape)
	}
	f.artifacts[ref] = s
}

// NewContainerd is the containerd behind s.
func NewContainerd(s *Server) *Containerd { return &Containerd{cri: s} }

// Imports is how many Import calls were made.
func (f *Containerd) Imports() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.imports
}

// Pulls are the references pulled with containerd's client, in order.
func (f *Containerd) Pulls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.pulls)
}

// Labels are the labels of the image record name; nil when there is no
// such record.
func (f *Containerd) Labels(name string) map[string]string {
	s := f.cri
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.records[name]; r != nil {
		return maps.Clone(r.labels)
	}
	return nil
}

// PinByHand pins the record name as an admin would: the CRI's label, no
// holder of the preloader's.
func (f *Containerd) PinByHand(name string) {
	f.cri.mu.Lock()
	defer f.cri.mu.Unlock()
	f.cri.setLabelsLocked(name, map[string]string{containerd.LabelPinned: "pinned"})
}

// setLabelsLocked sets labels on the record name and deletes those whose
// value is empty; a record that is gone is not an error.
func (s *Server) setLabelsLocked(name string, u map[string]string) {
	r := s.records[name]
	if r == nil {
		return
	}
	for k, v := range u {
		if v == "" {
			delete(r.labels, k)
		} else {
			r.labels[k] = v
		}
	}
}

// Pull pulls ref as containerd's client does: from the Server's registry,
// recorded as the CRI would, without the Server's Pull hook.
func (f *Containerd) Pull(_ context.Context, ref string, auth *runtimeapi.AuthConfig, _ int) error {
	f.mu.Lock()
	f.pulls = append(f.pulls, ref)
	f.mu.Unlock()
	if _, err := f.cri.Fetch(ref, auth); err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	return nil
}

// FollowPull follows nothing: the fake has no content store.
func (f *Containerd) FollowPull(ctx context.Context, _ string, _ *runtimeapi.AuthConfig, pull func(context.Context) error) error {
	return pull(ctx)
}

func (f *Containerd) RegistryNear(context.Context, string, time.Duration) (bool, time.Duration, error) {
	return false, 0, nil
}

// Import records each image under its names, their repositories at its
// target's digest, and its ID.
func (f *Containerd) Import(_ context.Context, _ *archive.Contents, imgs []archive.Image) error {
	f.mu.Lock()
	f.imports++
	f.mu.Unlock()
	s := f.cri
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, img := range imgs {
		id, dgst := img.Config.String(), img.Target.Digest.String()
		s.sizes[id] = 1
		for _, n := range img.Names {
			s.putLocked(n, id, dgst)
			if named, err := reference.ParseNormalizedNamed(n); err == nil && dgst != "" {
				s.putLocked(named.Name()+"@"+dgst, id, dgst)
			}
		}
		s.putLocked(id, id, dgst)
	}
	return nil
}

// Tag records the image of the record source under name too, as the CRI
// records a pull of name: name, its repository at the digest, the ID.
func (f *Containerd) Tag(_ context.Context, name, source string) error {
	s := f.cri
	s.mu.Lock()
	defer s.mu.Unlock()
	src := s.records[source]
	if src == nil {
		return fmt.Errorf("tag %s: image %q: %w", source, source, errdefs.ErrNotFound)
	}
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return fmt.Errorf("image name %q: %w", name, err)
	}
	s.putLocked(name, src.id, src.digest)
	if src.digest != "" {
		s.putLocked(named.Name()+"@"+src.digest, src.id, src.digest)
	}
	return nil
}

// SyncPins decides as containerd.SyncPins does, on the records' labels.
func (f *Containerd) SyncPins(_ context.Context, owner string, pin, keep []string) (containerd.PinChanges, error) {
	s := f.cri
	s.mu.Lock()
	defer s.mu.Unlock()
	var ch containerd.PinChanges
	if owner != "" {
		want := map[string]bool{}
		for _, n := range slices.Concat(pin, keep) {
			want[n] = true
		}
		for _, n := range slices.Sorted(maps.Keys(s.records)) {
			r := s.records[n]
			if want[n] || r.labels[containerd.LabelPinOwnerPrefix+owner] == "" {
				continue
			}
			u := containerd.PinUpdate(r.labels, owner, false)
			s.setLabelsLocked(n, u)
			if _, off := u[containerd.LabelPinned]; off {
				ch.Unpinned = append(ch.Unpinned, n)
			} else {
				ch.StillPinned = append(ch.StillPinned, n)
			}
		}
	}
	for _, n := range pin {
		r := s.records[n]
		if r == nil {
			continue
		}
		if u := containerd.PinUpdate(r.labels, owner, true); u != nil {
			s.setLabelsLocked(n, u)
			ch.Pinned = append(ch.Pinned, n)
		}
	}
	return ch, nil
}

func (f *Containerd) Own(_ context.Context, owner, name string, keep bool) error {
	v := containerd.OwnerPrune
	if keep {
		v = containerd.OwnerKeep
	}
	f.cri.mu.Lock()
	defer f.cri.mu.Unlock()
	f.cri.setLabelsLocked(name, map[string]string{containerd.LabelOwnerPrefix + owner: v})
	return nil
}

// Owned counts, as containerd.Owned does, other owners' labels and the
// pins others hold as the others of each record.
func (f *Containerd) Owned(_ context.Context, owner string) ([]containerd.OwnedImage, error) {
	s := f.cri
	s.mu.Lock()
	defer s.mu.Unlock()
	key, mark := containerd.LabelOwnerPrefix+owner, containerd.LabelPinOwnerPrefix+owner
	var out []containerd.OwnedImage
	for _, n := range slices.Sorted(maps.Keys(s.records)) {
		l := s.records[n].labels
		v, ok := l[key]
		if !ok {
			continue
		}
		o := containerd.OwnedImage{Name: n, Keep: v == containerd.OwnerKeep}
		for k := range l {
			switch {
			case k == key || k == mark:
			case strings.HasPrefix(k, containerd.LabelOwnerPrefix), strings.HasPrefix(k, containerd.LabelPinOwnerPrefix), k == containerd.LabelPreloaderPinned:
				o.Others++
			}
		}
		out = append(out, o)
	}
	return out, nil
}

func (f *Containerd) Disown(_ context.Context, owner, name string) error {
	f.cri.mu.Lock()
	defer f.cri.mu.Unlock()
	f.cri.setLabelsLocked(name, map[string]string{containerd.LabelOwnerPrefix + owner: ""})
	return nil
}

// RemoveName deletes the one record name; the image stays while another
// record names it.
func (f *Containerd) RemoveName(_ context.Context, name string) error {
	s := f.cri
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.records[name]
	if r == nil {
		return nil
	}
	delete(s.records, name)
	for _, o := range s.records {
		if o.id == r.id {
			return nil
		}
	}
	delete(s.sizes, r.id)
	return nil
}

// RegistryManifest finds no tag: the Server's registry keeps no
// signatures.
func (f *Containerd) RegistryManifest(_ context.Context, ref, tag string, _ *runtimeapi.AuthConfig) ([]byte, func(context.Context, ocispec.Descriptor) (io.ReadCloser, error), error) {
	return nil, nil, fmt.Errorf("resolve %s tag %s: %w", ref, tag, errdefs.ErrNotFound)
}

// TagDigest asks the Server's registry, as a pull of ref would.
func (f *Containerd) TagDigest(_ context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	r, _, err := f.cri.Resolve(ref, auth)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", ref, err)
	}
	return r.Digest, nil
}

func (f *Containerd) LocalDigest(_ context.Context, name string) (string, time.Time, error) {
	s := f.cri
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.records[name]
	if r == nil {
		return "", time.Time{}, fmt.Errorf("image %s: image %q: %w", name, name, errdefs.ErrNotFound)
	}
	var checked time.Time
	var sec int64
	if _, err := fmt.Sscan(r.labels[containerd.LabelChecked], &sec); err == nil {
		checked = time.Unix(sec, 0)
	}
	return r.digest, checked, nil
}

func (f *Containerd) MarkChecked(_ context.Context, name string, at time.Time) error {
	f.cri.mu.Lock()
	defer f.cri.mu.Unlock()
	f.cri.setLabelsLocked(name, map[string]string{containerd.LabelChecked: fmt.Sprint(at.Unix())})
	return nil
}

func (f *Containerd) PullNeed(context.Context, string, *runtimeapi.AuthConfig) (containerd.DiskNeed, error) {
	return containerd.DiskNeed{}, nil
}

func (f *Containerd) LargestLayer(context.Context, string, *runtimeapi.AuthConfig) (int64, error) {
	return 0, nil
}

// Shape is an image's, unless Artifact made ref an artifact.
func (f *Containerd) Shape(_ context.Context, ref string) (artifact.Shape, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.artifacts[ref]; ok {
		return s, nil
	}
	return artifact.Shape{ConfigMediaType: ocispec.MediaTypeImageConfig}, nil
}

func (f *Containerd) CollectGarbage(context.Context) error { return nil }
func (f *Containerd) Close() error                         { return nil }
