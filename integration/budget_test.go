package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
)

// TestDiskBudget is the disk budget on containerd 2.x whose root is a
// 64 MiB tmpfs, with the kubelet's default thresholds (image GC at 85 %,
// eviction below 15 % free: 54.4 MiB may be used): three images of 12 MiB
// of random bytes each, which need 24 MiB on disk (the blob and its
// unpacked layer, as its gzip trailer tells), do not all fit. The last in config
// order is held back with the reason "disk budget", whatever order the
// list gives, and the others are pulled.
func TestDiskBudget(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/one", Tag: "1", OwnLayers: 1, LayerSize: 12 << 20},
		{Repo: "team/two", Tag: "1", OwnLayers: 1, LayerSize: 12 << 20},
		{Repo: "team/three", Tag: "1", OwnLayers: 1, LayerSize: 12 << 20},
	})
	for _, tc := range []struct {
		order []int
		via   string
	}{
		{[]int{0, 1, 2}, "cri"},
		{[]int{2, 0, 1}, "cri"},
		// containerd's client decides once the pull has read its
		// manifest, before any layer.
		{[]int{0, 1, 2}, "containerd"},
		{[]int{1, 2, 0}, "containerd"},
	} {
		order := tc.order
		ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: "registry.example/unused/pause:0", RootSize: 64 << 20})
		dir := t.TempDir()
		y := "sandboxImage: none\npullVia: " + tc.via + "\nimages:\n"
		for _, i := range order {
			y += "  - image: " + imgs[i].Ref + "\n"
		}
		path := filepath.Join(dir, "images.yaml")
		if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		env := []string{noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}
		out, r := onceJSON(t, env, path, "--cri-endpoint", ctrd.Endpoint, "--containerd-address", ctrd.Address)
		last := imgs[order[2]].Ref
		for _, res := range out.Images {
			switch {
			case res.Image == last && (res.Status != preload.StatusFailed || res.Reason != failure.DiskBudget):
				t.Errorf("order %v: %s is %s (%s), want held back by the disk budget:\n%s", order, res.Image, res.Status, res.Reason, r)
			case res.Image != last && res.Status != preload.StatusPulled:
				t.Errorf("order %v: %s is %s (%s), want pulled: an earlier image keeps its room:\n%s", order, res.Image, res.Status, res.Reason, r)
			}
			if res.Image == last {
				t.Logf("pullVia %s, order %v: %s held back: %s", tc.via, order, short(res.Image), res.Error)
				reportFault(faultRow{scenario: fmt.Sprintf("containerd-2: a list larger than the disk budget (64 MiB tmpfs root), pullVia %s, order %v", tc.via, order),
					outcome: "the last image in config order held back, reason disk budget; the earlier ones pulled; exit 1"})
			}
		}
		if r.code != 1 || !strings.Contains(r.stderr, `reason="disk budget"`) {
			t.Errorf("order %v: want exit 1 and the budget in the log:\n%s", order, r)
		}
	}
}

func short(ref string) string { return ref[strings.LastIndex(ref, "/")+1:] }
