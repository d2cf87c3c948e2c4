package integration

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// publishAs writes workloads.yaml as preloader controller would for the
// ConfigMap's selections and the workloads given, and returns the hash.
func publishAs(t *testing.T, c kubernetes.Interface, sel string, objs ...any) string {
	t.Helper()
	cfg, err := workloads.Config("test", "images.yaml", map[string]string{"images.yaml": sel})
	if err != nil {
		t.Fatal(err)
	}
	var ws []workloads.Workload
	for _, o := range objs {
		w, ok := workloads.Of(o)
		if !ok {
			t.Fatalf("%T is not a workload", o)
		}
		ws = append(ws, w)
	}
	return setWorkloadsYAML(t, c, workloads.Derive(cfg.Workloads, ws, nil))
}

// TestWarmWorkload runs `preloader warm --workload` as a pipeline would,
// with the roles of rbac-users.yaml and read access to its namespace,
// against a real kube-apiserver and a real agent on the one node of pool
// web that runs one: without --wait it prints where the Deployment's image
// is; with --wait it waits for a new revision's image until the list has
// it and the agent has pulled it; a node of another pool does not count,
// nor does one without an agent; an uncovered workload is refused; a
// wait for an image no node gets ends at --timeout with exit 1.
func TestWarmWorkload(t *testing.T) {
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	k.Kubectl(t, "apply", "-k", "../manifests")
	for _, ns := range []string{"shop", "other"} {
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pipeline := userKubeconfig(t, k, true)
	// What a deployer has where it deploys (view's aggregated rules need a
	// controller-manager, which this API server runs without).
	for _, ns := range []string{"shop", "other"} {
		k.Kubectl(t, "-n", ns, "create", "role", "deployer-read", "--verb=get", "--resource=deployments.apps")
		k.Kubectl(t, "-n", ns, "create", "rolebinding", "deployer-read", "--role=deployer-read", "--serviceaccount=default:deployer")
	}

	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	pushed := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10},
		{Repo: "shop/web", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "shop/web", Tag: "2.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
	})
	pause, web1, web2 := pushed[0].Ref, pushed[1].Ref, pushed[2].Ref
	never := reg.Host + "/shop/web:never"

	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause})
	rt, err := cri.Connect(ctx, ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()

	sel := strings.Replace(agentConfig(), "images:\n", "images: []\nworkloads:\n  - namespaces: [shop]\n", 1)
	harness.SetImagesYAML(t, c, sel)
	// The web Deployment runs on nodes labelled pool=web.
	webPool := map[string]string{"pool": "web"}
	dep := deploymentOf("shop", "web", web1, map[string]string{"app": "web"}, webPool)
	if dep, err = c.AppsV1().Deployments("shop").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AppsV1().Deployments("other").Create(ctx, deploymentOf("other", "web", web1, map[string]string{"app": "web"}, webPool), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	hash := publishAs(t, c, sel, dep)

	pool := func(p string) func(*corev1.Node) {
		return func(n *corev1.Node) { n.Labels["pool"] = p }
	}
	createNode(t, c, "web-1", nil, pool("web"))
	createNode(t, c, "web-2", nil, pool("web")) // runs no agent
	// Another pool's node, still on an old config: it must not count.
	createNode(t, c, "batch-1", &nodestatus.Status{ConfigHash: "0123456789ab", Present: 1, Total: 1, Changed: time.Now()}, pool("batch"))
	agent := startAgent(t, k.KubeconfigForPodOn(t, agentNS, agentSA, "web-1"), "web-1", ctrd)
	agent.Eventually(t, time.Minute, "web-1 has the Deployment's image", func() string { return harness.ViewNode(c, "web-1").Shows(hash, 2, 2) })

	warm := func(timeout time.Duration, args ...string) run {
		return preloader(t, timeout, nil, append([]string{"warm", "--configmap", "kube-preloader/preloader-config", "--kubeconfig", pipeline}, args...)...)
	}

	t.Run("where the images are", func(t *testing.T) {
		r := warm(time.Minute, "--workload", "shop/deploy/web")
		if r.code != 0 {
			t.Fatalf("warm --workload: %s", r)
		}
		for _, want := range []string{web1 + ": 1/1 nodes have it", "without an agent reporting: web-2", "config " + hash} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("stdout lacks %q:\n%s", want, r)
			}
		}
		if strings.Contains(r.stdout, "batch-1") {
			t.Errorf("a node of another pool is named:\n%s", r)
		}
	})

	t.Run("a new revision: --wait until the list has its image and the node pulled it", func(t *testing.T) {
		dep.Spec.Template.Spec.Containers[0].Image = web2
		var err error
		if dep, err = c.AppsV1().Deployments("shop").Update(ctx, dep, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr harness.LockedBuffer
		cmd := exec.Command(preloaderBin, "warm", "--configmap", "kube-preloader/preloader-config", "--kubeconfig", pipeline,
			"--workload", "shop/deployment/web", "--wait", "--timeout", "90s")
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		defer func() { _ = cmd.Process.Kill() }()
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(stderr.String(), web2+": not in ConfigMap kube-preloader/preloader-config's list yet") {
			select {
			case err := <-done:
				t.Fatalf("warm --wait ended (%v) before the list has the image:\n%s", err, stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("warm --wait does not say the image is not listed yet:\n%s", stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		s := time.Now()
		publishAs(t, c, sel, dep)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("warm --wait: %v\n%s%s", err, stdout.String(), stderr.String())
			}
		case <-time.After(time.Minute):
			t.Fatalf("warm --wait did not end once web-1 pulled the image:\n%s", stderr.String())
		}
		t.Logf("list written → warm --wait returned: %v", time.Since(s).Round(time.Millisecond))
		if !strings.Contains(stderr.String(), web2+": 1/1 nodes have it") {
			t.Errorf("stderr lacks the final count:\n%s", stderr.String())
		}
		if criImage(t, rt, web2) == "" {
			t.Errorf("warm --wait returned but CRI ImageStatus(%s) is absent on web-1", web2)
		}
	})

	t.Run("an image no node gets: exit 1 at --timeout, naming the node", func(t *testing.T) {
		dep.Spec.Template.Spec.Containers[0].Image = never
		var err error
		if dep, err = c.AppsV1().Deployments("shop").Update(ctx, dep, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		publishAs(t, c, sel, dep)
		r := warm(time.Minute, "--workload", "shop/deployment/web", "--wait", "--timeout", "10s")
		if r.code != 1 || !strings.Contains(r.stderr, "timed out") || !strings.Contains(r.stderr, "web-1 (") || strings.Contains(r.stderr, "batch-1") {
			t.Errorf("warm --wait for an image that does not exist: want exit 1 naming web-1:\n%s", r)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			workload string
			want     string
		}{
			{"other/deployment/web", "not covered by the workloads section of configmap kube-preloader/preloader-config"},
			{"shop/deployment/nope", `deployments.apps "nope" not found`},
			{"shop/pod/web", `kind "pod" is not one of`},
		} {
			r := warm(time.Minute, "--workload", tc.workload)
			if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("warm --workload %s: want exit 2 saying %q:\n%s", tc.workload, tc.want, r)
			}
		}
		if r := warm(time.Minute, "--workload", "shop/deployment/web", "--image", "x:1"); r.code != 2 || !strings.Contains(r.stderr, "exclude each other") {
			t.Errorf("--workload with --image: want exit 2 saying they exclude each other:\n%s", r)
		}
	})
}
