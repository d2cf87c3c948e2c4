package noderuntime

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/artifact"
	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/signature"
)

// The containerd roles are what the preloader does through containerd's
// own API, split as the Store's roles are: containerdStore forwards each
// of its roles to one of them, and *containerd.Client implements them all.

// ContainerdPuller pulls with containerd's client, follows the CRI's
// pulls in containerd's content store, and tells the path's facts.
type ContainerdPuller interface {
	Pull(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, maxDownloads int) error
	// FollowPull runs pull, a CRI pull of ref, watching its downloads in
	// containerd's content store: their bytes show in the pull's Watch,
	// and a download that stalls cuts it.
	FollowPull(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, pull func(context.Context) error) error
	RegistryNear(ctx context.Context, ref string, d time.Duration) (bool, time.Duration, error)
	LargestLayer(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (int64, error)
	// Shape is what the manifest of the image record ref holds, read
	// from the content store.
	Shape(ctx context.Context, ref string) (artifact.Shape, error)
	CollectGarbage(ctx context.Context) error
}

// ContainerdImporter writes images and names into containerd.
type ContainerdImporter interface {
	Import(ctx context.Context, contents *archive.Contents, images []archive.Image) error
	Tag(ctx context.Context, name, source string) error
}

// ContainerdPinner pins images with containerd's image labels.
type ContainerdPinner interface {
	SyncPins(ctx context.Context, owner string, pin, keep []string) (PinChanges, error)
}

// ContainerdRecords keeps the owners' records on containerd's images.
type ContainerdRecords interface {
	Own(ctx context.Context, owner, name string, keep bool) error
	Owned(ctx context.Context, owner string) ([]OwnedImage, error)
	Disown(ctx context.Context, owner, name string) error
	RemoveName(ctx context.Context, name string) error
}

// ContainerdRefresher compares a tag's manifest with the node's record.
type ContainerdRefresher interface {
	TagDigest(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error)
	LocalDigest(ctx context.Context, name string) (string, time.Time, error)
	MarkChecked(ctx context.Context, name string, at time.Time) error
}

// ContainerdSignatures reads signature manifests from registries.
type ContainerdSignatures interface {
	RegistryManifest(ctx context.Context, ref, tag string, auth *runtimeapi.AuthConfig) ([]byte, func(context.Context, ocispec.Descriptor) (io.ReadCloser, error), error)
}

// ContainerdBudgeter sizes a pull against the blobs containerd has.
type ContainerdBudgeter interface {
	PullNeed(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (DiskNeed, error)
}

// Containerd is every containerd role, and the connection: what
// WithContainerd takes.
type Containerd interface {
	ContainerdPuller
	ContainerdImporter
	ContainerdPinner
	ContainerdRecords
	ContainerdRefresher
	ContainerdSignatures
	ContainerdBudgeter
	Close() error
}

var _ Containerd = (*containerd.Client)(nil)

// containerdStore is containerd: the CRI for what the kubelet does and
// for presence, containerd's API for the rest.
type containerdStore struct {
	criStore
	ctrd Containerd
}

var _ Store = (*containerdStore)(nil)

// WithContainerd is the Store of a containerd runtime: c its CRI, ctrd
// the containerd behind it.
func WithContainerd(c *cri.Client, ctrd Containerd) Store {
	return &containerdStore{criStore: *undiscovered(c), ctrd: ctrd}
}

func (s *containerdStore) Can(Op) error { return nil }

// PullImage is the CRI's pull, followed in containerd's content store
// while it runs: its bytes show in the pull's Watch and in Transferred,
// and a download that stalls cuts it (Containerd.FollowPull).
func (s *containerdStore) PullImage(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	var id string
	err := s.ctrd.FollowPull(ctx, ref, auth, func(ctx context.Context) (err error) {
		id, err = s.criStore.PullImage(ctx, ref, auth)
		return err
	})
	// Asked even when the pull failed: containerd 2.x's CRI "pulls" an
	// artifact with nothing unpacked, 1.6's records it and then fails
	// its unpack, again on every retry.
	if rerr := s.refuseArtifact(ctx, ref); rerr != nil {
		return "", rerr
	}
	return id, err
}

func (s *containerdStore) PullDirect(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, maxDownloads int) error {
	err := s.ctrd.Pull(ctx, ref, auth, maxDownloads)
	// Asked even when the pull failed: the client records an artifact
	// before its unpack fails, and that failure, retried, fails again.
	if rerr := s.refuseArtifact(ctx, ref); rerr != nil {
		return rerr
	}
	return err
}

// refuseArtifact returns an *artifact.Error if the image record ref is an
// artifact containerd cannot hold for a pod to mount, and removes that
// record: the kubelet must not find it present. No record, or one it
// cannot read, is no artifact here; the pull's own outcome stands.
func (s *containerdStore) refuseArtifact(ctx context.Context, ref string) error {
	refusal := s.CheckArtifact(ctx, ref)
	if refusal == nil {
		return nil
	}
	// The pull's deadline may be spent; the record must go all the same.
	ctx = context.WithoutCancel(ctx)
	if err := s.criStore.RemoveImage(ctx, ref); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("%w (and removing its image record: %w)", refusal, err)
	}
	name := ref
	if named, err := reference.ParseDockerRef(ref); err == nil {
		name = named.String()
	}
	if err := s.ctrd.RemoveName(ctx, name); err != nil {
		return fmt.Errorf("%w (and removing its image record: %w)", refusal, err)
	}
	return refusal
}

// CheckArtifact reads the manifest of the image record ref from
// containerd's content store.
func (s *containerdStore) CheckArtifact(ctx context.Context, ref string) error {
	shape, err := s.ctrd.Shape(ctx, ref)
	if err != nil || artifact.Mountable("containerd", shape) {
		return nil
	}
	return &artifact.Error{Ref: ref, Shape: shape, Runtime: s.facts.runtime()}
}

func (s *containerdStore) RegistryNear(ctx context.Context, ref string, d time.Duration) (bool, time.Duration, error) {
	return s.ctrd.RegistryNear(ctx, ref, d)
}

func (s *containerdStore) Import(ctx context.Context, contents *archive.Contents, images []archive.Image) error {
	return s.ctrd.Import(ctx, contents, images)
}

func (s *containerdStore) Tag(ctx context.Context, name, source string) error {
	return s.ctrd.Tag(ctx, name, source)
}

func (s *containerdStore) SyncPins(ctx context.Context, owner string, pin, keep []string) (PinChanges, error) {
	return s.ctrd.SyncPins(ctx, owner, pin, keep)
}

func (s *containerdStore) Own(ctx context.Context, owner, name string, keep bool) error {
	return s.ctrd.Own(ctx, owner, name, keep)
}

func (s *containerdStore) Owned(ctx context.Context, owner string) ([]OwnedImage, error) {
	return s.ctrd.Owned(ctx, owner)
}

func (s *containerdStore) Disown(ctx context.Context, owner, name string) error {
	return s.ctrd.Disown(ctx, owner, name)
}

func (s *containerdStore) RemoveName(ctx context.Context, name string) error {
	return s.ctrd.RemoveName(ctx, name)
}

func (s *containerdStore) TagDigest(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	return s.ctrd.TagDigest(ctx, ref, auth)
}

func (s *containerdStore) Signatures(ctx context.Context, ref string, d digest.Digest, auth *runtimeapi.AuthConfig) ([]signature.Signature, error) {
	tag := signature.Tag(d, "sig")
	manifest, fetch, err := s.ctrd.RegistryManifest(ctx, ref, tag, auth)
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sigs, err := signature.FromManifest(ctx, manifest, fetch)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tag, err)
	}
	return sigs, nil
}

func (s *containerdStore) LocalDigest(ctx context.Context, name string) (string, time.Time, error) {
	return s.ctrd.LocalDigest(ctx, name)
}

func (s *containerdStore) MarkChecked(ctx context.Context, name string, at time.Time) error {
	return s.ctrd.MarkChecked(ctx, name, at)
}

func (s *containerdStore) PullNeed(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (DiskNeed, error) {
	return s.ctrd.PullNeed(ctx, ref, auth)
}

func (s *containerdStore) LargestLayer(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (int64, error) {
	return s.ctrd.LargestLayer(ctx, ref, auth)
}

func (s *containerdStore) CollectGarbage(ctx context.Context) error {
	return s.ctrd.CollectGarbage(ctx)
}

func (s *containerdStore) Close() error {
	s.ctrd.Close()
	return s.Client.Close()
}
