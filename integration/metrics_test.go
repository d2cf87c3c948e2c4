package integration

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// dashboardPath is the Grafana dashboard the chart ships.
const dashboardPath = "../charts/kube-preloader/dashboards/kube-preloader.json"

// TestMetricsDashboard runs a real agent (real kube-apiserver, containerd
// 2.4.2, registry) that pulls an image through containerd's client, fails
// one that the registry lacks and prunes one the config dropped; a real
// Prometheus scrapes it every second, and every query of the dashboard
// must return series. Its /metrics passes `promtool check metrics`.
func TestMetricsDashboard(t *testing.T) {
	const nodeName = "metrics-node"
	k := harness.StartKube(t)
	c := k.Client
	k.Kubectl(t, "apply", "-k", "../manifests")

	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	pause := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 256 << 10},
		{Repo: "team/dropped", Tag: "1.0", OwnLayers: 1, LayerSize: 32 << 10},
	})
	app, dropped := imgs[0].Ref, imgs[1].Ref
	missing := reg.Host + "/team/missing:1.0" // never pushed: not found

	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})
	createNode(t, c, nodeName, nil, func(n *corev1.Node) {
		n.Spec.Taints = []corev1.Taint{{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}}
	})
	// pullVia containerd: the pulls go through the client path that
	// reports progress, whatever auto would decide for a loopback registry.
	cfg := func(entries ...string) string {
		return agentConfig(entries...) + "pullVia: containerd\nprune: true\n"
	}
	hash := harness.SetImagesYAML(t, c, cfg("  - image: "+app+"\n", "  - image: "+dropped+"\n", "  - image: "+missing+"\n"))
	agent := startAgent(t, k.KubeconfigForPodOn(t, agentNS, agentSA, nodeName), nodeName, ctrd)
	node := func() harness.NodeView { return harness.ViewNode(c, nodeName) }
	agent.Eventually(t, time.Minute, "pause, app and dropped present, missing failed", func() string {
		v := node()
		if why := v.Shows(hash, 3, 4); why != "" {
			return why
		}
		if r := v.FailedReason(missing); r != "not found" {
			return "reason for " + missing + ": " + r
		}
		return ""
	})
	hash = harness.SetImagesYAML(t, c, cfg("  - image: "+app+"\n", "  - image: "+missing+"\n"))
	agent.Eventually(t, time.Minute, "dropped pruned", func() string {
		if why := node().Shows(hash, 2, 3); why != "" {
			return why
		}
		if _, body := agent.Get(t, "/metrics"); !strings.Contains(body, `preloader_pruned_total{action="removed"} 1`) {
			return "preloader_pruned_total{action=\"removed\"} is not 1"
		}
		return ""
	})

	code, body := agent.Get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: HTTP %d", code)
	}
	harness.CheckMetricsLint(t, body)
	checkMetricsDoc(t, body)
	for _, want := range []string{
		"preloader_images_desired 3", "preloader_images_present 2", "preloader_images_failed 1",
		`preloader_pulls_total{reason="not_found",result="failed"}`,
		"preloader_pulls_in_flight 0", "preloader_pull_received_bytes 0", "preloader_pull_expected_bytes 0",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	target := strings.TrimPrefix(agent.Metrics, "http://")
	prom := harness.StartPrometheus(t, []string{target})
	// What Prometheus stored is what the agent served, by the target's
	// label: the node is the instance, no label of the agent's own.
	res := prom.Query(t, `preloader_pulls_total{result="pulled"}`)
	if len(res.Result) != 1 || res.Result[0].Metric["instance"] != target {
		t.Errorf("preloader_pulls_total{result=\"pulled\"}: %+v, want one series of instance %s", res.Result, target)
	}
	prom.CheckDashboard(t, dashboardPath)

	t.Run("CheckDashboard names the panels without data", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.json")
		dash := `{"uid": "bad", "panels": [
			{"id": 1, "title": "fine", "targets": [{"refId": "A", "expr": "preloader_images_present{instance=~\"$instance\"}"}]},
			{"id": 2, "type": "row", "panels": [
				{"id": 3, "title": "typo", "targets": [{"refId": "A", "expr": "preloader_image_present"}]}]},
			{"id": 4, "title": "broken", "targets": [{"refId": "A", "expr": "rate(preloader_pulls_total[$__rate_interval]"}]},
			{"id": 5, "title": "other node", "targets": [{"refId": "A", "expr": "preloader_images_present{instance=\"elsewhere:9741\"}"}]},
			{"id": 6, "title": "unknown variable", "targets": [{"refId": "A", "expr": "preloader_images_present{job=\"$job\"}"}]}]}`
		if err := os.WriteFile(bad, []byte(dash), 0o644); err != nil {
			t.Fatal(err)
		}
		rec := &recordingT{T: t}
		prom.CheckDashboard(rec, bad)
		msg := strings.Join(rec.errs, "\n")
		for _, want := range []string{`panel 3 "typo"`, `panel 4 "broken"`, `panel 5 "other node"`, `panel 6 "unknown variable"`, "4 of 5 queries"} {
			if !strings.Contains(msg, want) {
				t.Errorf("CheckDashboard of a bad dashboard does not say %q:\n%s", want, msg)
			}
		}
		if strings.Contains(msg, `"fine"`) {
			t.Errorf("CheckDashboard blames a panel with data:\n%s", msg)
		}
	})
}

