package preload_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

func testConfig() *config.Config {
	cfg := config.Defaults()
	cfg.Retry = config.Retry{InitialDelay: 5 * time.Millisecond, MaxDelay: 20 * time.Millisecond}
	cfg.PullTimeout = time.Second
	return &cfg
}

func images(names ...string) []config.Image {
	var out []config.Image
	for _, n := range names {
		out = append(out, config.Image{Ref: n, Name: n})
	}
	return out
}

func connect(t *testing.T, s *critest.Server) *cri.Client {
	t.Helper()
	c, err := cri.Connect(context.Background(), s.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRunOutcomes(t *testing.T) {
	user := &runtimeapi.AuthConfig{Username: "u", Password: "p"}
	other := &runtimeapi.AuthConfig{Username: "v", Password: "q"}
	tests := []struct {
		name       string
		auths      []*runtimeapi.AuthConfig
		pull       func(attempt int, auth *runtimeapi.AuthConfig) error
		wantStatus preload.Status
		wantReason failure.Reason
		wantPulls  int
		wantTries  int
	}{
		{
			name:       "pulled",
			pull:       func(int, *runtimeapi.AuthConfig) error { return nil },
			wantStatus: preload.StatusPulled, wantPulls: 1, wantTries: 1,
		},
		{
			name: "not found is permanent",
			pull: func(int, *runtimeapi.AuthConfig) error {
				return critest.Errorf("failed to resolve reference: not found")
			},
			wantStatus: preload.StatusFailed, wantReason: failure.NotFound, wantPulls: 1, wantTries: 1,
		},
		{
			name:  "second credential works",
			auths: []*runtimeapi.AuthConfig{other, user},
			pull: func(_ int, a *runtimeapi.AuthConfig) error {
				if a != nil && a.Username == "u" {
					return nil
				}
				return critest.Errorf("pulling from host failed with status code [manifests 1.0]: 401 Unauthorized")
			},
			wantStatus: preload.StatusPulled, wantPulls: 2, wantTries: 1,
		},
		{
			name:  "unauthorized after every credential and anonymous",
			auths: []*runtimeapi.AuthConfig{other, user},
			pull: func(int, *runtimeapi.AuthConfig) error {
				return critest.Errorf("failed to authorize: 401 Unauthorized")
			},
			wantStatus: preload.StatusFailed, wantReason: failure.Unauthorized, wantPulls: 3, wantTries: 1,
		},
		{
			name: "transient failures are retried",
			pull: func(attempt int, _ *runtimeapi.AuthConfig) error {
				if attempt < 3 {
					return critest.Errorf("dial tcp 127.0.0.1:5000: connect: connection refused")
				}
				return nil
			},
			wantStatus: preload.StatusPulled, wantPulls: 3, wantTries: 3,
		},
		{
			// CRI-O's pull_progress_timeout cuts a pull whose progress
			// stopped and answers Canceled: a stall, retried.
			name: "canceled by the runtime is a stall, retried",
			pull: func(attempt int, _ *runtimeapi.AuthConfig) error {
				if attempt < 2 {
					return status.Error(codes.Canceled, "unable to pull image: writing blob: storing blob to file: context canceled")
				}
				return nil
			},
			wantStatus: preload.StatusPulled, wantPulls: 2, wantTries: 2,
		},
		{
			name: "503 is retried",
			pull: func(attempt int, _ *runtimeapi.AuthConfig) error {
				if attempt < 2 {
					return critest.Errorf("unexpected status from GET request: 503 Service Unavailable")
				}
				return nil
			},
			wantStatus: preload.StatusPulled, wantPulls: 2, wantTries: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			var n atomic.Int32
			s.Pull = func(_ context.Context, _ string, auth *runtimeapi.AuthConfig) error {
				attempt := int(n.Add(1))
				if len(tt.auths) > 0 {
					attempt = (attempt-1)/(len(tt.auths)+1) + 1
				}
				return tt.pull(attempt, auth)
			}
			e := &preload.Engine{Store: noderuntime.CRIOnly(connect(t, s)), Auth: func(config.Image) []*runtimeapi.AuthConfig { return tt.auths }}
			res, err := e.Run(context.Background(), testConfig(), images("reg.example/app:1"))
			if err != nil {
				t.Fatal(err)
			}
			r := res[0]
			if r.Status != tt.wantStatus || r.Reason != tt.wantReason {
				t.Errorf("got %s/%q (%s), want %s/%q", r.Status, r.Reason, r.Error, tt.wantStatus, tt.wantReason)
			}
			if got := s.Calls("PullImage"); got != tt.wantPulls {
				t.Errorf("PullImage calls = %d, want %d", got, tt.wantPulls)
			}
			if r.Attempts != tt.wantTries {
				t.Errorf("attempts = %d, want %d", r.Attempts, tt.wantTries)
			}
			if r.Status == preload.StatusPulled && r.Size == 0 {
				t.Errorf("pulled image has no size from ImageStatus")
			}
		})
	}
}

func TestRunPullsOnlyWhatIsMissing(t *testing.T) {
	s := critest.Start(t)
	s.Add("reg.example/a:1", 10)
	e := &preload.Engine{Store: noderuntime.CRIOnly(connect(t, s))}
	imgs := images("reg.example/a:1", "reg.example/b:1", "reg.example/b:1")

	res, err := e.Run(context.Background(), testConfig(), imgs)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Status != preload.StatusPresent || res[1].Status != preload.StatusPulled {
		t.Fatalf("first run: %+v", res)
	}
	if got := s.Calls("PullImage"); got != 1 {
		t.Fatalf("PullImage calls = %d, want 1 (identical references pulled once)", got)
	}

	res, err = e.Run(context.Background(), testConfig(), imgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Status != preload.StatusPresent {
			t.Errorf("second run: %s is %s, want present", r.Image, r.Status)
		}
	}
	if got := s.Calls("PullImage"); got != 1 {
		t.Errorf("second run made PullImage calls: total %d, want 1", got)
	}
	if got := s.Calls("ListImages"); got != 2 {
		t.Errorf("ListImages calls = %d, want one per run", got)
	}
}

func TestRunDigestReference(t *testing.T) {
	s := critest.Start(t)
	const ref = "reg.example/a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	s.Add(ref, 10)
	s.Pull = func(context.Context, string, *runtimeapi.AuthConfig) error { return nil }
	e := &preload.Engine{Store: noderuntime.CRIOnly(connect(t, s))}
	res, err := e.Run(context.Background(), testConfig(), images(ref))
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != preload.StatusPresent {
		t.Fatalf("digest reference listed by digest: %+v", res[0])
	}
	if s.Calls("PullImage") != 0 {
		t.Errorf("pulled an image listed by its digest")
	}
}

func TestRunConcurrencyBound(t *testing.T) {
	s := critest.Start(t)
	var inFlight, peak atomic.Int32
	s.Pull = func(context.Context, string, *runtimeapi.AuthConfig) error {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(30 * time.Millisecond)
		return nil
	}
	cfg := testConfig()
	cfg.Concurrency = 3
	e := &preload.Engine{Store: noderuntime.CRIOnly(connect(t, s))}
	res, err := e.Run(context.Background(), cfg, images("r/a:1", "r/b:1", "r/c:1", "r/d:1", "r/e:1", "r/f:1", "r/g:1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Status != preload.StatusPulled {
			t.Errorf("%s: %s", r.Image, r.Status)
		}
	}
	if p := peak.Load(); p != 3 {
		t.Errorf("peak concurrent pulls = %d, want 3", p)
	}
}

func TestRunPullTimeoutThenCancel(t *testing.T) {
	s := critest.Start(t)
	s.Pull = func(ctx context.Context, _ string, _ *runtimeapi.AuthConfig) error {
		<-ctx.Done() // a stalled registry
		return ctx.Err()
	}
	cfg := testConfig()
	cfg.PullTimeout = 50 * time.Millisecond
	e := &preload.Engine{Store: noderuntime.CRIOnly(connect(t, s))}
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := e.Run(ctx, cfg, images("r/stalled:1"))
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("run took %s after its context ended", took)
	}
	r := res[0]
	if r.Status != preload.StatusFailed || r.Reason != failure.Timeout {
		t.Errorf("got %s/%q (%s), want failed/timeout", r.Status, r.Reason, r.Error)
	}
	if r.Attempts < 2 {
		t.Errorf("attempts = %d: pullTimeout should cut each stalled attempt and retry", r.Attempts)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		msg       string
		reason    failure.Reason
		transient bool
	}{
		{`failed to pull and unpack image "127.0.0.1:5000/x:1": failed to resolve reference "127.0.0.1:5000/x:1": 127.0.0.1:5000/x:1: not found`, failure.NotFound, false},
		{`failed to resolve reference: pulling from host 127.0.0.1:5000 failed with status code [manifests 1]: 401 Unauthorized`, failure.Unauthorized, false},
		{`failed to do request: Head "https://127.0.0.1:5000/v2/x/manifests/1": dial tcp 127.0.0.1:5000: connect: connection refused`, failure.Unreachable, true},
		{`failed to do request: Head "https://127.0.0.1:5000/v2/": tls: failed to verify certificate: x509: certificate signed by unknown authority`, failure.TLS, false},
		{`failed to copy: httpReadSeeker: failed open: unexpected status code https://r/v2/x/blobs/sha256:1: 503 Service Unavailable`, failure.Registry, true},
		{`failed to extract layer: write /var/lib/containerd/x: no space left on device`, failure.NoSpace, false},
		// CRI-O 1.36, without or with wrong credentials (the registry says 401 to both).
		{`unable to pull image or OCI artifact: pull image err: initializing source docker://127.0.0.1:5000/x:1: reading manifest 1 in 127.0.0.1:5000/x: authentication required; artifact err: image reference: get manifest from ref: create image source: reading manifest 1 in 127.0.0.1:5000/x: authentication required`, failure.Unauthorized, false},
		{`something new`, failure.Other, true},
	}
	for _, tt := range tests {
		reason, transient := preload.Classify(critest.Errorf("%s", tt.msg))
		if reason != tt.reason || transient != tt.transient {
			t.Errorf("Classify(%q) = %q, %v; want %q, %v", tt.msg, reason, transient, tt.reason, tt.transient)
		}
	}
	// From the containerd client rather than the CRI: containerd itself is
	// down, though the text says "connection refused".
	down := fmt.Errorf("pull x: %w", fmt.Errorf("connection error: dial unix /run/containerd/containerd.sock: connect: connection refused: %w", errdefs.ErrUnavailable))
	if reason, transient := preload.Classify(down); reason != failure.Runtime || !transient {
		t.Errorf("Classify(%v) = %q, %v; want %q, transient", down, reason, transient, failure.Runtime)
	}
}

