package daemons

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kube-preloader/kube-preloader/containerd"
)

// ImageSpec describes a synthetic test image. Layer contents are random but
// derived from seeds, so equal specs give byte-identical blobs and images
// sharing a BaseSeed share their first base layers.
type ImageSpec struct {
	Repo string // e.g. "team/app"
	Tag  string // default "latest"

	// Prebuilt layers come first, as they are (CompressibleLayer's).
	Prebuilt []v1.Layer
	// BaseLayers follow; layer i is the same blob in every image with the
	// same BaseSeed and base layer size.
	BaseLayers int
	BaseSeed   string // default "base"
	// OwnLayers follow and are unique to Repo:Tag.
	OwnLayers int
	LayerSize int // uncompressed random bytes per layer; default 16 KiB
	// BaseLayerSize, when set, is the size of the base layers instead of
	// LayerSize.
	BaseLayerSize int
	// Compressible makes the own layers fourLetterLayer's rather than
	// random bytes.
	Compressible bool

	// Files, if any, go into one last layer, executable (e.g. a static pause
	// binary built by the test), and Entrypoint into the config.
	Files      map[string][]byte
	Entrypoint []string

	// Platforms, when set, make the tag an OCI index of one image per
	// platform (os/arch[/variant]): base layers shared, own layers per
	// platform. Unset: one image of the machine's architecture.
	Platforms []string
	// Revision, when set, changes the own layers: the same tag pushed
	// again with another revision is another image.
	Revision string
}

// TestImage is an image pushed by PushTestImages.
type TestImage struct {
	Spec      ImageSpec
	Ref       string // "127.0.0.1:PORT/team/app:1.0"
	DigestRef string // "127.0.0.1:PORT/team/app@sha256:…"
	Digest    string // manifest digest "sha256:…"
	// Size is manifest + config + compressed layers: what containerd reports
	// as the image size.
	Size   int64
	Layers []string // compressed layer digests, base first
	Image  v1.Image

	// For a multi-platform spec, Digest is the index's and Size its
	// manifest's; Index is the index, and Manifests its images by platform.
	Index     v1.ImageIndex
	Manifests map[string]TestImage
}

// PushTestImages builds the images and pushes them to reg, in order. Blobs
// already pushed (shared base layers) are not uploaded again.
func PushTestImages(t T, reg *Registry, specs []ImageSpec) []TestImage {
	t.Helper()
	var out []TestImage
	for _, spec := range specs {
		img, err := pushTestImage(reg, spec)
		if err != nil {
			t.Fatalf("push test image %s:%s to %s: %v", spec.Repo, spec.Tag, reg.Host, err)
		}
		out = append(out, img)
	}
	return out
}

func pushTestImage(reg *Registry, spec ImageSpec) (TestImage, error) {
	if spec.Tag == "" {
		spec.Tag = "latest"
	}
	if spec.BaseSeed == "" {
		spec.BaseSeed = "base"
	}
	if spec.LayerSize == 0 {
		spec.LayerSize = 16 << 10
	}
	ti := TestImage{Spec: spec, Ref: reg.Host + "/" + spec.Repo + ":" + spec.Tag}
	ref, err := name.ParseReference(ti.Ref)
	if err != nil {
		return ti, err
	}
	if len(spec.Platforms) > 0 {
		return pushTestIndex(reg, ti, ref)
	}
	img, err := BuildTestImage(spec)
	if err != nil {
		return ti, err
	}
	err = remote.Write(ref, img, remote.WithAuth(reg.Authenticator()), remote.WithTransport(reg.Transport()))
	if err != nil {
		return ti, err
	}
	return describeTestImage(ti, img)
}

func describeTestImage(ti TestImage, img v1.Image) (TestImage, error) {
	digest, err := img.Digest()
	if err != nil {
		return ti, err
	}
	ti.Image, ti.Digest = img, digest.String()
	ti.DigestRef = strings.TrimSuffix(ti.Ref, ":"+ti.Spec.Tag) + "@" + ti.Digest
	m, err := img.Manifest()
	if err != nil {
		return ti, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return ti, err
	}
	ti.Size = int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		ti.Size += l.Size
		ti.Layers = append(ti.Layers, l.Digest.String())
	}
	return ti, nil
}

