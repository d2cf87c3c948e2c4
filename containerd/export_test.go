package containerd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// records is an image store of records by name, as containerd's.
type records map[string]images.Image

func (r records) Get(_ context.Context, name string) (images.Image, error) {
	img, ok := r[name]
	if !ok {
		return images.Image{}, errdefs.ErrNotFound
	}
	return img, nil
}

// exportNode is a content store as a node holds a two-platform image it
// pulled on amd64: the index, the amd64 manifest, config and layer, and
// of arm64 nothing.
type exportNode struct {
	x                  exporter
	index, amd, arm    ocispec.Descriptor
	layer, config      ocispec.Descriptor
	indexData, amdData []byte
	layerData          []byte
}

func newExportNode(t *testing.T) *exportNode {
	t.Helper()
	ctx := context.Background()
	cs, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	put := func(mt string, data []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
		if err := content.WriteBlob(ctx, cs, d.Digest.String(), bytes.NewReader(data), d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	blob := func(mt string, data []byte) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
	}
	mustJSON := func(v any) []byte {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	n := &exportNode{layerData: []byte("the layer's bytes")}
	n.layer = put(ocispec.MediaTypeImageLayerGzip, n.layerData)
	n.config = put(ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux"}`))
	manifest := func(config, layer ocispec.Descriptor) []byte {
		return mustJSON(ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: []ocispec.Descriptor{layer}})
	}
	n.amdData = manifest(n.config, n.layer)
	n.amd = put(ocispec.MediaTypeImageManifest, n.amdData)
	armConfig := blob(ocispec.MediaTypeImageConfig, []byte(`{"architecture":"arm64","os":"linux"}`))
	armLayer := blob(ocispec.MediaTypeImageLayerGzip, []byte("arm64 layer"))
	n.arm = blob(ocispec.MediaTypeImageManifest, manifest(armConfig, armLayer))

	amd, arm := n.amd, n.arm
	amd.Platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
	arm.Platform = &ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	n.indexData = mustJSON(ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{amd, arm}})
	n.index = put(ocispec.MediaTypeImageIndex, n.indexData)
	n.arm = arm

	// The records containerd's CRI makes for a pull of team/app:1.0, and
	// one of a single-platform image pulled as nginx.
	n.x = exporter{
		images: records{
			"docker.io/team/app:1.0":                        {Name: "docker.io/team/app:1.0", Target: n.index},
			"docker.io/team/app@" + n.index.Digest.String(): {Name: "docker.io/team/app@" + n.index.Digest.String(), Target: n.index},
			"docker.io/library/nginx:latest":                {Name: "docker.io/library/nginx:latest", Target: n.amd},
		},
		content: cs,
	}
	return n
}

func TestExportResolve(t *testing.T) {
	n := newExportNode(t)
	ctx := context.Background()
	for _, tc := range []struct {
		ref  string
		want ocispec.Descriptor
	}{
		// As the kubelet passes a pod's image: the CRI fills in the rest.
		{"team/app:1.0", n.index},
		{"docker.io/team/app:1.0", n.index},
		{"nginx", n.amd},
		{"docker.io/library/nginx", n.amd},
		// By digest, and with a tag beside it, which the CRI drops.
		{"team/app@" + n.index.Digest.String(), n.index},
		{"team/app:1.0@" + n.index.Digest.String(), n.index},
	} {
		got, err := n.x.resolve(ctx, tc.ref)
		if err != nil {
			t.Errorf("Resolve(%s): %v", tc.ref, err)
			continue
		}
		if got.Digest != tc.want.Digest || got.MediaType != tc.want.MediaType || got.Size != tc.want.Size {
			t.Errorf("Resolve(%s) = %v, want %v", tc.ref, got, tc.want)
		}
	}

	for _, tc := range []struct{ ref, named string }{
		{"team/app:2.0", "docker.io/team/app:2.0"},
		{"registry.example/other", "registry.example/other:latest"},
	} {
		_, err := n.x.resolve(ctx, tc.ref)
		if !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Resolve(%s) = %v, want an error wrapping errdefs.ErrNotFound", tc.ref, err)
		}
		if err == nil || err.Error() != tc.named+" is not on this node" {
			t.Errorf("Resolve(%s) = %v, want %q", tc.ref, err, tc.named+" is not on this node")
		}
	}
	if _, err := n.x.resolve(ctx, "Team/App"); err == nil || errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Resolve of an invalid name = %v, want an error that is not ErrNotFound", err)
	}
}

