package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// statusAnnotation is the JSON the agent writes on a Node.
func statusAnnotation(t testing.TB, st nodestatus.Status) string {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// createNode creates a Node as the agent would have left it: the ready label
// and status annotation when st is not nil.
func createNode(t testing.TB, c kubernetes.Interface, name string, st *nodestatus.Status, extra func(*corev1.Node)) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
	if st != nil {
		n.Labels[nodestatus.LabelReady] = fmt.Sprint(st.Ready())
		n.Annotations = map[string]string{nodestatus.AnnotationStatus: statusAnnotation(t, *st)}
	}
	if extra != nil {
		extra(n)
	}
	if _, err := c.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
}

// setNodeStatus patches a Node's label and annotation, as the agent does.
func setNodeStatus(t testing.TB, c kubernetes.Interface, name string, st nodestatus.Status) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"labels":      map[string]string{nodestatus.LabelReady: fmt.Sprint(st.Ready())},
		"annotations": map[string]string{nodestatus.AnnotationStatus: statusAnnotation(t, st)},
	}})
	if _, err := c.CoreV1().Nodes().Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch node %s: %v", name, err)
	}
}

// tableRows parses a tabwriter table into header-keyed rows.
func tableRows(t testing.TB, out string) []map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 {
		t.Fatalf("no table in %q", out)
	}
	header := lines[0]
	var cols []string
	var starts []int
	pos := 0
	for _, f := range strings.Fields(header) {
		i := strings.Index(header[pos:], f) + pos
		cols, starts = append(cols, f), append(starts, i)
		pos = i + len(f)
	}
	var rows []map[string]string
	for _, l := range lines[1:] {
		row := map[string]string{}
		for i, c := range cols {
			end := len(l)
			if i+1 < len(cols) && starts[i+1] < len(l) {
				end = starts[i+1]
			}
			if starts[i] < len(l) {
				row[c] = strings.TrimSpace(l[starts[i]:end])
			}
		}
		rows = append(rows, row)
	}
	return rows
}

