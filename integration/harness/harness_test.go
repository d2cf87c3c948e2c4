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

// TestHarnessCRIO proves the CRI-O harness: a CRI pull with credentials
// from a TLS registry whose CA is in its certs directory, and a pod of the
// pulled image running under conmon and runc, with no infra container.
func TestHarnessCRIO(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: "alice", Password: "s3cret-harness", TLS: true})
	img := harness.PushTestImages(t, reg, []harness.ImageSpec{harness.PauseImageSpec(t, "team/pause", "1")})[0]
	// CRI-O makes each pod's storage from its pause image, also without an
	// infra container: this one, once pulled.
	crio := harness.StartCRIO(t, harness.CRIOOptions{PauseImage: img.Ref, Registries: []*harness.Registry{reg}})

	conn := crio.Conn(t)
	images := runtimeapi.NewImageServiceClient(conn)
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	v, err := rs.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil || v.RuntimeName != "cri-o" || "v"+v.RuntimeVersion != harness.CRIOVersion {
		t.Fatalf("Version = %v, %v; want cri-o %s", v, err, harness.CRIOVersion)
	}
	auth := &runtimeapi.AuthConfig{Username: reg.Username, Password: reg.Password}
	if _, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: img.Ref}}); err == nil {
		t.Errorf("PullImage %s without credentials: no error", img.Ref)
	}
	if _, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: img.Ref}, Auth: auth}); err != nil {
		t.Fatalf("PullImage %s: %v", img.Ref, err)
	}
	st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: img.Ref}})
	if err != nil || st.Image == nil || !slices.Contains(st.Image.RepoDigests, img.DigestRef) {
		t.Fatalf("ImageStatus %s = %v, %v; want it with digest %s", img.Ref, st, err, img.DigestRef)
	}

	// A BestEffort pod on the host's network without a pod PID namespace,
	// as the kubelet asks by default: no infra container (drop_infra_ctr),
	// so no negative oom_score_adj.
	ns := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_CONTAINER}
	meta := &runtimeapi.PodSandboxMetadata{Name: "harness", Namespace: "default", Uid: "harness-crio"}
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     meta,
		LogDirectory: t.TempDir(),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent:    crio.CgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns},
		},
	}
	sb, err := rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	ctr, err := rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId:  sb.PodSandboxId,
		SandboxConfig: podCfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "pause"},
			Image:    &runtimeapi.ImageSpec{Image: img.Ref, UserSpecifiedImage: img.Ref},
			LogPath:  "pause.log",
			Linux:    &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: ns}},
		},
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	cs, err := rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr.ContainerId})
	if err != nil || cs.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("ContainerStatus = %v, %v; want running", cs, err)
	}
}
