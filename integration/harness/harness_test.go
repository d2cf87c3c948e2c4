package harness_test

import (
	"context"
	"slices"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestHarness proves the harness end to end on each containerd flavor: a
// TLS+auth registry, two pushed images sharing base layers, and CRI pulls
// with credentials that ImageStatus and ListImages then see.
func TestHarness(t *testing.T) {
	for _, flavor := range []harness.Flavor{harness.Containerd16, harness.Containerd2} {
		t.Run(string(flavor), func(t *testing.T) { testHarness(t, flavor) })
	}
}

func testHarness(t *testing.T, flavor harness.Flavor) {
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: flavor})
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: "alice", Password: "s3cret-harness", TLS: true})
	reg.TrustIn(ctrd)

	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
		{Repo: "team/other", Tag: "2.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
	})
	a, b := imgs[0], imgs[1]
	if !slices.Equal(a.Layers[:2], b.Layers[:2]) || a.Layers[2] == b.Layers[2] {
		t.Fatalf("want shared base layers and distinct own layers:\n%v\n%v", a.Layers, b.Layers)
	}

	conn := ctrd.Conn(t)
	images := runtimeapi.NewImageServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	auth := &runtimeapi.AuthConfig{Username: reg.Username, Password: reg.Password}

	pull := func(img harness.TestImage) {
		t.Helper()
		resp, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: img.Ref}, Auth: auth})
		if err != nil {
			t.Fatalf("PullImage %s: %v", img.Ref, err)
		}
		st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: img.Ref}})
		if err != nil || st.Image == nil {
			t.Fatalf("ImageStatus %s = %v, %v; want an image", img.Ref, st, err)
		}
		if !slices.Contains(st.Image.RepoDigests, img.DigestRef) {
			t.Errorf("ImageStatus %s: repo digests %v, want %s", img.Ref, st.Image.RepoDigests, img.DigestRef)
		}
		if st.Image.Size != uint64(img.Size) {
			t.Errorf("ImageStatus %s: size %d, harness says %d", img.Ref, st.Image.Size, img.Size)
		}
		list, err := images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
		if err != nil {
			t.Fatalf("ListImages: %v", err)
		}
		if !slices.ContainsFunc(list.Images, func(i *runtimeapi.Image) bool { return i.Id == resp.ImageRef }) {
			t.Errorf("ListImages has no %s (%s)", img.Ref, resp.ImageRef)
		}
	}
	pull(a)

	// The registry comes back on the same port with the same content, and a
	// killed containerd restarts on its old root with the image still there.
	reg.Stop()
	reg.Start()
	ctrd.Kill()
	ctrd.Start()
	st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: a.Ref}})
	if err != nil || st.Image == nil {
		t.Fatalf("ImageStatus %s after containerd restart = %v, %v", a.Ref, st, err)
	}
	pull(b)
}
