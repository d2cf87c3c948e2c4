package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/preload"
)

// TestPruneImageVolume is prune beside a pod that mounts a preloaded image
// as an image volume, the container made through the CRI as the kubelet
// makes it (the volume's image by the ID the runtime reported): on
// containerd 2 the image, dropped from the list, stays while the
// container exists and goes once it is removed. containerd 1.6 refuses
// the container. CRI-O on overlay storage reports the mount the same
// way, where prune would look, but prune needs containerd's records and
// says so; the mounted image stays. CRI-O on vfs refuses the container.
func TestPruneImageVolume(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		harness.PauseImageSpec(t, "team/pause", "1"),
		{Repo: "models/weights", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/kept", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
	})
	pause, weights, kept := imgs[0].Ref, imgs[1].Ref, imgs[2].Ref

	t.Run("containerd 2", func(t *testing.T) {
		ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause})
		node := &testNode{ctrd: ctrd, env: []string{cri.EndpointEnv + "=" + ctrd.Endpoint}, dir: t.TempDir()}
		once := func(extra string, refs ...string) onceOutput {
			t.Helper()
			out, r := onceJSON(t, node.env, writeFile(t, node.dir, "images.yaml", imagesYAML("none", refs...)+extra))
			if r.code != 0 {
				t.Fatalf("once: %s", r)
			}
			return out
		}
		once("", weights, kept)
		pod := runImageVolumePod(t, ctrd.Conn(t), "", pause, weights)

		out := once("prune: true\n", kept)
		want := []preload.Pruned{{Image: weights, Action: preload.PruneInUse, Reason: "mounted as an image volume by container ml/inference/server"}}
		if !samePruned(out.Pruned, want) {
			t.Errorf("while the pod mounts it: pruned %+v, want %+v", out.Pruned, want)
		}
		assertPresent(t, ctrd.Endpoint, weights, kept)

		removed := pod.container
		pod.remove(t)
		// A container removed between prune's list and its status: no
		// mounts, not a failed prune.
		if mounts, err := node.cri(t).ContainerMounts(context.Background(), removed); mounts != nil || err != nil {
			t.Errorf("ContainerMounts of a removed container = %v, %v; want none", mounts, err)
		}
		out = once("prune: true\n", kept)
		if want := []preload.Pruned{{Image: weights, Action: preload.PruneRemoved}}; !samePruned(out.Pruned, want) {
			t.Errorf("once no container mounts it: pruned %+v, want %+v", out.Pruned, want)
		}
		assertAbsent(t, ctrd.Endpoint, weights)
		assertPresent(t, ctrd.Endpoint, kept)
	})

	// containerd 1.6 predates image volumes: it takes the mount for a
	// bind mount of no path, and no pod that mounts one starts there.
	t.Run("containerd 1.6", func(t *testing.T) {
		ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd16, SandboxImage: pause})
		_, err := startImageVolumePod(t, ctrd.Conn(t), "", pause, weights)
		if want := `failed to mkdir "": mkdir : no such file or directory`; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CreateContainer with an image volume on containerd 1.6: %v, want an error with %s", err, want)
		}
	})

	t.Run("CRI-O", func(t *testing.T) {
		// CRI-O mounts image volumes with its storage driver's mount
		// options, which vfs, the harness's default, has none of.
		crio := harness.StartCRIO(t, harness.CRIOOptions{PauseImage: pause, Registries: []*harness.Registry{reg},
			StorageDriver: "overlay"})
		env := []string{cri.EndpointEnv + "=" + crio.Endpoint}
		dir := t.TempDir()
		r := preloader(t, time.Minute, env, "once", "--config", writeFile(t, dir, "images.yaml", imagesYAML("none", weights, kept)))
		if r.code != 0 {
			t.Fatalf("once: %s", r)
		}
		runImageVolumePod(t, crio.Conn(t), crio.CgroupParent, pause, weights)

		r = preloader(t, time.Minute, env, "once", "--config", writeFile(t, dir, "images.yaml", imagesYAML("none", kept)+"prune: true\n"))
		if r.code != 0 {
			t.Fatalf("once with prune: %s", r)
		}
		if want := `msg="prune failed" err="prune: pruning images (recording which images the preloader brought) needs containerd`; !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %s\n%s", want, r)
		}
		assertPresent(t, crio.Endpoint, weights, kept)
	})

	// On vfs, the harness's default and a driver some nodes run, CRI-O
	// mounts no image volume, preloaded or not.
	t.Run("CRI-O vfs", func(t *testing.T) {
		crio := harness.StartCRIO(t, harness.CRIOOptions{PauseImage: pause, Registries: []*harness.Registry{reg}})
		env := []string{cri.EndpointEnv + "=" + crio.Endpoint}
		if r := preloader(t, time.Minute, env, "once", "--config", writeFile(t, t.TempDir(), "images.yaml", imagesYAML("none", weights))); r.code != 0 {
			t.Fatalf("once: %s", r)
		}
		_, err := startImageVolumePod(t, crio.Conn(t), crio.CgroupParent, pause, weights)
		if want := "vfs driver does not support mount options"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CreateContainer with an image volume on CRI-O with vfs: %v, want an error with %s", err, want)
		}
	})
}

