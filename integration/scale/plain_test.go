package scale

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

const plainConfig = "sandboxImage: none\nimages:\n  - image: corp.example/team/app:1.4\n"

// TestScalePlainNodes times `preloader status` and `preloader warm --wait`
// against PRELOADER_SCALE_PLAIN (default 1000) plain Node objects in a
// real kube-apiserver: no kubelet, no agent; the test writes each Node's
// status annotation as an agent would.
func TestScalePlainNodes(t *testing.T) {
	if os.Getenv("PRELOADER_SCALE") == "" {
		t.Skip("opt-in: set PRELOADER_SCALE (make scale) to run the scale test")
	}
	n := 1000
	if s := os.Getenv("PRELOADER_SCALE_PLAIN"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			t.Fatalf("PRELOADER_SCALE_PLAIN=%q: want a number of Nodes", s)
		}
	}
	bin, err := harness.BuildPreloader(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	k := harness.StartKube(t)
	c := k.Client
	k.Kubectl(t, "apply", "-k", "../../manifests")
	harness.SetImagesYAML(t, c, plainConfig)
	old := config.Hash([]byte(plainConfig))
	nodes := make([]string, n)
	for i := range nodes {
		nodes[i] = fmt.Sprintf("plain-%04d", i)
	}
	start := time.Now()
	parallel(t, nodes, func(name string) error {
		st := nodestatus.Status{ConfigHash: old, Present: 1, Total: 1, Changed: time.Now().UTC()}
		b, _ := json.Marshal(st)
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels:      map[string]string{"kubernetes.io/hostname": name, nodestatus.LabelReady: "true"},
			Annotations: map[string]string{nodestatus.AnnotationStatus: string(b)}}}
		_, err := c.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{})
		return err
	})
	t.Logf("%d Nodes created in %s", n, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	out, err := exec.Command(bin, "status", "--kubeconfig", k.Kubeconfig).CombinedOutput()
	statusTook := time.Since(start)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	if lines := strings.Count(string(out), "\n"); lines < n {
		t.Errorf("status printed %d lines for %d Nodes:\n%.2000s", lines, n, out)
	}

	// warm --wait: it adds the image, the "agents" (this test) report it
	// on every Node, and warm ends.
	const img = "corp.example/team/new:2.0"
	var stdout, stderr harness.LockedBuffer
	cmd := exec.Command(bin, "warm", "--configmap", harness.AgentNamespace+"/"+harness.AgentConfigMap, "--image", img,
		"--wait", "--timeout", "5m", "--kubeconfig", k.Kubeconfig)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()
	first := fmt.Sprintf("0/%d nodes have %s", n, img)
	for !strings.Contains(stderr.String(), first) {
		select {
		case err := <-done:
			t.Fatalf("warm --wait ended (%v) before %q:\n%s", err, first, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Since(start) > 2*time.Minute {
			t.Fatalf("warm --wait did not print %q in 2m:\n%s", first, stderr.String())
		}
	}
	warmShown := time.Since(start)
	cm, err := c.CoreV1().ConfigMaps(harness.AgentNamespace).Get(context.Background(), harness.AgentConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := cm.Data["images.yaml"]
	hash := config.Hash([]byte(data))
	total := strings.Count(data, "- image:")
	reportStart := time.Now()
	parallel(t, nodes, func(name string) error {
		st := nodestatus.Status{ConfigHash: hash, Present: total, Total: total, Changed: time.Now().UTC()}
		b, _ := json.Marshal(st)
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{nodestatus.AnnotationStatus: string(b)}}})
		_, err := c.CoreV1().Nodes().Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{})
		return err
	})
	reported := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("warm --wait: %v\n%s", err, stderr.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("warm --wait did not end 2m after every Node reported the image:\n%s", stderr.String())
	}
	end := time.Now()
	if want := fmt.Sprintf("%d/%d nodes have %s", n, n, img); !strings.Contains(stderr.String(), want) {
		t.Errorf("warm --wait did not print %q:\n%s", want, stderr.String())
	}
	t.Logf("plain Nodes table:\n"+
		"  %d Nodes, no kubelet                      time\n"+
		"  preloader status                          %s\n"+
		"  warm --wait: edit and first progress line %s\n"+
		"  warm --wait: all Nodes patched (by test)  %s\n"+
		"  warm --wait: ended after the last patch   %s\n"+
		"  warm --wait: in all                       %s",
		n, statusTook.Round(time.Millisecond), warmShown.Round(time.Millisecond),
		reported.Sub(reportStart).Round(time.Millisecond), end.Sub(reported).Round(time.Millisecond), end.Sub(start).Round(time.Millisecond))
}

// parallel runs f for every name, 8 at a time, and fails the test on the
// first error.
func parallel(t *testing.T, names []string, f func(string) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	sem := make(chan struct{}, 8)
	for _, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(name); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}