func TestPlan(t *testing.T) {
	cfg := config.Defaults()
	cfg.Images = []config.Image{
		{Name: "r/a:1"},
		{Name: "r/gpu:1", NodeSelector: map[string]string{"gpu": "true"}},
		{Name: "r/pause:3", NodeSelector: map[string]string{"never": "x"}},
		// A derived image: in pool a or b, or on node n9 by name.
		{Name: "r/pool:1", NodeAffinity: []corev1.NodeSelectorTerm{
			{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "pool", Operator: corev1.NodeSelectorOpIn, Values: []string{"a", "b"}}}},
			{MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"n9"}}}},
		}},
		{Name: "r/bad:1", NodeAffinity: []corev1.NodeSelectorTerm{
			{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "pool", Operator: "Near", Values: []string{"a"}}}},
		}},
	}
	tests := []struct {
		name    string
		node    string
		labels  map[string]string
		sandbox preload.Sandbox
		apply   []string
		skipped []string
	}{
		{"unknown node", "", nil, preload.Sandbox{}, []string{"r/a:1"}, []string{"r/gpu:1", "r/pause:3", "r/pool:1", "r/bad:1"}},
		{"no labels", "n1", nil, preload.Sandbox{}, []string{"r/a:1"}, []string{"r/gpu:1", "r/pause:3", "r/pool:1", "r/bad:1"}},
		{"gpu node", "n1", map[string]string{"gpu": "true"}, preload.Sandbox{}, []string{"r/a:1", "r/gpu:1"}, []string{"r/pause:3", "r/pool:1", "r/bad:1"}},
		{"affinity by label", "n1", map[string]string{"pool": "b"}, preload.Sandbox{}, []string{"r/a:1", "r/pool:1"}, []string{"r/gpu:1", "r/pause:3", "r/bad:1"}},
		{"affinity by name", "n9", nil, preload.Sandbox{}, []string{"r/a:1", "r/pool:1"}, []string{"r/gpu:1", "r/pause:3", "r/bad:1"}},
		{"affinity not matched", "n1", map[string]string{"pool": "c"}, preload.Sandbox{}, []string{"r/a:1"}, []string{"r/gpu:1", "r/pause:3", "r/pool:1", "r/bad:1"}},
		{"sandbox added first", "", nil, preload.Sandbox{Name: "r/p:1"}, []string{"r/p:1", "r/a:1"}, []string{"r/gpu:1", "r/pause:3", "r/pool:1", "r/bad:1"}},
		{"sandbox listed keeps its entry", "", nil, preload.Sandbox{Name: "r/pause:3"}, []string{"r/a:1", "r/pause:3"}, []string{"r/gpu:1", "r/pool:1", "r/bad:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var node *corev1.Node
			if tt.node != "" {
				node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: tt.node, Labels: tt.labels}}
			}
			apply, skipped := preload.Plan(&cfg, node, tt.sandbox)
			if got := names(apply); !equal(got, tt.apply) {
				t.Errorf("apply = %v, want %v", got, tt.apply)
			}
			if got := names(skipped); !equal(got, tt.skipped) {
				t.Errorf("skipped = %v, want %v", got, tt.skipped)
			}
		})
	}
}