func TestExportFetch(t *testing.T) {
	n := newExportNode(t)
	ctx := context.Background()
	for _, tc := range []struct {
		desc ocispec.Descriptor
		want []byte
	}{
		{n.index, n.indexData},
		{n.amd, n.amdData},
		{n.layer, n.layerData},
	} {
		rc, err := n.x.fetch(ctx, "team/app:1.0", tc.desc)
		if err != nil {
			t.Errorf("Fetch(%s): %v", tc.desc.Digest, err)
			continue
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("Fetch(%s) read %q, %v; want %q", tc.desc.Digest, got, err, tc.want)
		}
	}
}

func TestExportFetchMissing(t *testing.T) {
	n := newExportNode(t)
	ctx := context.Background()
	armBare := n.arm
	armBare.Platform = nil
	absentLayer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("gone"), Size: 4}
	for _, tc := range []struct {
		name string
		ref  string
		desc ocispec.Descriptor
		want []string
	}{
		{"a platform the node did not pull", "team/app:1.0", n.arm,
			[]string{"no linux/arm64/v8 manifest of docker.io/team/app:1.0 (it holds linux/amd64 only)", "bundle linux/arm64/v8 from the registry"}},
		{"its manifest without the index's platform", "team/app:1.0", armBare,
			[]string{"no linux/arm64/v8 manifest of docker.io/team/app:1.0 (it holds linux/amd64 only)"}},
		{"a layer containerd discarded", "team/app:1.0", absentLayer,
			[]string{"docker.io/team/app:1.0", absentLayer.Digest.String(), "discard_unpacked_layers"}},
		{"a manifest of an image with no index", "nginx", armBare,
			[]string{"docker.io/library/nginx:latest", "manifest " + n.arm.Digest.String(), "not in containerd's content store"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := n.x.fetch(ctx, tc.ref, tc.desc)
			if err == nil {
				rc.Close()
				t.Fatalf("Fetch of a blob the node lacks: no error")
			}
			if !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("Fetch: %v, want an error wrapping errdefs.ErrNotFound", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Fetch: %q, want it to say %q", err, w)
				}
			}
		})
	}
}

// A blob whose size is not the descriptor's fails before it is read.
func TestExportFetchWrongSize(t *testing.T) {
	n := newExportNode(t)
	short := n.layer
	short.Size--
	if _, err := n.x.fetch(context.Background(), "team/app:1.0", short); err == nil || errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Fetch with the wrong size = %v, want an error that is not ErrNotFound", err)
	}
}

// countingStore counts the reads of blobs: each is a request to
// containerd's content service.
type countingStore struct {
	content.Store
	reads int
}

func (s *countingStore) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	ra, err := s.Store.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	return countingReaderAt{ReaderAt: ra, reads: &s.reads}, nil
}

type countingReaderAt struct {
	content.ReaderAt
	reads *int
}

func (r countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	*r.reads++
	return r.ReaderAt.ReadAt(p, off)
}

// A blob copied in io.Copy's 32 KiB buffers is asked of containerd in
// requests of readSize, not one round trip to containerd per buffer.
func TestExportFetchReadsInLargeRequests(t *testing.T) {
	ctx := context.Background()
	local, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("layer bytes "), 9<<20/12)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := content.WriteBlob(ctx, local, "big", bytes.NewReader(data), desc); err != nil {
		t.Fatal(err)
	}
	cs := &countingStore{Store: local}
	x := exporter{images: records{}, content: cs}
	rc, err := x.fetch(ctx, "team/app:1.0", desc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var got bytes.Buffer
	if _, err := io.Copy(struct{ io.Writer }{&got}, rc); err != nil || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("Fetch read %d bytes, %v; want the %d written", got.Len(), err, len(data))
	}
	if want := (len(data) + readSize - 1) / readSize; cs.reads > want+1 {
		t.Errorf("%d reads of a %d-byte blob, want at most %d", cs.reads, len(data), want+1)
	}
}
