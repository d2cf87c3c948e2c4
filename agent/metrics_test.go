package agent

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
)

// TestPullReasonsAreClosed feeds the engine's reasons and free-form ones
// (what a Secret problem, a runtime's error text or a registry host would
// make) and asserts that preloader_pulls_total only ever has the closed
// set of label values, so a fleet's series do not grow with its errors.
func TestPullReasonsAreClosed(t *testing.T) {
	tests := []struct {
		reason failure.Reason
		want   string
	}{
		{reason: failure.Unauthorized, want: "unauthorized"},
		{reason: failure.NotFound, want: "not_found"},
		{reason: failure.Unreachable, want: "network"},
		{reason: failure.Registry, want: "registry"},
		{reason: failure.TLS, want: "tls"},
		{reason: failure.Timeout, want: "timeout"},
		{reason: failure.Stalled, want: "stalled"},
		{reason: failure.NoSpace, want: "no_space"},
		{reason: failure.DiskBudget, want: "disk_budget"},
		{reason: failure.Runtime, want: "runtime"},
		{reason: failure.Invalid, want: "invalid_reference"},
		{reason: failure.Archive, want: "archive"},
		{reason: failure.Import, want: "archive"},
		{reason: failure.Unsupported, want: "unsupported"},
		{reason: failure.NotPresent, want: "not_present"},
		{reason: failure.Canceled, want: "canceled"},
		{reason: failure.Other, want: "other"},
		// The gate's reason names the Secret: one series per Secret name
		// if its text were the label.
		{reason: failure.Credentials("secret kube-preloader/regcred not found"), want: "credentials"},
		{reason: failure.Credentials("serviceaccount kube-preloader/builder not found"), want: "credentials"},
		{reason: failure.Credentials("secret kube-preloader/x: .dockerconfigjson: invalid character 'a' at offset 3"), want: "credentials"},
		// Free-form text that is no reason the engine defines.
		{reason: failure.Note(`failed to resolve reference "corp.example:5000/team/app:1.4": dial tcp 10.0.0.7:5000: connect: connection refused`), want: "other"},
		{reason: failure.Note("registry-1.docker.io"), want: "other"},
		{reason: failure.Reason{}, want: "other"},
		{reason: failure.Note("Unauthorized"), want: "other"}, // not the engine's spelling
	}
	m := newMetrics(nil)
	var results []preload.Result
	for i, tt := range tests {
		if got := tt.reason.Label(); got != tt.want {
			t.Errorf("%q.Label() = %q, want %q", tt.reason, got, tt.want)
		}
		img := fmt.Sprintf("corp.example/team/img-%d:1", i)
		results = append(results, preload.Result{Image: img, Status: preload.StatusFailed, Reason: tt.reason, Attempts: 1})
	}
	results = append(results, preload.Result{Image: "corp.example/ok:1", Status: preload.StatusPulled, Duration: time.Second, Attempts: 1})
	m.countPulls(results)

	labels := failure.Labels()
	closed := append([]string{""}, labels...)
	series := 0
	for _, s := range gatherSeries(t, m, "preloader_pulls_total") {
		series++
		result, reason := s["result"], s["reason"]
		switch {
		case result == resultPulled && reason == "":
		case result == resultFailed && slices.Contains(labels, reason):
		default:
			t.Errorf("preloader_pulls_total{result=%q,reason=%q}: not in the closed set %q", result, reason, closed)
		}
	}
	if want := 1 + len(labels); series != want {
		t.Errorf("preloader_pulls_total has %d series, want %d (pulled, and failed × each reason)", series, want)
	}
}

// TestSeriesPerNodeDoNotGrowWithImages: the agent's own series (Go and
// process collectors aside) are the same number for a config of 2 images
// as for one of 500 with every kind of failure and prune.
func TestSeriesPerNodeDoNotGrowWithImages(t *testing.T) {
	count := func(images int) int {
		m := newMetrics(nil)
		var results []preload.Result
		reasons := append(failure.All(), failure.Credentials("secret ns/x not found"), failure.Note("free-form error text"))
		for i := range images {
			img := fmt.Sprintf("registry-%d.example/team/img-%d:%d", i, i, i)
			st := preload.StatusPulled
			if i%2 == 1 {
				st = preload.StatusFailed
			}
			results = append(results, preload.Result{Image: img, Status: st, Reason: reasons[i%len(reasons)], Attempts: 1, Duration: time.Duration(i) * time.Second})
			m.pruned.WithLabelValues(pruneAction([]string{preload.PruneRemoved, preload.PruneWouldRemove, preload.PruneInUse, preload.PruneFailed, "whatever"}[i%5])).Inc()
		}
		m.countPulls(results)
		n := 0
		for _, mf := range gather(t, m) {
			if strings.HasPrefix(mf.GetName(), "preloader_") {
				n += seriesOf(mf)
			}
		}
		return n
	}
	small, large := count(2), count(500)
	if small != large {
		t.Errorf("series: %d with 2 images, %d with 500: they must not depend on the images", small, large)
	}
	t.Logf("preloader_* series per node: %d, whatever the config", small)
}

type fakeProgress struct {
	noderuntime.Store
	p noderuntime.Transferred
}

func (f fakeProgress) Transferred() noderuntime.Transferred { return f.p }

