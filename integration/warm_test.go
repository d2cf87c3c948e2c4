package integration

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

const warmConfig = `# Images every node of this cluster keeps.
images:
  - image: registry.k8s.io/pause:3.10   # the sandbox
  - image: corp.example/team/app:1.4
    pullSecrets: [regcred]
    nodeSelector: {gpu: "true"}
# Pull at most two at once.
concurrency: 2
`

// createConfigMap creates namespace ns and the agent's ConfigMap in it.
func createConfigMap(t testing.TB, c kubernetes.Interface, ns, name, imagesYAML string) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: map[string]string{"images.yaml": imagesYAML}}
	if _, err := c.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// userKubeconfig is a kubeconfig of a ServiceAccount (default/deployer)
// bound to the roles of manifests/rbac-users.yaml that `preloader status`
// needs and, with warm, those `preloader warm --wait` needs: nothing else,
// so that a test run with it proves the roles enough.
func userKubeconfig(t *testing.T, k *harness.Kube, warm bool) string {
	t.Helper()
	ctx := context.Background()
	if _, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-preloader"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	k.Kubectl(t, "apply", "-f", "../manifests/base/rbac-users.yaml")
	k.Kubectl(t, "create", "clusterrolebinding", "deployer-status", "--clusterrole=kube-preloader-status", "--serviceaccount=default:deployer")
	if warm {
		k.Kubectl(t, "-n", "kube-preloader", "create", "rolebinding", "deployer-warm", "--role=preloader-warm", "--serviceaccount=default:deployer")
	}
	return k.KubeconfigFor(t, "default", "deployer")
}

