// Package noderuntime is everything the preloader knows and does about a
// node's container runtime. Connect finds the runtime once (its CRI
// endpoint, name and version, and on containerd the containerd behind the
// CRI: its address, the snapshotter, the registry hosts directories and
// the sandbox image) and returns a Store, which composes the small roles
// each part of the engine works through (roles.go). A runtime that lacks
// an operation fails it here, with a reason and what to do instead, so
// callers hold no runtime checks of their own.
package noderuntime

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/failure"
)

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
	OpExport     Op = "bundling the images a node holds (bundle --from-runtime)"
	OpVerify     Op = "verify (checking the signature of the digest a tag names, then pulling that digest)"
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