func TestStatus(t *testing.T) {
	k := harness.StartKube(t)
	c := k.Client
	now := time.Now().UTC().Truncate(time.Second)
	createNode(t, c, "node-a", &nodestatus.Status{ConfigHash: "aaaaaaaaaaaa", Present: 3, Total: 3, Changed: now.Add(-5 * time.Minute)}, nil)
	createNode(t, c, "node-b", &nodestatus.Status{
		ConfigHash: "bbbbbbbbbbbb", Present: 1, Total: 4, Changed: now.Add(-30 * time.Second),
		Missing: []string{"corp.example/team/app:1.4", "corp.example/team/tool:2.0"},
		Failed:  []nodestatus.FailedImage{{Image: "corp.example/team/db:9", Reason: "not found"}},
	}, nil)
	createNode(t, c, "node-c", nil, nil) // no agent here
	// With only the role rbac-users.yaml gives status.
	kc := []string{"--kubeconfig", userKubeconfig(t, k, false)}

	t.Run("table", func(t *testing.T) {
		r := preloader(t, time.Minute, nil, append([]string{"status"}, kc...)...)
		if r.code != 1 || !strings.Contains(r.stderr, "1 of 2 nodes not ready: node-b") {
			t.Fatalf("want exit 1 naming node-b:\n%s", r)
		}
		rows := tableRows(t, r.stdout)
		if len(rows) != 3 {
			t.Fatalf("want 3 rows:\n%s", r.stdout)
		}
		want := []map[string]string{
			{"NODE": "node-a", "READY": "true", "PRESENT": "3/3", "MISSING": "<none>"},
			{"NODE": "node-b", "READY": "false", "PRESENT": "1/4", "MISSING": "corp.example/team/app:1.4,corp.example/team/tool:2.0,+1 more"},
			{"NODE": "node-c", "READY": "unknown", "PRESENT": "-", "MISSING": "-", "UPDATED": "-"},
		}
		for i, w := range want {
			for col, v := range w {
				if rows[i][col] != v {
					t.Errorf("row %d %s = %q, want %q\n%s", i, col, rows[i][col], v, r.stdout)
				}
			}
		}
		// Ages are printed as kubectl prints them; the run itself takes a second or two.
		for i, ages := range [][]string{{"5m", "5m1s", "5m2s", "5m3s"}, {"30s", "31s", "32s", "33s"}} {
			if u := rows[i]["UPDATED"]; !slices.Contains(ages, u) {
				t.Errorf("row %d UPDATED = %q, want one of %v", i, u, ages)
			}
		}
	})

	t.Run("wide", func(t *testing.T) {
		r := preloader(t, time.Minute, nil, append([]string{"status", "-o", "wide"}, kc...)...)
		rows := tableRows(t, r.stdout)
		if rows[1]["CONFIG"] != "bbbbbbbbbbbb" || rows[1]["FAILED"] != "corp.example/team/db:9: not found" ||
			rows[1]["MISSING"] != "corp.example/team/app:1.4,corp.example/team/tool:2.0,corp.example/team/db:9" {
			t.Fatalf("wide row for node-b: %v\n%s", rows[1], r)
		}
	})

	t.Run("json", func(t *testing.T) {
		r := preloader(t, time.Minute, nil, append([]string{"status", "-o", "json"}, kc...)...)
		var out struct {
			Nodes []struct {
				Name   string
				Ready  string
				Status *nodestatus.Status
			}
		}
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("%v\n%s", err, r)
		}
		if len(out.Nodes) != 3 || out.Nodes[1].Status == nil || out.Nodes[1].Status.Failed[0].Reason != "not found" ||
			!out.Nodes[1].Status.Changed.Equal(now.Add(-30*time.Second)) || out.Nodes[2].Status != nil || out.Nodes[2].Ready != "unknown" {
			t.Fatalf("json: %+v\n%s", out, r)
		}
	})

	t.Run("ready-and-KUBECONFIG", func(t *testing.T) {
		setNodeStatus(t, c, "node-b", nodestatus.Status{ConfigHash: "bbbbbbbbbbbb", Present: 4, Total: 4, Changed: now})
		r := preloader(t, time.Minute, []string{"KUBECONFIG=" + k.Kubeconfig, "HOME=" + t.TempDir()}, "status")
		if r.code != 0 {
			t.Fatalf("all agent nodes ready, want exit 0:\n%s", r)
		}
	})

	t.Run("invalid-annotation", func(t *testing.T) {
		createNode(t, c, "node-d", nil, func(n *corev1.Node) {
			n.Annotations = map[string]string{nodestatus.AnnotationStatus: "{not json"}
		})
		defer c.CoreV1().Nodes().Delete(context.Background(), "node-d", metav1.DeleteOptions{})
		r := preloader(t, time.Minute, nil, append([]string{"status", "-o", "wide"}, kc...)...)
		rows := tableRows(t, r.stdout)
		if r.code != 1 || rows[3]["READY"] != "invalid" || !strings.Contains(rows[3]["FAILED"], nodestatus.AnnotationStatus) {
			t.Fatalf("invalid annotation: want READY invalid and exit 1:\n%s", r)
		}
	})

	// Installed as kubectl-preload, the binary is kubectl's plugin.
	t.Run("kubectl-plugin", func(t *testing.T) {
		kubectl, err := exec.LookPath("kubectl")
		if err != nil {
			kubectl = harness.KubeBinary("kubectl")
			harness.Require(t, "kubectl (scripts/build-kube.sh)", kubectl)
		}
		dir := t.TempDir()
		if err := os.Symlink(preloaderBin, filepath.Join(dir, "kubectl-preload")); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(kubectl, "preload", "status", "-o", "yaml", "--kubeconfig", k.Kubeconfig)
		cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := cmd.Output()
		var nodes struct {
			Nodes []struct{ Name, Ready string }
		}
		if err != nil || yaml.Unmarshal(out, &nodes) != nil || len(nodes.Nodes) != 3 || nodes.Nodes[1].Name != "node-b" || nodes.Nodes[1].Ready != "true" {
			t.Fatalf("kubectl preload status -o yaml: %v, want 3 nodes, node-b ready:\n%s", err, out)
		}
		cmd = exec.Command(kubectl, "preload", "status", "--no-such-flag")
		cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err = cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "Run 'kubectl preload status --help'") {
			t.Fatalf("kubectl preload status --no-such-flag: %v, want exit 2 pointing to kubectl preload's help:\n%s", err, out)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		dead := filepath.Join(t.TempDir(), "dead.kubeconfig")
		os.WriteFile(dead, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600)
		if r := preloader(t, time.Minute, nil, "status", "--kubeconfig", dead); r.code != 3 {
			t.Fatalf("API server down: want exit 3:\n%s", r)
		}
		noRBAC := k.KubeconfigFor(t, "default", "nobody")
		if r := preloader(t, time.Minute, nil, "status", "--kubeconfig", noRBAC); r.code != 3 || !strings.Contains(r.stderr, "forbidden") {
			t.Fatalf("forbidden: want exit 3:\n%s", r)
		}
		if r := preloader(t, time.Minute, nil, "status", "--kubeconfig", filepath.Join(t.TempDir(), "none")); r.code != 2 {
			t.Fatalf("missing kubeconfig: want exit 2:\n%s", r)
		}
		if r := preloader(t, time.Minute, nil, "status", "-o", "xml"); r.code != 2 || !strings.Contains(r.stderr, "table, wide, json, yaml") {
			t.Fatalf("-o xml: want exit 2 naming the formats:\n%s", r)
		}
	})
}

