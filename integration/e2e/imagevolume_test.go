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

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestImageVolume is scenario v on a node of its own, of the primary
// kind: model weights shipped as an OCI image and mounted as an image
// volume (volumes[].image). `preloader once` preloads the listed image,
// the registry goes down, and a pod mounting it starts and reads the
// preloaded file, and prune keeps the image once the list drops it while
// the pod runs; a pod mounting an image nobody listed is the kubelet's
// verdict without the preloader.
func TestImageVolume(t *testing.T) {
	start := time.Now()
	kind := primary
	kube := harness.StartKube(t)
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	app := workloadImage(t, reg, "team/server", "1.0")
	weightsData := "weights " + rand.Text() // unique per run: the file read is this image's
	vols := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "models/weights", Tag: "1", Files: map[string][]byte{"weights.bin": []byte(weightsData + "\n")}},
		{Repo: "models/unlisted", Tag: "1", Files: map[string][]byte{"weights.bin": []byte("unlisted\n")}},
	})
	weights, unlisted := vols[0].Ref, vols[1].Ref
	n := harness.StartNode(t, harness.NodeOptions{Kube: kube, KubeletVersion: kind.kubelet, Flavor: kind.flavor, Registries: []*harness.Registry{reg}})
	n.WaitServiceAccount(t, "default", "default", time.Minute)
	setup := time.Since(start)

	cfg := filepath.Join(t.TempDir(), "images.yaml")
	write(t, cfg, "sandboxImage: none\n"+nodeDiskBudget+"images:\n  - image: "+app.Ref+"\n  - image: "+weights+"\n")
	env := []string{"PRELOADER_CONTAINERD_CONFIG=" + n.Containerd.ConfigFile}
	res := runCommand(repoRoot, 3*time.Minute, env, preloaderBin, "once", "--config", cfg,
		"--cri-endpoint", n.Containerd.Endpoint, "--containerd-address", n.Containerd.Address)
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
	// The list drops the weights while the pod runs: prune keeps them, as
	// the kubelet's image GC does, by the mount the kubelet asked for.
	write(t, cfg, "sandboxImage: none\nprune: true\n"+nodeDiskBudget+"images:\n  - image: "+app.Ref+"\n")
	res = runCommand(repoRoot, 3*time.Minute, env, preloaderBin, "once", "--config", cfg, "-o", "json",
		"--cri-endpoint", n.Containerd.Endpoint, "--containerd-address", n.Containerd.Address)
	var out struct {
		Pruned []struct{ Image, Action, Reason string }
	}
	if i := strings.Index(res.out, "\n{"); i >= 0 { // stderr's log lines come first
		_ = json.Unmarshal([]byte(res.out[i:]), &out)
	}
	kept := fmt.Sprintf("[{%s kept: in use mounted as an image volume by container default/v-weights/app}]", weights)
	if got := fmt.Sprint(out.Pruned); res.err != nil || res.code != 0 || got != kept {
		t.Errorf("preloader once with prune while v-weights runs: exit %d, %v, pruned %s; want 0 and %s:\n%s", res.code, res.err, got, kept, res.out)
	}
	verdicts.add(verdict{
		scenario:  "v registry down, image volume preloaded",
		before:    before,
		after:     "Running, the volume's file read (IfNotPresent); prune keeps it while mounted",
		toRunning: toRunning,
	})
	for _, name := range []string{"v-unlisted", "v-weights"} {
		_ = n.Client.CoreV1().Pods("default").Delete(context.Background(), name, metav1.DeleteOptions{})
	}
	t.Logf("%s: image volume scenario in %v (cluster, images and node %v; once %v)", kind,
		time.Since(start).Round(time.Millisecond), setup.Round(time.Millisecond), preloaded.Round(time.Millisecond))
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
