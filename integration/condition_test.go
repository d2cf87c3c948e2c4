package integration

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// TestAgentConditionAndTaintKey runs the agent under manifests/ (RBAC and
// the node policy, rendered with the same taintKey) with `--taint-key` set
// to a cluster-autoscaler startup taint, on a Node that registered with that taint and with
// preloader.io/not-ready: the condition preloader.io/ImagesReady says
// False while an image fails and True once every image is there, in step
// with the label; the agent removes its taint and leaves
// preloader.io/not-ready, now someone else's; and at rest it writes
// neither the Node nor its status, resync after resync.
func TestAgentConditionAndTaintKey(t *testing.T) {
	const (
		nodeName = "autoscaled-1"
		key      = "startup-taint.cluster-autoscaler.kubernetes.io/preloader"
		resync   = 3 * time.Second // agentConfig's
	)
	k := harness.StartKube(t)
	c := k.Client
	k.Kubectl(t, "apply", "-k", "../manifests")
	applyNodePolicy(t, k, key)
	open := harness.StartRegistry(t, harness.RegistryOptions{})
	imgs := harness.PushTestImages(t, open, []harness.ImageSpec{
		{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10},
		{Repo: "team/app", Tag: "1.0", OwnLayers: 1, LayerSize: 32 << 10},
	})
	pause, app := imgs[0].Ref, imgs[1].Ref
	gone := open.Host + "/team/gone:1.0" // never pushed: fails with not found
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{SandboxImage: pause})

	startup := corev1.Taint{Key: key, Value: "true", Effect: corev1.TaintEffectNoSchedule}
	notReady := corev1.Taint{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}
	createNode(t, c, nodeName, nil, func(n *corev1.Node) { n.Spec.Taints = []corev1.Taint{startup, notReady} })
	hash := harness.SetImagesYAML(t, c, agentConfig("  - image: "+app+"\n", "  - image: "+gone+"\n"))
	agent := harness.StartAgent(t, harness.AgentOptions{Bin: preloaderBin, Kubeconfig: k.KubeconfigForPodOn(t, agentNS, agentSA, nodeName),
		Node: nodeName, Containerd: ctrd, Args: []string{"--taint-key", key}})
	node := func() harness.NodeView { return harness.ViewNode(c, nodeName) }
	hasTaint := func(v harness.NodeView, key string) bool {
		return slices.ContainsFunc(v.Node.Spec.Taints, func(t corev1.Taint) bool { return t.Key == key })
	}

	agent.Eventually(t, time.Minute, "condition False", func() string { return node().ShowsWithCondition(hash, 2, 3) })
	v := node()
	if c := v.Condition; c.Status != corev1.ConditionFalse || c.Reason != nodestatus.ReasonImagesFailed || c.Message != "2/3 images present, 1 failed" {
		t.Errorf("condition while %s fails: %s %s %q", gone, c.Status, c.Reason, c.Message)
	}
	if !hasTaint(v, key) || !hasTaint(v, nodestatus.TaintNotReady) {
		t.Errorf("taints of a node not ready: %v, want both kept", v.Node.Spec.Taints)
	}
	falseAt := v.Condition.LastTransitionTime

	hash = harness.SetImagesYAML(t, c, agentConfig("  - image: "+app+"\n"))
	agent.Eventually(t, time.Minute, "condition True", func() string { return node().ShowsWithCondition(hash, 2, 2) })
	v = node()
	if c := v.Condition; c.Status != corev1.ConditionTrue || c.Reason != nodestatus.ReasonImagesPresent || c.Message != "2/2 images present" {
		t.Errorf("condition when ready: %s %s %q", c.Status, c.Reason, c.Message)
	}
	if !v.Condition.LastTransitionTime.After(falseAt.Time) && v.Condition.LastTransitionTime != falseAt {
		t.Errorf("lastTransitionTime %v, before the False one %v", v.Condition.LastTransitionTime, falseAt)
	}
	// Other conditions, as the kubelet would have them, stay untouched.
	if got := len(v.Node.Status.Conditions); got != 1 {
		t.Errorf("%d conditions on a Node without a kubelet, want the agent's one: %+v", got, v.Node.Status.Conditions)
	}
	if hasTaint(v, key) {
		t.Errorf("taints %v: the ready node keeps %s, the agent's --taint-key", v.Node.Spec.Taints, key)
	}
	if !hasTaint(v, nodestatus.TaintNotReady) {
		t.Errorf("taints %v: the agent removed %s, which is not its --taint-key", v.Node.Spec.Taints, nodestatus.TaintNotReady)
	}

	// At rest: neither the Node nor its status is written, and the
	// condition keeps its heartbeat, the time of its last write.
	patches := func() (float64, float64) {
		return k.Requests(t, "PATCH", "nodes", ""), k.Requests(t, "PATCH", "nodes", "status")
	}
	metaBefore, statusBefore := patches()
	const resyncs = 4
	start, firstSync := time.Now(), lastSync(t, agent)
	time.Sleep(resyncs*resync + resync/2)
	metaAfter, statusAfter := patches()
	// Syncs at rest set the metric too: the last one of the window is
	// at least resyncs-1 intervals after the one before it.
	if synced := lastSync(t, agent) - firstSync; synced < ((resyncs - 1) * resync).Seconds() {
		t.Errorf("the agent's syncs at rest span %.1fs of the %v window: it did not resync", synced, time.Since(start).Round(time.Second))
	}
	rest := node()
	t.Logf("at rest over %v (resync %v, %d resyncs): %.0f PATCH nodes, %.0f PATCH nodes/status", time.Since(start).Round(time.Second), resync, resyncs, metaAfter-metaBefore, statusAfter-statusBefore)
	if metaAfter != metaBefore || statusAfter != statusBefore {
		t.Errorf("writes at rest over %d resyncs: %.0f PATCH nodes, %.0f PATCH nodes/status; want none", resyncs, metaAfter-metaBefore, statusAfter-statusBefore)
	}
	if rest.Node.ResourceVersion != v.Node.ResourceVersion || !rest.Condition.LastHeartbeatTime.Equal(&v.Condition.LastHeartbeatTime) {
		t.Errorf("at rest the Node moved: resourceVersion %s → %s, lastHeartbeatTime %v → %v",
			v.Node.ResourceVersion, rest.Node.ResourceVersion, v.Condition.LastHeartbeatTime, rest.Condition.LastHeartbeatTime)
	}
	if why := rest.ConditionAgrees(); why != "" {
		t.Error(why)
	}
}