// cmData is the ConfigMap's images.yaml, "" when it cannot be read; safe
// outside the test goroutine.
func cmData(c kubernetes.Interface, ns, name string) string {
	cm, err := c.CoreV1().ConfigMaps(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return cm.Data["images.yaml"]
}

func getImagesYAML(t testing.TB, c kubernetes.Interface, ns, name string) (string, string) {
	t.Helper()
	cm, err := c.CoreV1().ConfigMaps(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cm.Data["images.yaml"], cm.ResourceVersion
}

func TestWarm(t *testing.T) {
	k := harness.StartKube(t)
	c := k.Client
	kc := []string{"--kubeconfig", k.Kubeconfig}

	t.Run("adds-and-keeps-the-rest", func(t *testing.T) {
		createConfigMap(t, c, "warm-a", "preloader-config", warmConfig)
		r := preloader(t, time.Minute, nil, append([]string{"warm", "--configmap", "warm-a/preloader-config", "--image", "nginx:1.27"}, kc...)...)
		if r.code != 0 || !strings.Contains(r.stdout, "added nginx:1.27") {
			t.Fatalf("warm: %s", r)
		}
		got, rv := getImagesYAML(t, c, "warm-a", "preloader-config")
		want := `# Images every node of this cluster keeps.
images:
  - image: registry.k8s.io/pause:3.10 # the sandbox
  - image: corp.example/team/app:1.4
    pullSecrets: [regcred]
    nodeSelector: {gpu: "true"}
  - image: nginx:1.27
# Pull at most two at once.
concurrency: 2
`
		if got != want {
			t.Fatalf("images.yaml after warm:\n%s\nwant:\n%s", got, want)
		}
		if !strings.Contains(r.stdout, config.Hash([]byte(got))) {
			t.Errorf("warm does not print the new config hash %s:\n%s", config.Hash([]byte(got)), r)
		}
		// The same image written another way is already there: no write.
		r = preloader(t, time.Minute, nil, append([]string{"warm", "--configmap", "warm-a/preloader-config", "--image", "docker.io/library/nginx:1.27"}, kc...)...)
		if r.code != 0 || !strings.Contains(r.stdout, "already") {
			t.Fatalf("warm of a listed image: %s", r)
		}
		if _, rv2 := getImagesYAML(t, c, "warm-a", "preloader-config"); rv2 != rv {
			t.Fatalf("warm of a listed image wrote the ConfigMap (resourceVersion %s → %s)", rv, rv2)
		}
	})

	t.Run("empty-config", func(t *testing.T) {
		createConfigMap(t, c, "warm-b", "cfg", "")
		if r := preloader(t, time.Minute, nil, append([]string{"warm", "--configmap", "warm-b/cfg", "--image", "busybox:1.36"}, kc...)...); r.code != 0 {
			t.Fatal(r)
		}
		if got, _ := getImagesYAML(t, c, "warm-b", "cfg"); got != "images:\n  - image: busybox:1.36\n" {
			t.Fatalf("images.yaml: %q", got)
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			code int
			msg  string
		}{
			{[]string{"--configmap", "warm-a/nope", "--image", "x:1"}, 2, "not found"},
			// NAME alone is in kubectl's namespace: -n, else the context's.
			{[]string{"--configmap", "nope", "--image", "x:1"}, 2, "ConfigMap default/nope: configmaps \"nope\" not found"},
			{[]string{"--configmap", "nope", "-n", "warm-a", "--image", "x:1"}, 2, "ConfigMap warm-a/nope: configmaps \"nope\" not found"},
			{[]string{"--configmap", "warm-a/b/c", "--image", "x:1"}, 2, "NAMESPACE/NAME or NAME"},
			{[]string{"--configmap", "warm-a/preloader-config", "--image", "Not A Ref"}, 2, "--image"},
			{[]string{"--configmap", "warm-a/preloader-config"}, 2, "--image is required"},
		} {
			r := preloader(t, time.Minute, nil, append(append([]string{"warm"}, tc.args...), kc...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) {
				t.Errorf("warm %v: want exit %d with %q:\n%s", tc.args, tc.code, tc.msg, r)
			}
		}
		createConfigMap(t, c, "warm-a", "broken", "images: {not: a list}\n")
		if r := preloader(t, time.Minute, nil, append([]string{"warm", "--configmap", "warm-a/broken", "--image", "x:1"}, kc...)...); r.code != 2 || !strings.Contains(r.stderr, "must be a list") {
			t.Errorf("warm into a config whose images is not a list: want exit 2:\n%s", r)
		}
		noRBAC := k.KubeconfigFor(t, "warm-a", "nobody")
		if r := preloader(t, time.Minute, nil, "warm", "--configmap", "warm-a/preloader-config", "--image", "x:1", "--kubeconfig", noRBAC); r.code != 3 {
			t.Errorf("warm without RBAC: want exit 3:\n%s", r)
		}
	})

	// Two warms and a third editor change the ConfigMap at the same time;
	// every one of their edits must survive.
	t.Run("concurrent-editors", func(t *testing.T) {
		createConfigMap(t, c, "warm-c", "preloader-config", warmConfig)
		const perEditor = 5
		var wg sync.WaitGroup
		for _, editor := range []string{"a", "b"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perEditor {
					img := fmt.Sprintf("corp.example/%s/img-%d:1", editor, i)
					r := preloader(t, time.Minute, nil, append([]string{"warm", "--configmap", "warm-c/preloader-config", "--image", img}, kc...)...)
					if r.code != 0 {
						t.Errorf("warm %s: %s", img, r)
					}
				}
			}()
		}
		// A third editor that appends comments to images.yaml in a tight
		// loop, the way a careful controller would (Get, edit, Update).
		var conflicts, edits atomic.Int64
		stop := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			cms := c.CoreV1().ConfigMaps("warm-c")
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
					cm, err := cms.Get(context.Background(), "preloader-config", metav1.GetOptions{})
					if err != nil {
						return err
					}
					cm.Data["images.yaml"] += fmt.Sprintf("# editor c, edit %d\n", i)
					_, err = cms.Update(context.Background(), cm, metav1.UpdateOptions{})
					if apierrors.IsConflict(err) {
						conflicts.Add(1)
					}
					return err
				})
				if err != nil {
					t.Errorf("editor c: %v", err)
					return
				}
				edits.Add(1)
				time.Sleep(5 * time.Millisecond)
			}
		}()
		done := make(chan struct{})
		go func() {
			// Stop editor c once both warms are through.
			for {
				got := cmData(c, "warm-c", "preloader-config")
				if strings.Count(got, "corp.example/a/") == perEditor && strings.Count(got, "corp.example/b/") == perEditor {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			close(stop)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			close(stop)
			t.Error("warms did not finish")
		}
		wg.Wait()
		got, _ := getImagesYAML(t, c, "warm-c", "preloader-config")
		for _, e := range []string{"a", "b"} {
			for i := range perEditor {
				if img := fmt.Sprintf("- image: corp.example/%s/img-%d:1", e, i); !strings.Contains(got, img) {
					t.Errorf("lost %q", img)
				}
			}
		}
		for i := range int(edits.Load()) {
			if !strings.Contains(got, fmt.Sprintf("# editor c, edit %d\n", i)) {
				t.Errorf("lost editor c's edit %d", i)
			}
		}
		for _, keep := range []string{"# Images every node of this cluster keeps.", "nodeSelector: {gpu: \"true\"}", "concurrency: 2", "# the sandbox"} {
			if !strings.Contains(got, keep) {
				t.Errorf("lost %q", keep)
			}
		}
		t.Logf("editor c made %d edits and met %d conflicts", edits.Load(), conflicts.Load())
		if t.Failed() {
			t.Logf("images.yaml:\n%s", got)
		}
	})
}