// imageVolumePod is a pod sandbox with one running container that mounts
// an image as an image volume.
type imageVolumePod struct {
	rs             runtimeapi.RuntimeServiceClient
	sandbox, image string
	container      string
}

// runImageVolumePod runs, through the CRI at conn, a pod whose container
// (of image run) mounts volume at /models, as the kubelet asks: the
// volume's ImageSpec holds the image ID the runtime reports, and the
// container's status must report that mount back, which is how the
// kubelet's image GC and prune learn it.
func runImageVolumePod(t *testing.T, conn *grpc.ClientConn, cgroupParent, run, volume string) *imageVolumePod {
	t.Helper()
	p, err := startImageVolumePod(t, conn, cgroupParent, run, volume)
	if err != nil {
		t.Fatalf("CreateContainer with an image volume of %s: %v", volume, err)
	}
	return p
}

// startImageVolumePod is runImageVolumePod, but returns the runtime's
// refusal of the container, as the kubelet reports it
// (CreateContainerError).
func startImageVolumePod(t *testing.T, conn *grpc.ClientConn, cgroupParent, run, volume string) (*imageVolumePod, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	is := runtimeapi.NewImageServiceClient(conn)
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	// As the kubelet with IfNotPresent: pulled only when absent.
	id := func(ref string) string {
		t.Helper()
		st, err := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if err != nil {
			t.Fatalf("ImageStatus %s: %v", ref, err)
		}
		if st.Image != nil {
			return st.Image.Id
		}
		if _, err := is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
			t.Fatalf("PullImage %s: %v", ref, err)
		}
		st, err = is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if err != nil || st.Image == nil {
			t.Fatalf("ImageStatus %s = %v, %v", ref, st, err)
		}
		return st.Image.Id
	}
	runID, volumeID := id(run), id(volume)

	ns := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_CONTAINER}
	labels := map[string]string{"io.kubernetes.pod.name": "inference", "io.kubernetes.pod.namespace": "ml"}
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "inference", Namespace: "ml", Uid: "imagevolume-" + t.Name()},
		LogDirectory: t.TempDir(),
		Labels:       labels,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent:    cgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns},
		},
	}
	sb, err := rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	p := &imageVolumePod{rs: rs, sandbox: sb.PodSandboxId, image: volumeID}
	t.Cleanup(func() { p.remove(t) })
	ctr, err := rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId:  sb.PodSandboxId,
		SandboxConfig: podCfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "server"},
			Labels:   labels,
			Image:    &runtimeapi.ImageSpec{Image: runID, UserSpecifiedImage: run},
			Mounts:   []*runtimeapi.Mount{{ContainerPath: "/models", Readonly: true, Image: &runtimeapi.ImageSpec{Image: volumeID, UserSpecifiedImage: volume}}},
			LogPath:  "server.log",
			Linux:    &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: ns}},
		},
	})
	if err != nil {
		return p, err
	}
	p.container = ctr.ContainerId
	if _, err := rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	cs, err := rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr.ContainerId})
	if err != nil || cs.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("ContainerStatus = %v, %v; want running", cs, err)
	}
	mounted := false
	for _, m := range cs.Status.Mounts {
		mounted = mounted || m.GetImage().GetImage() == volumeID
	}
	if !mounted {
		t.Fatalf("the running container's status reports no image volume of %s (%s): mounts %v", volume, volumeID, cs.Status.Mounts)
	}
	return p, nil
}

// remove stops and removes the container and its sandbox, as the kubelet
// does once the pod is deleted.
func (p *imageVolumePod) remove(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if p.container != "" {
		if _, err := p.rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: p.container, Timeout: 1}); err != nil {
			t.Errorf("StopContainer: %v", err)
		}
		if _, err := p.rs.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: p.container}); err != nil {
			t.Errorf("RemoveContainer: %v", err)
		}
		p.container = ""
	}
	if p.sandbox != "" {
		if _, err := p.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.sandbox}); err != nil {
			t.Errorf("StopPodSandbox: %v", err)
		}
		if _, err := p.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.sandbox}); err != nil {
			t.Errorf("RemovePodSandbox: %v", err)
		}
		p.sandbox = ""
	}
}

func assertAbsent(t *testing.T, endpoint string, refs ...string) {
	t.Helper()
	ctx := context.Background()
	c, err := cri.Connect(ctx, endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, ref := range refs {
		if img, err := c.ImageStatus(ctx, ref); err != nil || img != nil {
			t.Errorf("CRI ImageStatus(%s) = %v, %v; want absent", ref, img, err)
		}
	}
}