// metricsDoc is the metrics reference an operator reads.
const metricsDoc = "../docs/reference/metrics.md"

var (
	docMetricRow = regexp.MustCompile("(?m)^\\| `(preloader_[a-z_]+)` \\| ([a-z]+) \\|")
	typeLine     = regexp.MustCompile(`(?m)^# TYPE (preloader_\S+) (\S+)$`)
)

// checkMetricsDoc: the preloader_* families that /metrics serves, with
// their types, are those the reference documents. The agent registers
// every one at its start, so all are served whatever the scenario did.
func checkMetricsDoc(t *testing.T, body string) {
	t.Helper()
	doc, err := os.ReadFile(metricsDoc)
	if err != nil {
		t.Fatal(err)
	}
	documented, served := map[string]string{}, map[string]string{}
	for _, m := range docMetricRow.FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = m[2]
	}
	for _, m := range typeLine.FindAllStringSubmatch(body, -1) {
		served[m[1]] = m[2]
	}
	if len(served) == 0 {
		t.Fatalf("/metrics serves no preloader_* family:\n%s", body)
	}
	if !maps.Equal(documented, served) {
		for _, name := range slices.Sorted(maps.Keys(served)) {
			switch doc, ok := documented[name]; {
			case !ok:
				t.Errorf("/metrics serves %s, a %s, which %s does not document", name, served[name], metricsDoc)
			case doc != served[name]:
				t.Errorf("/metrics serves %s, a %s; %s documents a %s", name, served[name], metricsDoc, doc)
			}
		}
		for _, name := range slices.Sorted(maps.Keys(documented)) {
			if _, ok := served[name]; !ok {
				t.Errorf("%s documents %s, which /metrics does not serve", metricsDoc, name)
			}
		}
	}
}

// recordingT is a harness.T whose failures are recorded, not reported.
type recordingT struct {
	*testing.T
	errs []string
}

func (r *recordingT) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recordingT) Fatalf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestPullProgress pulls from a registry behind a 512 KiB/s link, through
// containerd's client and through its CRI, and samples the client's
// progress as a scrape would: mid-pull one pull is in flight with a total
// of the image's missing blobs and a received count that only grows and
// never passes it; after the pull everything is back at zero. The pull's
// own Watch ends with all of its bytes received.
func TestPullProgress(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/big", Tag: "1.0", OwnLayers: 2, LayerSize: 768 << 10},
		{Repo: "team/big", Tag: "2.0", OwnLayers: 2, LayerSize: 768 << 10},
	})
	slow := harness.StartProxy(t, reg.Host, harness.ProxyOptions{BytesPerSec: 512 << 10})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: "registry.example/unused/pause:0"})
	ctx := context.Background()
	c, err := containerd.New(ctx, ctrd.Address, "native", containerd.WithRegistryConfigPath(ctrd.ConfigPath))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	criClient, err := cri.Connect(ctx, ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	store := noderuntime.WithContainerd(criClient, c)

	for i, tt := range []struct {
		via  string
		pull func(ctx context.Context, ref string) error
	}{
		{"containerd", func(ctx context.Context, ref string) error { return c.Pull(ctx, ref, nil, 8) }},
		// The CRI's downloads are looked at once a second, from the
		// moment the CRI has the manifest.
		{"cri", func(ctx context.Context, ref string) error { _, err := store.PullImage(ctx, ref, nil); return err }},
	} {
		t.Run(tt.via, func(t *testing.T) {
			img := imgs[i]
			ref := strings.Replace(img.Ref, reg.Host, slow.Host, 1)
			var watch noderuntime.Bytes
			done := make(chan error, 1)
			go func() { done <- tt.pull(noderuntime.WithWatch(ctx, noderuntime.Watch{Bytes: &watch}), ref) }()
			var samples, midPull int
			var lastDone, maxTotal int64
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
		sample:
			for {
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("pull %s: %v", ref, err)
					}
					break sample
				case <-tick.C:
				}
				inFlight, d, total := c.Transferred()
				samples++
				if inFlight > 1 || d > total || d < lastDone && total == maxTotal {
					t.Errorf("sample %d: in flight %d, received %d of %d (before: %d of %d)", samples, inFlight, d, total, lastDone, maxTotal)
				}
				if inFlight == 1 && total > 0 && d > 0 && d < total {
					midPull++
				}
				lastDone, maxTotal = d, max(maxTotal, total)
			}
			if inFlight, d, total := c.Transferred(); inFlight != 0 || d != 0 || total != 0 {
				t.Errorf("after the pull: in flight %d, received %d of %d; want zeros", inFlight, d, total)
			}
			// The layers and the config the node lacked: the image less its manifest.
			if maxTotal < 2*768<<10 || maxTotal > img.Size {
				t.Errorf("expected bytes peaked at %d, want the layers' %d up to the image's %d", maxTotal, 2*768<<10, img.Size)
			}
			if d, total := watch.Load(); d != total || total != maxTotal {
				t.Errorf("the pull's watch ended at %d of %d, want all of %d", d, total, maxTotal)
			}
			if midPull < 3 {
				t.Errorf("%d of %d samples saw the pull part-way (received between 0 and expected), want several", midPull, samples)
			}
			t.Logf("%d samples, %d part-way; expected bytes %d", samples, midPull, maxTotal)
		})
	}
}
