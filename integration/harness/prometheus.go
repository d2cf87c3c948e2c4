package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/kube-preloader/kube-preloader/integration/harness/daemons"
)

// prometheusBin is Debian's prometheus (package prometheus, which ships
// promtool beside it).
const prometheusBin = "/usr/bin/prometheus"

// Prometheus is a real Prometheus scraping the given targets every second,
// for tests that query what a scrape of the agent gives (the dashboard's
// queries): started by StartPrometheus, killed when the test ends.
//
//	p := harness.StartPrometheus(t, []string{"127.0.0.1:9741"}) // host:port of /metrics
//	p.CheckDashboard(t, "charts/kube-preloader/dashboards/kube-preloader.json")
//	p.Query(t, `preloader_images_present`) // the raw API answer, if a test wants more
type Prometheus struct {
	URL     string   // http://127.0.0.1:PORT
	Targets []string // the scrape targets, as given
	LogPath string

	proc *daemons.Process
}

// prometheusWait bounds each wait for Prometheus: its start, and the
// targets' first scrapes.
const prometheusWait = 60 * time.Second

// StartPrometheus runs Prometheus on a free loopback port with a temporary
// storage dir and one static scrape job, "preloader", of targets
// (host:port, /metrics, every 1 s), and returns once every target is up
// and has been scraped at least three times, so that rate() over a 15 s
// window has samples. A missing prometheus binary skips the test, or fails
// it under CI=true.
func StartPrometheus(t T, targets []string) *Prometheus {
	t.Helper()
	if err := daemons.CheckExecutable(prometheusBin); err != nil {
		if Strict() {
			t.Fatalf("integration prerequisite missing: prometheus: %v; run scripts/install-deps.sh", err)
		}
		t.Skipf("integration prerequisite missing: prometheus: %v (run scripts/install-deps.sh; set CI=true to fail instead of skip)", err)
	}
	if len(targets) == 0 {
		t.Fatal("StartPrometheus: no targets")
	}
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = fmt.Sprintf("%q", tg)
	}
	// 1 s scrapes so that a test waits seconds, not minutes, for samples.
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: preloader
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", "))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ports, err := daemons.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	p := &Prometheus{URL: "http://" + addr, Targets: targets, LogPath: filepath.Join(dir, "prometheus.log")}
	p.proc, err = daemons.StartProcess(p.LogPath, os.Environ(), prometheusBin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		// The console templates of Debian's /etc/prometheus are not ours
		// to read; the API needs none.
		"--web.console.templates="+dir, "--web.console.libraries="+dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.proc.Stop(10 * time.Second); err != nil {
			t.Errorf("prometheus: %v", err)
		}
	})

	p.wait(t, "ready", func() string {
		resp, err := http.Get(p.URL + "/-/ready")
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return resp.Status
		}
		return ""
	})
	// count_over_time(up[1m]) is the scrapes so far of each target;
	// every one must be up, or its metrics are not there to query.
	p.wait(t, "targets up, scraped 3 times", func() string {
		res, err := p.query(`min_over_time(up[1m]) * count_over_time(up[1m])`)
		if err != nil {
			return err.Error()
		}
		scraped := map[string]bool{}
		for _, s := range res.Result {
			if v, err := s.value(); err == nil && v >= 3 {
				scraped[s.Metric["instance"]] = true
			}
		}
		var behind []string
		for _, tg := range targets {
			if !scraped[tg] {
				behind = append(behind, tg)
			}
		}
		if len(behind) > 0 {
			return fmt.Sprintf("not yet up and scraped 3 times: %v (%d series)", behind, len(res.Result))
		}
		return ""
	})
	return p
}

