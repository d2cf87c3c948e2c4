package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestArtifactsMount is what a pod that mounts each of the artifacts of
// TestArtifacts finds, the container made through the CRI as the kubelet
// makes it: the ground TestArtifacts' outcomes stand on. On containerd
// 2.4.2 the image-shaped one mounts with its file; the one with the empty
// config fails ImageVolumeMountFailed; the custom one mounts with none of
// its files. On CRI-O 1.36.3 (overlay storage) each mounts with its file.
func TestArtifactsMount(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	pause := harness.PushTestImages(t, reg, []harness.ImageSpec{harness.PauseImageSpec(t, "team/pause", "1")})[0].Ref
	a := harness.PushArtifacts(t, reg, "models/m")

	// mounted is the host path of the image volume of p's container, as
	// the runtime reports it.
	mounted := func(t *testing.T, p *imageVolumePod) string {
		t.Helper()
		cs, err := p.rs.ContainerStatus(context.Background(), &runtimeapi.ContainerStatusRequest{ContainerId: p.container})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range cs.Status.Mounts {
			if m.ContainerPath == "/models" {
				return m.HostPath
			}
		}
		t.Fatalf("no mount at /models: %v", cs.Status.Mounts)
		return ""
	}
	hasFile := func(t *testing.T, path string) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, a.File) {
			t.Errorf("%s: %d bytes, %v; want the artifact's file (%d bytes)", path, len(got), err, len(a.File))
		}
	}

	t.Run("containerd 2.4.2", func(t *testing.T) {
		ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause})
		p := runImageVolumePod(t, ctrd.Conn(t), "", pause, a.Image)
		if _, err := os.Stat(filepath.Join(ctrd.Path(mounted(t, p)), "model", "weights.bin")); err != nil {
			t.Errorf("image-shaped artifact: %v", err)
		}
		p.remove(t)

		p, err := startImageVolumePod(t, ctrd.Conn(t), "", pause, a.Empty)
		if want := "ImageVolumeMountFailed: failed to unpack image volume: mismatched image rootfs and manifest layers"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("empty config: CreateContainer = %v, want %s", err, want)
		}
		p.remove(t)

		p = runImageVolumePod(t, ctrd.Conn(t), "", pause, a.Custom)
		if entries, err := os.ReadDir(ctrd.Path(mounted(t, p))); err != nil || len(entries) != 0 {
			t.Errorf("custom config: the volume holds %v, %v; want it empty (containerd unpacks none of the artifact)", entries, err)
		}
	})

	t.Run("CRI-O 1.36.3", func(t *testing.T) {
		// Image volumes need a storage driver with mount options: not vfs.
		crio := harness.StartCRIO(t, harness.CRIOOptions{PauseImage: pause, Registries: []*harness.Registry{reg},
			StorageDriver: "overlay"})
		p := runImageVolumePod(t, crio.Conn(t), crio.CgroupParent, pause, a.Image)
		if _, err := os.Stat(filepath.Join(crio.Namespace.Path(mounted(t, p)), "model", "weights.bin")); err != nil {
			t.Errorf("image-shaped artifact: %v", err)
		}
		p.remove(t)
		for _, ref := range []string{a.Empty, a.Custom} {
			p := runImageVolumePod(t, crio.Conn(t), crio.CgroupParent, pause, ref)
			hasFile(t, crio.Namespace.Path(mounted(t, p)))
			p.remove(t)
		}
	})
}
