package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestImageVolume is scenario v on a node of its own, on containerd 2.x
// and on CRI-O: model weights shipped as an OCI image and mounted as an
// image volume (volumes[].image). `preloader once` preloads the listed
// image, the registry goes down, and a pod mounting it starts and reads
// the preloaded file; a pod mounting an image nobody listed is the
// kubelet's verdict without the preloader. Then the list drops the
// weights while the pod runs: on containerd prune keeps them as mounted,
// on CRI-O prune does not run and says why.
func TestImageVolume(t *testing.T) {
	for _, kind := range []nodeKind{primary, crio} {
		t.Run(kind.String(), func(t *testing.T) { testImageVolume(t, kind) })
	}
}

func testImageVolume(t *testing.T, kind nodeKind) {
	start := time.Now()
	kube := harness.StartKube(t)
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	app := workloadImage(t, reg, "team/server", "1.0")
	weightsData := "weights " + rand.Text() // unique per run: the file read is this image's
	vols := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "models/weights", Tag: "1", Files: map[string][]byte{"weights.bin": []byte(weightsData + "\n")}},
		{Repo: "models/unlisted", Tag: "1", Files: map[string][]byte{"weights.bin": []byte("unlisted\n")}},
	})
	weights, unlisted := vols[0].Ref, vols[1].Ref
	opts := harness.NodeOptions{Kube: kube, KubeletVersion: kind.kubelet, Runtime: kind.runtime, Flavor: kind.flavor, Registries: []*harness.Registry{reg}}
	if kind.runtime == harness.RuntimeCRIO {
		// CRI-O mounts image volumes with its storage driver's mount
		// options, which vfs, the harness's default, has none of.
		opts.StorageDriver = "overlay"
	}
	n := harness.StartNode(t, opts)
	n.WaitServiceAccount(t, "default", "default", time.Minute)
	setup := time.Since(start)

	cfg := filepath.Join(t.TempDir(), "images.yaml")
	write(t, cfg, "sandboxImage: none\n"+nodeDiskBudget+"images:\n  - image: "+app.Ref+"\n  - image: "+weights+"\n")
	var env []string
	args := []string{"once", "--config", cfg, "--cri-endpoint", n.RuntimeEndpoint()}
	if n.Containerd != nil {
		env = []string{"PRELOADER_CONTAINERD_CONFIG=" + n.Containerd.ConfigFile}
		args = append(args, "--containerd-address", n.Containerd.Address)
	}
	res := runCommand(repoRoot, 3*time.Minute, env, preloaderBin, args...)
	if res.err != nil || res.code != 0 || strings.Count(res.out, " pulled ") != 2 {
		t.Fatalf("preloader once: exit %d, %v; want 0 and both images pulled:\n%s", res.code, res.err, res.out)
	}
	preloaded := res.took

	reg.Stop()
	defer reg.Start()

	// The kubelet's verdict on an image volume nobody preloaded.
	createPod(t, n, imageVolumePod(n, "v-unlisted", app.Ref, unlisted))
	p := n.WaitPod(t, "default", "v-unlisted", 2*time.Minute, "failing to pull the volume's image", func(p *corev1.Pod) bool {
		w := harness.WaitingReason(p)
		return w == "ErrImagePull" || w == "ImagePullBackOff"
	})
	before := fmt.Sprintf("unlisted image volume: %s, %s", p.Status.Phase, harness.WaitingReason(p))

	created := time.Now()
	createPod(t, n, imageVolumePod(n, "v-weights", app.Ref, weights))
	n.WaitPodRunning(t, "default", "v-weights", 2*time.Minute)
	toRunning := time.Since(created)
	want := fmt.Sprintf("file /models/weights.bin: %q <nil>", weightsData)
	deadline := time.Now().Add(30 * time.Second)
	for {
		log, err := n.PodLogs("default", "v-weights", "app")
		if err == nil && strings.Contains(log, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("v-weights log does not say %s: %v\n%s", want, err, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The list drops the weights while the pod runs.
	write(t, cfg, "sandboxImage: none\nprune: true\n"+nodeDiskBudget+"images:\n  - image: "+app.Ref+"\n")
	res = runCommand(repoRoot, 3*time.Minute, env, preloaderBin, append(args, "-o", "json")...)
	var out struct {
		Pruned []struct{ Image, Action, Reason string }
	}
	if i := strings.Index(res.out, "\n{"); i >= 0 { // stderr's log lines come first
		_ = json.Unmarshal([]byte(res.out[i:]), &out)
	}
	var after string
	if n.Containerd != nil {
		// prune keeps them, as the kubelet's image GC does, by the mount
		// the kubelet asked for.
		kept := fmt.Sprintf("[{%s kept: in use mounted as an image volume by container default/v-weights/app}]", weights)
		if got := fmt.Sprint(out.Pruned); res.err != nil || res.code != 0 || got != kept {
			t.Errorf("preloader once with prune while v-weights runs: exit %d, %v, pruned %s; want 0 and %s:\n%s", res.code, res.err, got, kept, res.out)
		}
		after = "Running, the volume's file read (IfNotPresent); prune keeps it while mounted"
	} else {
		// The preloader's prune needs containerd: the images are there
		// all the same, nothing is pruned, and the log says why.
		why := `msg="prune failed" err="prune: pruning images (recording which images the preloader brought) needs containerd, and the runtime is cri-o ` + strings.TrimPrefix(harness.CRIOVersion, "v")
		if res.err != nil || res.code != 0 || len(out.Pruned) != 0 || !strings.Contains(res.out, why) {
			t.Errorf("preloader once with prune on CRI-O: exit %d, %v, pruned %v; want 0, none and a log with %s:\n%s", res.code, res.err, out.Pruned, why, res.out)
		}
		after = "Running, the volume's file read (IfNotPresent); prune not run (needs containerd)"
	}
	if !imagePresent(t, n, weights) {
		t.Errorf("%s is gone after prune while v-weights mounts it", weights)
	}
	n.WaitPodRunning(t, "default", "v-weights", 10*time.Second) // still running after prune
	verdicts.add(verdict{
		scenario:  kind.row("v registry down, image volume preloaded"),
		before:    before,
		after:     after,
		toRunning: toRunning,
	})
	for _, name := range []string{"v-unlisted", "v-weights"} {
		_ = n.Client.CoreV1().Pods("default").Delete(context.Background(), name, metav1.DeleteOptions{})
	}
	t.Logf("%s: image volume scenario in %v (cluster, images and node %v; once %v)", kind,
		time.Since(start).Round(time.Millisecond), setup.Round(time.Millisecond), preloaded.Round(time.Millisecond))
}

// imagePresent is whether the node's runtime holds ref, as crictl
// inspecti would say.
func imagePresent(t *testing.T, n *harness.Node, ref string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := runtimeapi.NewImageServiceClient(n.RuntimeConn(t)).ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		t.Fatalf("CRI ImageStatus %s: %v", ref, err)
	}
	return resp.Image != nil
}

// imageVolumePod is a hostNetwork pod running image that mounts volume
// as an image volume at /models and prints its file; both IfNotPresent,
// the default for a tag other than latest.
func imageVolumePod(n *harness.Node, name, image, volume string) *corev1.Pod {
	p := hostPod(n, name, image, corev1.PullIfNotPresent)
	c := &p.Spec.Containers[0]
	c.Env = append(c.Env, corev1.EnvVar{Name: "WORKLOAD_PRINT_FILE", Value: "/models/weights.bin"})
	c.VolumeMounts = []corev1.VolumeMount{{Name: "models", MountPath: "/models", ReadOnly: true}}
	p.Spec.Volumes = []corev1.Volume{{Name: "models", VolumeSource: corev1.VolumeSource{
		Image: &corev1.ImageVolumeSource{Reference: volume, PullPolicy: corev1.PullIfNotPresent},
	}}}
	return p
}
