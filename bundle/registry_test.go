package bundle_test

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/bundle"
)

// The registry Store as the writer sees it: what a tag names, blobs by
// digest, and ErrNotFound for what the registry lacks.
func TestRegistryStore(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	l, err := archivetest.Layer(7, 2048, false)
	if err != nil {
		t.Fatal(err)
	}
	img, err := archivetest.NewImage("linux/amd64", l)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host + "/team/app:1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var s bundle.Store = bundle.NewRegistry(nil, nil)

	desc, err := s.Resolve(ctx, host+"/team/app:1")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	mt, _ := img.MediaType()
	if desc.Digest.String() != want.String() || desc.MediaType != string(mt) {
		t.Errorf("Resolve = %s %s, want %s %s", desc.MediaType, desc.Digest, mt, want)
	}
	ld, _ := l.Digest()
	size, _ := l.Size()
	rc, err := s.Fetch(ctx, host+"/team/app:1", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.Digest(ld.String()), Size: size})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || int64(len(b)) != size {
		t.Errorf("Fetch layer: %d bytes, %v; want %d", len(b), err, size)
	}

	if _, err := s.Resolve(ctx, host+"/team/app:2"); !errdefs.IsNotFound(err) {
		t.Errorf("Resolve of a missing tag: %v, want ErrNotFound", err)
	}
	missing := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("none"), Size: 4}
	if _, err := s.Fetch(ctx, host+"/team/app:1", missing); !errdefs.IsNotFound(err) {
		t.Errorf("Fetch of a missing blob: %v, want ErrNotFound", err)
	}
	missing.MediaType = ocispec.MediaTypeImageManifest
	if _, err := s.Fetch(ctx, host+"/team/app:1", missing); !errdefs.IsNotFound(err) {
		t.Errorf("Fetch of a missing manifest: %v, want ErrNotFound", err)
	}
}