// wait polls cond every 200 ms until it returns "" or prometheusWait has
// passed; then the test fails with cond's last word and Prometheus's log.
func (p *Prometheus) wait(t T, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(prometheusWait)
	for {
		why := cond()
		if why == "" {
			return
		}
		if done, err := p.proc.Exited(); done {
			t.Fatalf("prometheus exited (%v) while waiting for %s:\n%s", err, what, daemons.LogTail(p.LogPath, 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: %s not within %v: %s\n%s", what, prometheusWait, why, daemons.LogTail(p.LogPath, 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// QueryResult is the data of an instant query's answer.
type QueryResult struct {
	ResultType string   `json:"resultType"`
	Result     []Series `json:"-"`
	// Scalar is the value of a scalar or string result.
	Scalar []any `json:"-"`
}

// Series is one series of a vector or matrix result.
type Series struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`  // vector: [time, "value"]
	Values [][]any           `json:"values"` // matrix
}

func (s Series) value() (float64, error) {
	if len(s.Value) != 2 {
		return 0, fmt.Errorf("series %v has no value", s.Metric)
	}
	str, _ := s.Value[1].(string)
	var v float64
	_, err := fmt.Sscan(str, &v)
	return v, err
}

// Query runs an instant query and fails the test if Prometheus refuses it.
func (p *Prometheus) Query(t T, expr string) QueryResult {
	t.Helper()
	res, err := p.query(expr)
	if err != nil {
		t.Fatalf("prometheus query %s: %v", expr, err)
	}
	return res
}

func (p *Prometheus) query(expr string) (QueryResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/api/v1/query?"+url.Values{"query": {expr}}.Encode(), nil)
	if err != nil {
		return QueryResult{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return QueryResult{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return QueryResult{}, fmt.Errorf("read answer: %w", err)
	}
	var ans struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return QueryResult{}, fmt.Errorf("HTTP %d, not the API's JSON: %w: %.200s", resp.StatusCode, err, body)
	}
	if ans.Status != "success" {
		return QueryResult{}, fmt.Errorf("%s: %s", ans.ErrorType, ans.Error)
	}
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(ans.Data, &data); err != nil {
		return QueryResult{}, fmt.Errorf("data: %w", err)
	}
	res := QueryResult{ResultType: data.ResultType}
	switch data.ResultType {
	case "vector", "matrix":
		err = json.Unmarshal(data.Result, &res.Result)
	default:
		err = json.Unmarshal(data.Result, &res.Scalar)
	}
	if err != nil {
		return QueryResult{}, fmt.Errorf("%s result: %w", data.ResultType, err)
	}
	return res, nil
}

// Dashboard variables as CheckDashboard fills them in: Grafana's own
// intervals, and the node (instance) variables matching the targets.
var (
	dashboardIntervals = map[string]string{
		"__rate_interval": "15s", // 4 scrapes at Grafana's default, 15 at ours
		"__interval":      "15s",
		"__range":         "1m",
	}
	// $name, ${name}, ${name:format} and [[name]].
	dashboardVar = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)`)
)

// CheckDashboard reads the Grafana dashboard JSON at path and runs every
// panel target's expr (rows' nested panels too) as an instant query, with
// $__rate_interval and $__interval as 15s, $__range as 1m, $node and
// $instance as a regex of the scraped targets, and ${datasource} dropped
// (it names the data source, this Prometheus). It fails listing each
// panel whose query Prometheus refuses or answers with no series: a panel
// that would show "No data" on a node with a working agent. A series at 0
// or NaN is data.
func (p *Prometheus) CheckDashboard(t T, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	var dash struct {
		UID    string           `json:"uid"`
		Panels []dashboardPanel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard %s: %v", path, err)
	}
	quoted := make([]string, len(p.Targets))
	for i, tg := range p.Targets {
		// A PromQL string holds the regex: its backslashes are doubled.
		quoted[i] = strings.ReplaceAll(regexp.QuoteMeta(tg), `\`, `\\`)
	}
	vars := map[string]string{"node": strings.Join(quoted, "|"), "instance": strings.Join(quoted, "|"), "datasource": ""}
	for k, v := range dashboardIntervals {
		vars[k] = v
	}
	var problems []string
	checked := 0
	for _, panel := range flattenPanels(dash.Panels) {
		for _, tg := range panel.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				continue
			}
			checked++
			expr, unknown := substitute(tg.Expr, vars)
			where := fmt.Sprintf("panel %d %q target %s", panel.ID, panel.Title, tg.RefID)
			if len(unknown) > 0 {
				problems = append(problems, fmt.Sprintf("%s: unknown variables %v in %s", where, unknown, tg.Expr))
				continue
			}
			res, err := p.query(expr)
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("%s: %s: %v", where, expr, err))
			case (res.ResultType == "vector" || res.ResultType == "matrix") && len(res.Result) == 0:
				problems = append(problems, fmt.Sprintf("%s: no series: %s", where, expr))
			}
		}
	}
	if checked == 0 {
		t.Fatalf("dashboard %s: no panel has a query", path)
	}
	if len(problems) > 0 {
		t.Errorf("dashboard %s (uid %s): %d of %d queries show no data against %v:\n  %s",
			path, dash.UID, len(problems), checked, p.Targets, strings.Join(problems, "\n  "))
		return
	}
	t.Logf("dashboard %s: all %d panel queries return series from %v", path, checked, p.Targets)
}

type dashboardPanel struct {
	ID      int    `json:"id"`
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []dashboardPanel `json:"panels"` // a collapsed row's
}

func flattenPanels(panels []dashboardPanel) []dashboardPanel {
	var out []dashboardPanel
	for _, p := range panels {
		out = append(out, p)
		out = append(out, flattenPanels(p.Panels)...)
	}
	return out
}

// substitute fills in vars; unknown is the variables it has no value for.
func substitute(expr string, vars map[string]string) (string, []string) {
	var unknown []string
	out := dashboardVar.ReplaceAllStringFunc(expr, func(m string) string {
		sub := dashboardVar.FindStringSubmatch(m)
		name := sub[1] + sub[2] + sub[3]
		if v, ok := vars[name]; ok {
			return v
		}
		unknown = append(unknown, name)
		return m
	})
	return out, unknown
}

// promtoolBin is Debian's promtool (package prometheus).
const promtoolBin = "/usr/bin/promtool"

// CheckMetricsLint pipes an exposition (a /metrics body) through
// `promtool check metrics` and fails the test on any finding. A missing
// promtool skips the test, or fails it under CI=true.
func CheckMetricsLint(t T, exposition string) {
	t.Helper()
	if err := daemons.CheckExecutable(promtoolBin); err != nil {
		if Strict() {
			t.Fatalf("integration prerequisite missing: promtool: %v; run scripts/install-deps.sh", err)
		}
		t.Skipf("integration prerequisite missing: promtool: %v (run scripts/install-deps.sh; set CI=true to fail instead of skip)", err)
	}
	cmd := exec.Command(promtoolBin, "check", "metrics")
	cmd.Stdin = strings.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