func names(imgs []config.Image) []string {
	var out []string
	for _, i := range imgs {
		out = append(out, i.Name)
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

type reasoned string

func (r reasoned) Error() string          { return string(r) }
func (r reasoned) Reason() failure.Reason { return failure.Credentials(string(r)) }

// A stalled download is cut by cancelling its pull; the stall, not the
// cancellation, is the reason, and another attempt may get the bytes.
func TestClassifyStalled(t *testing.T) {
	err := fmt.Errorf("pull x: %w", fmt.Errorf("%w: blob sha256:1 received no bytes for 30s: %w", noderuntime.ErrStalled, context.Canceled))
	if reason, transient := preload.Classify(err); reason != failure.Stalled || !transient {
		t.Errorf("Classify(%v) = %q, %v; want %q, transient", err, reason, transient, failure.Stalled)
	}
}

func TestClassifyKnownReason(t *testing.T) {
	// Missing credentials say "not found" in their text; their own reason,
	// not the text, is what users must read.
	err := fmt.Errorf("pull: %w", reasoned("secret ns/regcred not found"))
	if reason, transient := preload.Classify(err); reason != failure.Credentials("secret ns/regcred not found") || transient {
		t.Errorf("Classify = %q, %v; want the error's own reason, permanent", reason, transient)
	}
}

// The runtime learns the attempt's deadline from the request and may end
// the pull a moment before the engine's own timer fires: that is still
// pullTimeout cutting the attempt, and the log must say so.
func TestRunPullTimeoutSeenFirstByTheRuntime(t *testing.T) {
	s := critest.Start(t)
	s.Pull = func(ctx context.Context, _ string, _ *runtimeapi.AuthConfig) error {
		dl, _ := ctx.Deadline()
		time.Sleep(time.Until(dl) - 100*time.Millisecond)
		return status.Error(codes.DeadlineExceeded, "stream terminated by RST_STREAM with error code: CANCEL")
	}
	cfg := testConfig()
	cfg.PullTimeout = 300 * time.Millisecond
	e := &preload.Engine{Store: noderuntime.CRIOnly(connect(t, s)), MaxAttempts: 1}
	res, err := e.Run(context.Background(), cfg, images("r/stalled:1"))
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0]; r.Reason != failure.Timeout || !strings.Contains(r.Error, "exceeded pullTimeout 300ms") {
		t.Errorf("got %q: %s; want a timeout that names pullTimeout", r.Reason, r.Error)
	}
}

func TestCount(t *testing.T) {
	for _, tt := range []struct {
		statuses       []preload.Status
		present, total int
	}{
		{nil, 0, 0},
		{[]preload.Status{preload.StatusPresent, preload.StatusPulled, preload.StatusImported}, 3, 3},
		{[]preload.Status{preload.StatusPulled, preload.StatusFailed, preload.StatusSkipped}, 1, 2},
		{[]preload.Status{preload.StatusSkipped}, 0, 0},
	} {
		var results []preload.Result
		for _, s := range tt.statuses {
			results = append(results, preload.Result{Image: "x", Status: s})
		}
		if present, total := preload.Count(results); present != tt.present || total != tt.total {
			t.Errorf("Count(%v) = %d/%d, want %d/%d", tt.statuses, present, total, tt.present, tt.total)
		}
	}
}

// A run says which path its pulls take and why, once, only when it pulls;
// on a runtime known only by its CRI, pullVia auto is the CRI.
func TestRunSaysPullPath(t *testing.T) {
	s := critest.Start(t)
	s.Add("registry.example/present:1", 1)
	var logs bytes.Buffer
	e := &preload.Engine{Store: noderuntime.CRIOnly(connect(t, s)), Log: slog.New(slog.NewTextHandler(&logs, nil))}
	results, err := e.Run(context.Background(), testConfig(), images("registry.example/a:1", "registry.example/b:1", "registry.example/present:1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results[:2] {
		if r.Status != preload.StatusPulled || r.Via != config.PullViaCRI {
			t.Errorf("%s: %s via %q, want pulled via cri", r.Image, r.Status, r.Via)
		}
	}
	if r := results[2]; r.Via != "" {
		t.Errorf("%s, present: via %q, want none", r.Image, r.Via)
	}
	if n := strings.Count(logs.String(), `msg="pull path" via=cri concurrency=3 why="pullVia auto: runtime is critest 1.0"`); n != 1 {
		t.Errorf("pull path said %d times, want once:\n%s", n, logs.String())
	}
	logs.Reset()
	if _, err := e.Run(context.Background(), testConfig(), images("registry.example/present:1")); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "pull path") {
		t.Errorf("nothing to pull, yet:\n%s", logs.String())
	}
}