// fakeAgent reports a node's status for the ConfigMap's current config, as
// the agent would after a sync.
func reportFor(t testing.TB, c kubernetes.Interface, node, ns, name string, missing []string, failed []nodestatus.FailedImage) {
	t.Helper()
	data, _ := getImagesYAML(t, c, ns, name)
	total := strings.Count(data, "- image:")
	setNodeStatus(t, c, node, nodestatus.Status{
		ConfigHash: config.Hash([]byte(data)), Total: total,
		Present: total - len(missing) - len(failed), Missing: missing, Failed: failed, Changed: time.Now().UTC(),
	})
}

func TestWarmWait(t *testing.T) {
	k := harness.StartKube(t)
	c := k.Client
	createConfigMap(t, c, "kube-preloader", "preloader-config", warmConfig)
	old := config.Hash([]byte(warmConfig))
	for _, n := range []string{"n1", "n2"} {
		createNode(t, c, n, &nodestatus.Status{ConfigHash: old, Present: 2, Total: 2, Changed: time.Now()}, nil)
	}
	createNode(t, c, "n3", nil, nil) // runs no agent: warm must not wait for it

	// As a pipeline would run it: with only the roles rbac-users.yaml gives.
	pipeline := userKubeconfig(t, k, true)
	const img = "corp.example/team/new:2.0"
	const norm = "corp.example/team/new:2.0"
	var stdout, stderr harness.LockedBuffer
	cmd := exec.Command(preloaderBin, "warm", "--configmap", "kube-preloader/preloader-config", "--image", img,
		"--wait", "--timeout", "90s", "--kubeconfig", pipeline)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()
	// warm has added the image and shows where nodes stand (none has it)
	// before the agents are played: n1 pulls it at once; n2 first fails,
	// then has it. Each step waits for warm to show the one before, as a
	// slow start (a cold machine) must not skip a line.
	waitStderr := func(want string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(stderr.String(), want) {
			select {
			case err := <-done:
				t.Fatalf("warm --wait ended (%v) before printing %q:\n%s%s", err, want, stdout.String(), stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("warm --wait did not print %q in a minute:\n%s%s", want, stdout.String(), stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitStderr("0/2 nodes have " + img)
	reportFor(t, c, "n1", "kube-preloader", "preloader-config", nil, nil)
	waitStderr("1/2 nodes have " + img)
	reportFor(t, c, "n2", "kube-preloader", "preloader-config", nil, []nodestatus.FailedImage{{Image: norm, Reason: "registry unavailable"}})
	waitStderr("n2: " + img + " failed: registry unavailable")
	select {
	case err := <-done:
		t.Fatalf("warm --wait ended (%v) before n2 has the image:\n%s", err, stderr.String())
	case <-time.After(500 * time.Millisecond):
	}
	reportFor(t, c, "n2", "kube-preloader", "preloader-config", nil, nil)
	var r run
	select {
	case err := <-done:
		r = run{stdout: stdout.String(), stderr: stderr.String()}
		if err != nil {
			r.code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				r.code = ee.ExitCode()
			}
		}
	case <-time.After(time.Minute):
		t.Fatal("warm --wait did not end after every node reported the image")
	}
	if r.code != 0 {
		t.Fatalf("warm --wait: %s", r)
	}
	for _, want := range []string{"0/2 nodes have " + img, "1/2 nodes have " + img, "2/2 nodes have " + img, "n2: " + img + " failed: registry unavailable"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r)
		}
	}

	t.Run("timeout", func(t *testing.T) {
		const img2 = "corp.example/team/never:1"
		s := time.Now()
		res := make(chan run, 1)
		go func() {
			res <- preloader(t, time.Minute, nil, "warm", "--configmap", "kube-preloader/preloader-config", "--image", img2,
				"--wait", "--timeout", "5s", "--kubeconfig", k.Kubeconfig)
		}()
		for !strings.Contains(cmData(c, "kube-preloader", "preloader-config"), img2) {
			if time.Since(s) > 30*time.Second {
				t.Fatal("warm did not add the image")
			}
			time.Sleep(50 * time.Millisecond)
		}
		reportFor(t, c, "n1", "kube-preloader", "preloader-config", nil, nil)
		reportFor(t, c, "n2", "kube-preloader", "preloader-config", []string{img2}, nil)
		r := <-res
		if r.code != 1 || !strings.Contains(r.stderr, "n2 (missing)") || strings.Contains(r.stderr, "n1 (") || strings.Contains(r.stderr, "n3") {
			t.Fatalf("warm --wait --timeout 5s with n2 missing the image: want exit 1 naming n2 only:\n%s", r)
		}
		if d := time.Since(s); d > 15*time.Second {
			t.Errorf("timeout of 5s took %v", d)
		}
	})
}
