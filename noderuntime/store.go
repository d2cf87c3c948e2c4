// Package noderuntime is everything the preloader knows and does about a
// node's container runtime. Connect finds the runtime once (its CRI
// endpoint, name and version, and on containerd the containerd behind the
// CRI: its address, the snapshotter, the registry hosts directories and
// the sandbox image) and returns a Store, the one interface the engine and
// the agent work through. A runtime that lacks an operation fails it here,
// with a reason and what to do instead, so callers hold no runtime
// checks of their own.
package noderuntime

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/failure"
)

// Store is a node's image store, as the preloader uses it. Presence is
// always the CRI's answer (ListImages, ImageStatus), asked as the kubelet
// asks; the other operations are the runtime's own.
type Store interface {
	// Facts is what Connect found.
	Facts() Facts
	// SandboxImage asks the runtime now which pod-infra image it uses, so
	// that a long-running agent follows a containerd reconfigured and
	// restarted under it.
	SandboxImage(ctx context.Context) (image, source string, err error)

	ListImages(ctx context.Context) ([]*runtimeapi.Image, error)
	// ImageStatus is the kubelet's question before a pull; nil is absent.
	ImageStatus(ctx context.Context, ref string) (*runtimeapi.Image, error)
	// PullImage pulls through the CRI, as the kubelet pulls.
	PullImage(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error)
	RemoveImage(ctx context.Context, ref string) error
	// ListContainers is every container, in any state.
	ListContainers(ctx context.Context) ([]*runtimeapi.Container, error)

	// Can returns nil if the runtime does op, else an *UnsupportedError.
	// The operations below fail with it too; Can is for asking before
	// work that would be wasted (a pull from a mirror that cannot be
	// recorded under its name).
	Can(op Op) error
	// PullDirect pulls ref with the containerd client (pullVia
	// containerd), maxDownloads layers at once on the node, and records
	// it as a CRI pull would.
	PullDirect(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, maxDownloads int) error
	// RegistryNear says whether the registry a PullDirect of ref would
	// ask first answers within d, and how fast; it fails as PullDirect
	// does where the runtime has no containerd API.
	RegistryNear(ctx context.Context, ref string, d time.Duration) (bool, time.Duration, error)
	// Import writes images from an archive, all or nothing.
	Import(ctx context.Context, contents *archive.Contents, images []archive.Image) error
	// Tag records the image source names under name too.
	Tag(ctx context.Context, name, source string) error
	// SyncPins makes owner, one of the preloader's configs, hold a pin on
	// pin and lets go of owner's pins keep does not hold; an image stays
	// pinned while any owner holds a pin on it.
	SyncPins(ctx context.Context, owner string, pin, keep []string) (PinChanges, error)
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
	// TagDigest asks the registry which manifest the tag reference ref
	// names now; LocalDigest is what the node's record name points to,
	// and when its tag was last checked; MarkChecked records a check.
	TagDigest(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error)
	LocalDigest(ctx context.Context, name string) (digest string, checked time.Time, err error)
	MarkChecked(ctx context.Context, name string, at time.Time) error
	// ImageFs is the image filesystem's size and free space.
	ImageFs(ctx context.Context) (ImageFs, error)
	// PullNeed is what a pull of ref would add on disk, the blobs the
	// node already has left out.
	PullNeed(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (DiskNeed, error)
	// LargestLayer is the compressed size of the largest layer a pull of
	// ref would download.
	LargestLayer(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (int64, error)
	// CollectGarbage frees what no image holds, before it returns.
	CollectGarbage(ctx context.Context) error

	Close() error
}

// Op is an operation only some runtimes do.
type Op string

const (
	OpPullDirect Op = "pullVia: containerd"
	OpImport     Op = "importing archives"
	OpTag        Op = "recording an image under another name"
	OpPin        Op = "pinning images"
	OpPrune      Op = "pruning images (recording which images the preloader brought)"
	OpRefresh    Op = "refreshing moving tags"
	OpBudget     Op = "estimating image sizes for the disk budget"
)

// OwnedImage is an image record an owner brought (containerd.Owned).
type OwnedImage = containerd.OwnedImage

// PinChanges is what one owner's SyncPins changed (containerd.SyncPins).
type PinChanges = containerd.PinChanges

// DiskNeed is what a pull adds on disk: its download and their layers
// unpacked.
type DiskNeed = containerd.DiskNeed

// UnpackFactor is a layer's estimated unpacked size against its
// compressed size, where nothing tells it.
const UnpackFactor = containerd.UnpackFactor

// UnsupportedError is an operation the runtime does not do. It reports
// its own reason, and retrying cannot mend it.
type UnsupportedError struct {
	Op      Op
	Runtime string // name and version
	Instead string // what to do instead, if anything
}

func (e *UnsupportedError) Error() string {
	msg := fmt.Sprintf("%s needs containerd, and the runtime is %s", e.Op, e.Runtime)
	if e.Instead != "" {
		msg += "; " + e.Instead
	}
	return msg
}

func (e *UnsupportedError) Reason() failure.Reason { return failure.Unsupported }

// Facts is what Connect found out about the runtime.
type Facts struct {
	Endpoint string // CRI
	Name     string // as the CRI Version call says: containerd, cri-o, …
	Version  string

	// Of containerd only.
	ContainerdAddress  string
	Snapshotter        string
	RegistryConfigPath string // hosts.toml directories, colon-separated; empty: none
	Layout             string // Layouts' name of where containerd's files were looked for
	ContainerdConfig   string // the config file read; empty: none found
	// CRIPull is what bounds the downloads of CRI pulls (containerd 2.x).
	CRIPull CRIPullLimits
	// GzipTool is the program containerd decompresses gzip layers with,
	// "" for none; GzipToolKnown is false where the preloader cannot tell.
	GzipTool      string
	GzipToolKnown bool

	sandboxImage, sandboxSource string
	sandboxErr                  error
	// directPullBypasses is what of the node's containerd config a pull
	// with containerd's client would not apply; empty: nothing.
	directPullBypasses []string
}

// DirectPull says whether pullVia auto pulls with containerd's client
// (PullDirect) rather than through the CRI, and why. It does on
// containerd 2.x, whose CRI pulls share three download slots for the
// whole node (integration/bench), unless the node's containerd config
// asks of its CRI pulls what the client's would skip. containerd 1.x
// keeps the kubelet's own path: its CRI pull has no such limit.
func (f Facts) DirectPull() (bool, string) {
	switch {
	case f.Name != "containerd":
		return false, "runtime is " + f.runtime()
	case majorVersion(f.Version) < 2:
		return false, "containerd " + f.Version + " pulls as fast through its CRI"
	case len(f.directPullBypasses) > 0:
		return false, "containerd's config asks of CRI pulls what containerd's client would skip: " + strings.Join(f.directPullBypasses, "; ")
	}
	return true, "containerd " + f.Version + ": its CRI pulls share 3 download slots on the node"
}

// majorVersion reads 2 from "2.4.2+unknown", "v2.1.0" or "2.0.0-rc.1";
// 0 when it cannot.
func majorVersion(v string) int {
	major, _, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return 0
	}
	return n
}

// SandboxImage is the pod-infra image as Connect found it; Facts is a
// preload.SandboxReporter for a run that asks once.
func (f Facts) SandboxImage(context.Context) (image, source string, err error) {
	return f.sandboxImage, f.sandboxSource, f.sandboxErr
}

func (f Facts) runtime() string { return f.Name + " " + f.Version }

// ImageFsPathEnv, if set, is where the preloader reads the free space of
// the runtime's image filesystem instead of the mountpoint the CRI names
// (ImageFsInfo): in the agent's pod, a read-only mount of a directory on
// that filesystem.
const ImageFsPathEnv = "PRELOADER_IMAGEFS_PATH"

// ImageFs is the size and free space of the runtime's image filesystem.
type ImageFs struct {
	Path                string
	Capacity, Available uint64 // bytes; Available to unprivileged writers, as df shows it
}

// WithReservation makes the PullDirect calls of ctx ask r, once each has
// read its manifest and before it downloads a layer, whether what it
// needs on disk (for what the node lacks) may be taken; r's error fails
// the pull.
func WithReservation(ctx context.Context, r func(ctx context.Context, need DiskNeed) error) context.Context {
	return containerd.WithReservation(ctx, r)
}