// TestPullProgressGauges: the byte gauges read the Store's progress when
// scraped, and a Store without one (the CRI's) exports zeros.
func TestPullProgressGauges(t *testing.T) {
	tests := []struct {
		name               string
		store              noderuntime.Store
		received, expected float64
	}{
		{name: "containerd", store: fakeProgress{p: noderuntime.Transferred{InFlight: 2, Done: 300, Total: 1000}}, received: 300, expected: 1000},
		{name: "CRI only", store: nil, received: 0, expected: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMetrics(tt.store)
			m.inFlight.Add(3)
			got := map[string]float64{}
			for _, mf := range gather(t, m) {
				if len(mf.GetMetric()) == 1 && mf.GetMetric()[0].GetGauge() != nil {
					got[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
				}
			}
			want := map[string]float64{"preloader_pull_received_bytes": tt.received, "preloader_pull_expected_bytes": tt.expected, "preloader_pulls_in_flight": 3}
			for name, v := range want {
				if g, ok := got[name]; !ok || g != v {
					t.Errorf("%s = %v (exported %v), want %v", name, g, ok, v)
				}
			}
		})
	}
}

// TestMetricsPassPromtool pipes the agent's /metrics, with every metric
// populated, through `promtool check metrics`: any lint finding fails.
// Without promtool (Debian package prometheus) the test skips, and fails
// under CI=true, as the integration prerequisites do.
func TestMetricsPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" || os.Getenv("PRELOADER_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("promtool not found (Debian package prometheus; run scripts/install-deps.sh): %v", err)
		}
		t.Skipf("promtool not found (run scripts/install-deps.sh; set CI=true to fail instead): %v", err)
	}
	m := newMetrics(fakeProgress{p: noderuntime.Transferred{InFlight: 1, Done: 10, Total: 20}})
	m.countPulls([]preload.Result{
		{Image: "a", Status: preload.StatusPulled, Duration: 3 * time.Second, Attempts: 1},
		{Image: "b", Status: preload.StatusFailed, Reason: failure.NotFound, Attempts: 1},
		{Image: "c", Status: preload.StatusFailed, Reason: failure.Credentials("secret x/y not found"), Attempts: 1},
	})
	m.pruned.WithLabelValues(pruneAction(preload.PruneRemoved)).Inc()
	m.desired.Set(3)
	m.present.Set(1)
	m.failed.Set(2)
	m.lastSuccess.SetToCurrentTime()
	m.syncDuration.Set(1.5)
	srv := httptest.NewServer((&Agent{metrics: m}).Handler())
	defer srv.Close()
	body := getBody(t, srv.URL+"/metrics")
	perPrefix := map[string]int{}
	for line := range strings.Lines(body) {
		if !strings.HasPrefix(line, "#") {
			prefix, _, _ := strings.Cut(line, "_")
			perPrefix[prefix]++
		}
	}
	t.Logf("series per node by prefix: %v", perPrefix)

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("promtool: %v", err)
		}
		t.Errorf("promtool check metrics: %v\n%s", err, out.String())
	}
	if s := strings.TrimSpace(out.String()); s != "" {
		t.Errorf("promtool check metrics findings:\n%s", s)
	}
}

func gather(t *testing.T, m *metrics) []*dto.MetricFamily {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// gatherSeries is the label sets of the series of one metric.
func gatherSeries(t *testing.T, m *metrics, name string) []map[string]string {
	t.Helper()
	var out []map[string]string
	for _, mf := range gather(t, m) {
		if mf.GetName() != name {
			continue
		}
		for _, s := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out = append(out, labels)
		}
	}
	return out
}

// seriesOf is the series a family makes in Prometheus: a histogram's
// buckets, sum and count each count.
func seriesOf(mf *dto.MetricFamily) int {
	n := 0
	for _, s := range mf.GetMetric() {
		if h := s.GetHistogram(); h != nil {
			n += len(h.GetBucket()) + 3 // +Inf, _sum, _count
			continue
		}
		n++
	}
	return n
}

// metricsDoc is the metrics reference an operator reads.
const metricsDoc = "../docs/reference/metrics.md"

// docMetric is a row of the reference's table: | `name` | type | `label`, … | what |
var docMetric = regexp.MustCompile("^\\| `(preloader_[a-z_]+)` \\| ([a-z]+) \\|([^|]*)\\|")

// TestMetricsDoc: the reference documents every preloader_* metric the
// agent registers, with its type and label names, and no other.
func TestMetricsDoc(t *testing.T) {
	data, err := os.ReadFile(metricsDoc)
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{}
	for line := range strings.Lines(string(data)) {
		if m := docMetric.FindStringSubmatch(line); m != nil {
			labels := strings.Fields(strings.NewReplacer("`", "", ",", "").Replace(m[3]))
			slices.Sort(labels)
			documented[m[1]] = m[2] + " " + strings.Join(labels, ",")
		}
	}
	registered := map[string]string{}
	for _, mf := range gather(t, newMetrics(nil)) {
		if !strings.HasPrefix(mf.GetName(), "preloader_") {
			continue
		}
		labels := map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = true
			}
		}
		registered[mf.GetName()] = strings.ToLower(mf.GetType().String()) + " " + strings.Join(slices.Sorted(maps.Keys(labels)), ",")
	}
	if len(registered) == 0 {
		t.Fatal("no preloader_* metric registered")
	}
	for name, want := range registered {
		if got, ok := documented[name]; !ok {
			t.Errorf("%s does not document %s (%s)", metricsDoc, name, want)
		} else if got != want {
			t.Errorf("%s documents %s as %q (type labels), the agent registers %q", metricsDoc, name, got, want)
		}
	}
	for name := range documented {
		if _, ok := registered[name]; !ok {
			t.Errorf("%s documents %s, which the agent does not register", metricsDoc, name)
		}
	}
}
