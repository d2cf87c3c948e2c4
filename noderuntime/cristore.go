package noderuntime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/signature"
)

// criStore is a runtime reached through the CRI alone (CRI-O,
// cri-dockerd): the kubelet's operations, and none of containerd's.
type criStore struct {
	*cri.Client
	facts Facts
}

var _ Store = (*criStore)(nil)

// CRIOnly is the Store of a runtime known only by its CRI, with none of
// Connect's discovery: for tests, and for embedding a client one has.
func CRIOnly(c *cri.Client) Store { return undiscovered(c) }

// undiscovered is c's criStore with only the facts its Version call gave.
func undiscovered(c *cri.Client) *criStore {
	return &criStore{Client: c, facts: Facts{Endpoint: c.Endpoint, Name: c.RuntimeName, Version: c.RuntimeVersion,
		sandboxErr: errors.New("sandbox image not discovered: ask Store.SandboxImage")}}
}

func (s *criStore) Facts() Facts { return s.facts }

func (s *criStore) SandboxImage(ctx context.Context) (string, string, error) {
	d, err := discover(ctx, s.Client)
	if err != nil {
		return "", "", err
	}
	return d.sandboxImage()
}

// instead says, for what the CRI cannot do, how to get it from the
// runtime itself.
var instead = map[Op]string{
	OpPullDirect: "use pullVia: cri",
	OpTag:        "configure the mirror in the runtime itself instead (CRI-O: registries.conf [[registry.mirror]]; containerd: hosts.toml)",
	OpPin:        "pin them in the runtime's own config (CRI-O: pinned_images)",
	OpBudget:     "keep the list within the disk yourself",
	OpRefresh:    "name images by digest, or pull moved tags with crictl pull",
	OpExport:     "bundle them from their registry instead (without --from-runtime), or on CRI-O copy each out of its storage with skopeo copy containers-storage:IMAGE oci-archive:FILE:IMAGE",
	OpVerify:     "have the runtime check signatures itself (CRI-O: a sigstoreSigned requirement in its policy.json, containers-policy.json(5))",
	OpPrune:      "leave removal to the kubelet's image garbage collection, or remove them by hand (crictl rmi)",
}

func (s *criStore) Can(op Op) error {
	return &UnsupportedError{Op: op, Runtime: s.facts.runtime(), Instead: instead[op]}
}

func (s *criStore) PullDirect(context.Context, string, *runtimeapi.AuthConfig, int) error {
	return s.Can(OpPullDirect)
}

func (s *criStore) RegistryNear(context.Context, string, time.Duration) (bool, time.Duration, error) {
	return false, 0, s.Can(OpPullDirect)
}

func (s *criStore) Import(context.Context, *archive.Contents, []archive.Image) error {
	return s.Can(OpImport)
}

func (s *criStore) Tag(context.Context, string, string) error { return s.Can(OpTag) }

func (s *criStore) Own(context.Context, string, string, bool) error { return s.Can(OpPrune) }

// Owned is empty: the preloader records no ownership here.
func (s *criStore) Owned(context.Context, string) ([]OwnedImage, error) { return nil, nil }

func (s *criStore) Disown(context.Context, string, string) error { return nil }

func (s *criStore) RemoveName(context.Context, string) error { return s.Can(OpPrune) }

func (s *criStore) TagDigest(context.Context, string, *runtimeapi.AuthConfig) (string, error) {
	return "", s.Can(OpRefresh)
}

func (s *criStore) Signatures(context.Context, string, digest.Digest, *runtimeapi.AuthConfig) ([]signature.Signature, error) {
	return nil, s.Can(OpVerify)
}

func (s *criStore) LocalDigest(context.Context, string) (string, time.Time, error) {
	return "", time.Time{}, s.Can(OpRefresh)
}

func (s *criStore) PullNeed(context.Context, string, *runtimeapi.AuthConfig) (DiskNeed, error) {
	return DiskNeed{}, s.Can(OpBudget)
}

func (s *criStore) LargestLayer(context.Context, string, *runtimeapi.AuthConfig) (int64, error) {
	return 0, s.Can(OpPullDirect)
}

// ImageFs reads the free space of the filesystem the CRI names for
// images, or of ImageFsPathEnv's path.
func (s *criStore) ImageFs(ctx context.Context) (ImageFs, error) {
	path := os.Getenv(ImageFsPathEnv)
	if path == "" {
		mounts, err := s.ImageFilesystems(ctx)
		if err != nil {
			return ImageFs{}, err
		}
		if len(mounts) == 0 || mounts[0] == "" {
			return ImageFs{}, errors.New("the runtime names no image filesystem")
		}
		path = mounts[0]
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return ImageFs{}, fmt.Errorf("free space of the image filesystem: %w (in a pod, mount a directory of it read-only and set %s)", err, ImageFsPathEnv)
	}
	bs := uint64(st.Bsize)
	return ImageFs{Path: path, Capacity: st.Blocks * bs, Available: st.Bavail * bs}, nil
}

func (s *criStore) MarkChecked(context.Context, string, time.Time) error { return s.Can(OpRefresh) }

// SyncPins has nothing to unpin, as the preloader pins nothing here; only
// a request to pin fails.
func (s *criStore) SyncPins(_ context.Context, _ string, pin, _ []string) (PinChanges, error) {
	if len(pin) == 0 {
		return PinChanges{}, nil
	}
	return PinChanges{}, s.Can(OpPin)
}

// CollectGarbage does nothing: the CRI has no such call, and CRI-O
// removes what a failed pull wrote as it fails.
func (s *criStore) CollectGarbage(context.Context) error { return nil }

// CheckArtifact: the CRI does not show a manifest, and CRI-O, the
// CRI-only runtime, mounts artifacts.
func (s *criStore) CheckArtifact(context.Context, string) error { return nil }