// pushTestIndex pushes an index of one image per platform of ti's spec.
func pushTestIndex(reg *Registry, ti TestImage, ref name.Reference) (TestImage, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	ti.Manifests = map[string]TestImage{}
	for _, p := range ti.Spec.Platforms {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			return ti, err
		}
		img, err := buildTestImage(ti.Spec, *plat)
		if err != nil {
			return ti, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: plat}})
		m, err := describeTestImage(TestImage{Spec: ti.Spec, Ref: ti.Ref}, img)
		if err != nil {
			return ti, err
		}
		ti.Manifests[p] = m
	}
	if err := remote.WriteIndex(ref, idx, remote.WithAuth(reg.Authenticator()), remote.WithTransport(reg.Transport())); err != nil {
		return ti, err
	}
	digest, err := idx.Digest()
	if err != nil {
		return ti, err
	}
	size, err := idx.Size()
	if err != nil {
		return ti, err
	}
	ti.Index, ti.Digest, ti.Size = idx, digest.String(), size
	ti.DigestRef = strings.TrimSuffix(ti.Ref, ":"+ti.Spec.Tag) + "@" + ti.Digest
	return ti, nil
}

// BuildTestImage builds the image of spec without pushing it. Zero fields
// are used as is (no defaults), except BaseLayerSize, which is LayerSize
// when zero.
func BuildTestImage(spec ImageSpec) (v1.Image, error) {
	return buildTestImage(spec, v1.Platform{OS: "linux", Architecture: runtime.GOARCH})
}

func buildTestImage(spec ImageSpec, platform v1.Platform) (v1.Image, error) {
	own := fmt.Sprintf("own/%s:%s", spec.Repo, spec.Tag)
	if len(spec.Platforms) > 0 {
		own += "/" + platform.String()
	}
	if spec.Revision != "" {
		own += "@" + spec.Revision
	}
	layers := append([]v1.Layer(nil), spec.Prebuilt...)
	baseSize := spec.LayerSize
	if spec.BaseLayerSize != 0 {
		baseSize = spec.BaseLayerSize
	}
	for i := range spec.BaseLayers {
		layers = append(layers, randomLayer(fmt.Sprintf("%s/%d", spec.BaseSeed, i), baseSize))
	}
	ownLayer := randomLayer
	if spec.Compressible {
		ownLayer = fourLetterLayer
	}
	for i := range spec.OwnLayers {
		layers = append(layers, ownLayer(fmt.Sprintf("%s/%d", own, i), spec.LayerSize))
	}
	if len(spec.Files) > 0 {
		layers = append(layers, filesLayer(spec.Files))
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = platform.OS, platform.Architecture, platform.Variant
	cf.Config.Entrypoint = spec.Entrypoint
	return mutate.ConfigFile(img, cf)
}

// randomLayer is a gzipped tar holding one file of size bytes drawn from a
// generator seeded by seed. Fixed headers, timestamps and compression make
// the blob a pure function of (seed, size).
func randomLayer(seed string, size int) v1.Layer {
	key := sha256.Sum256([]byte(seed))
	data := make([]byte, size)
	_, _ = rand.NewChaCha8(key).Read(data)
	return gzipLayer(map[string][]byte{"data/" + fmt.Sprintf("%x", key[:8]): data}, 0o644)
}

// fourLetterLayer is randomLayer's with bytes drawn from four letters:
// two bits of entropy a byte, which gzip keeps in about a quarter of the
// size, as layers of text, binaries and libraries compress by several
// times where random bytes do not compress at all.
func fourLetterLayer(seed string, size int) v1.Layer {
	key := sha256.Sum256([]byte(seed))
	data := make([]byte, size)
	_, _ = rand.NewChaCha8(key).Read(data)
	for i, b := range data {
		data[i] = "acgt"[b&3]
	}
	return gzipLayer(map[string][]byte{"data/" + fmt.Sprintf("%x", key[:8]): data}, 0o644)
}

func filesLayer(files map[string][]byte) v1.Layer { return gzipLayer(files, 0o755) }

func gzipLayer(files map[string][]byte, mode int64) v1.Layer {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	epoch := time.Unix(0, 0)
	for _, n := range names {
		// Writes to a bytes.Buffer cannot fail.
		_ = tw.WriteHeader(&tar.Header{Name: n, Mode: mode, Size: int64(len(files[n])), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX})
		_, _ = tw.Write(files[n])
	}
	_ = tw.Close()
	_ = zw.Close()
	gz := buf.Bytes()
	// The opener hands out already compressed bytes; tarball detects gzip and
	// uses them as the blob instead of compressing again.
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(gz)), nil })
	if err != nil {
		panic(fmt.Sprintf("harness: layer from memory: %v", err)) // only fails on a failing opener
	}
	return l
}

// DropBookkeeping deletes from an image record's labels what the
// preloader keeps there for itself (which of its configs brought the
// image or hold its pin, when its tag was checked): neither the CRI nor the kubelet reads
// them, and a test comparing records with a CRI pull's leaves them out.
func DropBookkeeping(labels map[string]string) map[string]string {
	for k := range labels {
		if strings.HasPrefix(k, containerd.LabelOwnerPrefix) || strings.HasPrefix(k, containerd.LabelPinOwnerPrefix) || k == containerd.LabelChecked {
			delete(labels, k)
		}
	}
	return labels
}
