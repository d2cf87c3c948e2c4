package bundle_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/bundle"
)

var amd64 = bundle.Platforms{List: []ocispec.Platform{{OS: "linux", Architecture: "amd64"}}}

func TestWriteRoundTrip(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	layer := func(seed uint64) v1.Layer {
		l, err := archivetest.Layer(seed, 8192, false)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	image := func(platform string, layers ...v1.Layer) v1.Image {
		img, err := archivetest.NewImage(platform, layers...)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	push := func(ref string, w remote.Taggable) {
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		switch v := w.(type) {
		case v1.ImageIndex:
			err = remote.WriteIndex(r, v)
		case v1.Image:
			err = remote.Write(r, v)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	base := layer(1)
	app := image("linux/amd64", base, layer(2))
	tool := image("linux/amd64", base, layer(3))
	multiAMD := image("linux/amd64", base, layer(4))
	multi := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: image("linux/arm64", layer(5)), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: multiAMD, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	push(host+"/team/app:1", app)
	push(host+"/mirror/k8s/tool:2", tool)
	push(host+"/multi:3", multi)

	sources := []bundle.Source{
		{Name: host + "/team/app:1"},
		// As from a mirror: fetched there, recorded under the canonical name.
		{Name: "registry.k8s.io/tool:2", From: host + "/mirror/k8s/tool:2"},
		{Name: host + "/multi:3"},
	}
	var buf, progress bytes.Buffer
	opts := bundle.Options{Platforms: amd64, Progress: &progress, ProgressEvery: time.Millisecond}
	if _, err := bundle.Write(context.Background(), &buf, bundle.NewRegistry(nil, nil), sources, opts); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bundle.tar"), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := archive.Open(dir, "bundle.tar")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	contents, err := archive.Inspect(context.Background(), a, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	got := contents.Images
	for i, want := range []v1.Image{app, tool, multiAMD} {
		cfg, _ := want.ConfigName()
		if i >= len(got) || string(got[i].Config) != cfg.String() || !slices.Equal(got[i].Names, []string{sources[i].Name}) {
			t.Errorf("image %d: got %+v, want %s named %s", i, got, cfg, sources[i].Name)
		}
	}

	// The base layer all three share is stored once; arm64's is not there.
	baseDigest, _ := base.Digest()
	armOnly, _ := layer(5).Digest()
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	count := map[string]int{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		count[hdr.Name]++
	}
	if n := count["blobs/sha256/"+baseDigest.Hex]; n != 1 {
		t.Errorf("base layer stored %d times, want once", n)
	}
	if n := count["blobs/sha256/"+armOnly.Hex]; n != 0 {
		t.Errorf("arm64 layer stored %d times, want not at all", n)
	}
	if !strings.Contains(progress.String(), "[3/3] "+host+"/multi:3") {
		t.Errorf("progress does not report each image:\n%s", progress.String())
	}
}

func TestWriteMissingPlatform(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	l, err := archivetest.Layer(1, 1024, false)
	if err != nil {
		t.Fatal(err)
	}
	img, err := archivetest.NewImage("linux/arm64", l)
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	ref, _ := name.ParseReference(host + "/arm:1")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	_, err = bundle.Write(context.Background(), io.Discard, bundle.NewRegistry(nil, nil), []bundle.Source{{Name: host + "/arm:1"}}, bundle.Options{Platforms: amd64})
	if err == nil || !strings.Contains(err.Error(), "arm:1") {
		t.Errorf("err = %v, want a failure naming the image", err)
	}
}