// lastSync is the agent's preloader_last_successful_sync_timestamp_seconds:
// a sync at rest sets it too.
func lastSync(t *testing.T, a *harness.Agent) float64 {
	t.Helper()
	_, body := a.Get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, "preloader_last_successful_sync_timestamp_seconds "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no preloader_last_successful_sync_timestamp_seconds:\n%s", body)
	return 0
}

// TestNodeReadinessDocChartValues: the chart values the node readiness
// page shows for a taint key are values the chart takes, and give the
// agent that --taint-key and the node policy the same key.
func TestNodeReadinessDocChartValues(t *testing.T) {
	page, err := os.ReadFile(nodeReadinessPage)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, part := range strings.Split(string(page), "```yaml\n")[1:] {
		if b, _, _ := strings.Cut(part, "```"); strings.Contains(b, "taintKey:") {
			blocks = append(blocks, b)
		}
	}
	if len(blocks) == 0 {
		t.Fatalf("%s shows no chart values with taintKey", nodeReadinessPage)
	}
	for _, b := range blocks {
		var values struct {
			TaintKey string `json:"taintKey"`
		}
		lines := strings.Split(strings.TrimRight(b, " \n"), "\n")
		indent := len(lines[0]) - len(strings.TrimLeft(lines[0], " "))
		for i, l := range lines {
			lines[i] = l[min(indent, len(l)-len(strings.TrimLeft(l, " "))):]
		}
		doc := strings.Join(lines, "\n") + "\n"
		if err := yaml.Unmarshal([]byte(doc), &values); err != nil || values.TaintKey == "" {
			t.Errorf("values block %q: taintKey %q, %v", doc, values.TaintKey, err)
			continue
		}
		file := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		out := harness.MustHelm(t, "", "template", "kube-preloader", chartDir, "-n", harness.AgentNamespace, "-f", file)
		for _, want := range []string{"- --taint-key\n            - \"" + values.TaintKey + "\"", "t.key == '" + values.TaintKey + "'"} {
			if !strings.Contains(out, want) {
				t.Errorf("the chart rendered with the page's values %q lacks %q", doc, want)
			}
		}
	}
}