// TestStatus1000Nodes times `preloader status` (process start, List, render)
// against 1000 Nodes that look like kubelet-registered ones: labels, a
// status with 50 images, and the agent's annotation.
func TestStatus1000Nodes(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	k := harness.StartKube(t)
	const n = 1000
	images := make([]corev1.ContainerImage, 50)
	for i := range images {
		images[i] = corev1.ContainerImage{
			Names:     []string{fmt.Sprintf("registry.example/team/image-%02d@sha256:%064d", i, i), fmt.Sprintf("registry.example/team/image-%02d:v1.%d.0", i, i)},
			SizeBytes: int64(i) << 20,
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			name := fmt.Sprintf("node-%04d", i)
			st := nodestatus.Status{ConfigHash: "0123456789ab", Present: 12, Total: 12, Changed: time.Now().Add(-time.Hour)}
			if i%10 == 0 {
				st.Present = 11
				st.Missing = []string{"corp.example/team/app:1.4"}
			}
			node := &corev1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: name,
					Labels: map[string]string{
						"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
						"beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
						"node.kubernetes.io/instance-type": "m6i.2xlarge", "topology.kubernetes.io/zone": "zone-a",
						"topology.kubernetes.io/region": "region-1", nodestatus.LabelReady: fmt.Sprint(st.Ready()),
					},
					Annotations: map[string]string{
						"node.alpha.kubernetes.io/ttl":                           "0",
						"volumes.kubernetes.io/controller-managed-attach-detach": "true",
						nodestatus.AnnotationStatus:                              statusAnnotation(t, st),
					}},
				Spec: corev1.NodeSpec{PodCIDR: fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)},
				Status: corev1.NodeStatus{
					Capacity: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("32Gi")},
					Images:   images,
				},
			}
			if _, err := k.Client.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("created %d nodes in %v", n, time.Since(start).Round(time.Millisecond))

	var times []time.Duration
	for range 5 {
		s := time.Now()
		r := preloader(t, time.Minute, nil, "status", "--kubeconfig", k.Kubeconfig)
		times = append(times, time.Since(s))
		if r.code != 1 || strings.Count(r.stdout, "\n") != n+1 || !strings.Contains(r.stderr, "100 of 1000 nodes not ready") {
			t.Fatalf("status of %d nodes: %s", n, r.String()[:min(2000, len(r.String()))])
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	t.Logf("preloader status, %d nodes: median %v (min %v, max %v)", n, times[2].Round(time.Millisecond),
		times[0].Round(time.Millisecond), times[4].Round(time.Millisecond))

	// For comparison: what a full Node list costs the same client.
	s := time.Now()
	full, err := k.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("full typed Node list (what metadata-only avoids): %d nodes in %v", len(full.Items), time.Since(s).Round(time.Millisecond))
	if times[2] > 3*time.Second {
		t.Errorf("status of %d nodes takes %v, target ≤ 1 s", n, times[2])
	}
}
