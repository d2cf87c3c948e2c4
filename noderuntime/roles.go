package noderuntime

import (
	"context"
	"time"

	digest "github.com/opencontainers/go-digest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/signature"
)

// The roles below are the parts of a node's image store, each what one
// part of the engine asks of the runtime; a part depends on its role
// only, so that what it can do to the node reads from its type. Store
// composes them for the wiring that hands one runtime to every part.

// Capable says whether the runtime does an operation only some runtimes
// do. Each role whose operations need containerd embeds it.
type Capable interface {
	// Can returns nil if the runtime does op, else an *UnsupportedError.
	// The operations of op fail with it too; Can is for asking before
	// work that would be wasted (a pull from a mirror that cannot be
	// recorded under its name).
	Can(op Op) error
}

// Presence is what the node has. It is always the CRI's answer, asked as
// the kubelet asks.
type Presence interface {
	ListImages(ctx context.Context) ([]*runtimeapi.Image, error)
	// ImageStatus is the kubelet's question before a pull; nil is absent.
	ImageStatus(ctx context.Context, ref string) (*runtimeapi.Image, error)
}

// Puller brings images from registries, by either path, and chooses the
// path by what the registries and images are like.
type Puller interface {
	Capable
	// PullImage pulls through the CRI, as the kubelet pulls.
	PullImage(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error)
	// PullDirect pulls ref with the containerd client (pullVia
	// containerd), maxDownloads layers at once on the node, and records
	// it as a CRI pull would.
	PullDirect(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, maxDownloads int) error
	// RegistryNear says whether the registry a PullDirect of ref would
	// ask first answers within d, and how fast; it fails as PullDirect
	// does where the runtime has no containerd API.
	RegistryNear(ctx context.Context, ref string, d time.Duration) (bool, time.Duration, error)
	// LargestLayer is the compressed size of the largest layer a pull of
	// ref would download.
	LargestLayer(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (int64, error)
	// CollectGarbage frees what no image holds, before it returns: what
	// a pull that ran out of space wrote.
	CollectGarbage(ctx context.Context) error
	// CheckArtifact returns an *artifact.Error if the image ref the node
	// has is an OCI artifact the runtime holds without its content, so
	// that a pod could not mount it; nil when it is not, or the runtime
	// cannot tell.
	CheckArtifact(ctx context.Context, ref string) error
}

// Importer writes images that come from elsewhere than their registry:
// an archive's, and a mirror's under the name the config gives.
type Importer interface {
	Capable
	// Import writes images from an archive, all or nothing.
	Import(ctx context.Context, contents *archive.Contents, images []archive.Image) error
	// Tag records the image source names under name too.
	Tag(ctx context.Context, name, source string) error
}

// Pinner holds images against the kubelet's image garbage collection.
type Pinner interface {
	Capable
	// SyncPins makes owner, one of the preloader's configs, hold a pin on
	// pin and lets go of owner's pins keep does not hold; an image stays
	// pinned while any owner holds a pin on it.
	SyncPins(ctx context.Context, owner string, pin, keep []string) (PinChanges, error)
}

// Records is which images the preloader's configs brought, and their
// removal (prune).
type Records interface {
	Capable
	// Own records on the image named name that owner, one of the
	// preloader's configs, brought it to the node; keep: never prune it.
	Own(ctx context.Context, owner, name string, keep bool) error
	// Owned lists the images owner brought.
	Owned(ctx context.Context, owner string) ([]OwnedImage, error)
	// Disown forgets that owner brought the image named name.
	Disown(ctx context.Context, owner, name string) error
	// RemoveName deletes the one name of an image; the image stays under
	// its other names.
	RemoveName(ctx context.Context, name string) error
	// RemoveImage removes the image with every name, through the CRI.
	RemoveImage(ctx context.Context, ref string) error
}

// Refresher tells whether a tag moved since the node pulled it.
type Refresher interface {
	Capable
	// TagDigest asks the registry which manifest the tag reference ref
	// names now; LocalDigest is what the node's record name points to,
	// and when its tag was last checked; MarkChecked records a check.
	TagDigest(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error)
	LocalDigest(ctx context.Context, name string) (digest string, checked time.Time, err error)
	MarkChecked(ctx context.Context, name string, at time.Time) error
}

// Signatures are the cosign signatures registries keep beside images,
// which verify checks before a pull.
type Signatures interface {
	Capable
	// Signatures reads the signatures of d kept in the repository of ref
	// (its sha256-<hex>.sig tag), from the registry a pull of ref would
	// reach, with auth; none when the registry has no such tag.
	Signatures(ctx context.Context, ref string, d digest.Digest, auth *runtimeapi.AuthConfig) ([]signature.Signature, error)
}

// Budgeter is what the disk budget weighs: the image filesystem and what
// a pull would add to it.
type Budgeter interface {
	Capable
	// ImageFs is the image filesystem's size and free space.
	ImageFs(ctx context.Context) (ImageFs, error)
	// PullNeed is what a pull of ref would add on disk, the blobs the
	// node already has left out.
	PullNeed(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (DiskNeed, error)
}

// Containers is what the node runs: the images in use, which prune keeps.
type Containers interface {
	// ListContainers is every container, in any state.
	ListContainers(ctx context.Context) ([]*runtimeapi.Container, error)
	// ContainerMounts is what a container mounts, image volumes among
	// them; nil for a container gone since it was listed.
	ContainerMounts(ctx context.Context, id string) ([]*runtimeapi.Mount, error)
	// SandboxImage asks the runtime now which pod-infra image it uses, so
	// that a long-running agent follows a containerd reconfigured and
	// restarted under it.
	SandboxImage(ctx context.Context) (image, source string, err error)
}

// Runtime is the runtime itself: what Connect found, and the connection.
type Runtime interface {
	// Facts is what Connect found.
	Facts() Facts
	Close() error
}

// Store is a node's image store, as the preloader uses it: every role.
// Only the wiring that hands one runtime to every part (the agent,
// preloader once) needs it whole.
type Store interface {
	Runtime
	Presence
	Containers
	Puller
	Importer
	Pinner
	Records
	Refresher
	Signatures
	Budgeter
}
