package integration

// The first slice of the fault suite: `preloader once` against a
// real containerd and registry while the runtime is killed mid-pull, the
// registry misbehaves behind a fault-injecting proxy, and the process gets
// SIGTERM. Every scenario ends with the same check: each image reported
// present or pulled is found by CRI ImageStatus, each failure has a known,
// readable reason, and nothing printed holds the test credentials.

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// faultRow is one line of the table the suite prints.
type faultRow struct {
	scenario, outcome string
	recover           time.Duration
	lost, leaked      int
}

// faultRows is the fault table: every fault test of the package adds its
// rows, and TestFaults prints them all, as a markdown table for
// docs/development/reliability.md.
var faultRows struct {
	mu   sync.Mutex
	rows []faultRow
}

func reportFault(r faultRow) {
	faultRows.mu.Lock()
	defer faultRows.mu.Unlock()
	faultRows.rows = append(faultRows.rows, r)
}

func faultTable() string {
	faultRows.mu.Lock()
	defer faultRows.mu.Unlock()
	var b strings.Builder
	b.WriteString("\n| scenario | outcome | time to recover | images lost | secrets leaked |\n|---|---|---|---|---|\n")
	for _, r := range faultRows.rows {
		rec := "-"
		if r.recover > 0 {
			rec = r.recover.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d |\n", r.scenario, r.outcome, rec, r.lost, r.leaked)
	}
	return b.String()
}

func TestFaults(t *testing.T) {
	t.Cleanup(func() { t.Log(faultTable()) })
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testFaults(t, flavor, reportFault) })
	}
}

// faultEnv is what every scenario of one flavor shares: an authenticated
// registry, a containerd, and everything the preloader printed.
type faultEnv struct {
	t        *testing.T
	flavor   harness.Flavor
	reg      *harness.Registry
	ctrd     *harness.Containerd
	crio     *harness.CRIO // the runtime instead of ctrd
	dir      string
	env      []string
	report   func(faultRow)
	seq      int
	scenario string
	printed  []string
}

func testFaults(t *testing.T, flavor harness.Flavor, report func(faultRow)) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: flavor})
	f := &faultEnv{
		t: t, flavor: flavor, reg: reg, ctrd: ctrd, dir: t.TempDir(), report: report,
		env: []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile},
	}
	t.Cleanup(func() { assertNoSecret(t, f.printed...) })

	for _, s := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"containerd killed mid-pull", f.containerdKilled},
		{"registry connection refused", f.connectionRefused},
		{"registry 500/503", f.serverErrors},
		{"stalled blob body", f.stalledBody},
		{"connection dropped mid-blob", f.droppedMidBlob},
		{"slow link", f.slowLink},
		{"SIGTERM during pulls", f.sigterm},
		{"disk full", f.diskFull},
		{"containerd killed mid-import", f.containerdKilledImport},
		{"SIGTERM during an import", f.sigtermImport},
		{"hostile input", f.hostileInput},
	} {
		f.scenario = s.name
		t.Run(s.name, s.fn)
	}
}

// endpoint is the CRI endpoint of the runtime under test.
func (f *faultEnv) endpoint() string {
	if f.crio != nil {
		return f.crio.Endpoint
	}
	return f.ctrd.Endpoint
}

// killRuntime kills the runtime under test with SIGKILL; startRuntime
// starts it again on the same storage.
func (f *faultEnv) killRuntime() {
	if f.crio != nil {
		f.crio.Kill()
		return
	}
	f.ctrd.Kill()
}

func (f *faultEnv) startRuntime() {
	if f.crio != nil {
		f.crio.Start()
		return
	}
	f.ctrd.Start()
}

// image pushes a fresh image (never pulled before in this containerd) with
// one layer of size bytes, and returns it with its reference through host
// ("" for the registry itself).
func (f *faultEnv) image(size int, host string) (harness.TestImage, string) {
	f.t.Helper()
	f.seq++
	img := harness.PushTestImages(f.t, f.reg, []harness.ImageSpec{{
		Repo: fmt.Sprintf("fault/%s", strings.ReplaceAll(string(f.flavor), ".", "")), Tag: fmt.Sprintf("v%d", f.seq),
		OwnLayers: 1, LayerSize: size,
	}})[0]
	ref := img.Ref
	if host != "" {
		ref = strings.Replace(ref, f.reg.Host, host, 1)
	}
	return img, ref
}

// config writes images.yaml with short retries and pullTimeout, and a
// docker config with the credentials for the registry and every proxy.
func (f *faultEnv) config(pullTimeout time.Duration, hosts []string, refs ...string) []string {
	f.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "sandboxImage: none\nconcurrency: 3\npullTimeout: %s\nretry: {initialDelay: 200ms, maxDelay: 1s}\nimages:\n", pullTimeout)
	for _, r := range refs {
		fmt.Fprintf(&b, "  - image: %s\n", r)
	}
	return f.configYAML(b.String(), hosts)
}

// configYAML writes images.yaml as given, and the docker config of config.
func (f *faultEnv) configYAML(yaml string, hosts []string) []string {
	f.t.Helper()
	f.seq++
	cfg := writeFile(f.t, f.dir, fmt.Sprintf("images-%d.yaml", f.seq), yaml)
	auth := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPassword))
	var auths []string
	for _, h := range append([]string{f.reg.Host}, hosts...) {
		auths = append(auths, fmt.Sprintf("%q:{\"auth\":%q}", h, auth))
	}
	dc := writeFile(f.t, f.dir, fmt.Sprintf("config-%d.json", f.seq), `{"auths":{`+strings.Join(auths, ",")+`}}`)
	return []string{"once", "--config", cfg, "--docker-config", dc, "-o", "json", "--timeout", "90s"}
}

// liveRun is a preloader process whose stderr can be read while it runs.
type liveRun struct {
	cmd            *exec.Cmd
	stdout, stderr harness.LockedBuffer
	done           chan struct{}
	err            error
}

func (f *faultEnv) start(args ...string) *liveRun {
	f.t.Helper()
	l := &liveRun{done: make(chan struct{})}
	l.cmd = exec.Command(preloaderBin, args...)
	l.cmd.Env = append(os.Environ(), f.env...)
	l.cmd.Stdout, l.cmd.Stderr = &l.stdout, &l.stderr
	if err := l.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	go func() { l.err = l.cmd.Wait(); close(l.done) }()
	f.t.Cleanup(func() {
		select {
		case <-l.done:
		default:
			l.cmd.Process.Kill()
			<-l.done
		}
	})
	return l
}

// wait returns the run once the process exits; the test fails after timeout.
func (f *faultEnv) wait(l *liveRun, timeout time.Duration) run {
	f.t.Helper()
	select {
	case <-l.done:
	case <-time.After(timeout):
		l.cmd.Process.Kill()
		<-l.done
		f.t.Fatalf("preloader did not exit within %s\n--- stderr\n%s", timeout, l.stderr.String())
	}
	r := run{stdout: l.stdout.String(), stderr: l.stderr.String()}
	if l.err != nil {
		r.code = l.cmd.ProcessState.ExitCode()
	}
	f.printed = append(f.printed, r.stdout, r.stderr)
	return r
}

// until polls cond; the process exiting first, or timeout, fails the test.
func (f *faultEnv) until(l *liveRun, timeout time.Duration, what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-l.done:
			if cond() {
				return
			}
			f.t.Fatalf("preloader exited before %s\n--- stdout\n%s--- stderr\n%s", what, l.stdout.String(), l.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("no %s within %s\n--- stderr\n%s", what, timeout, l.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var retryInRE = regexp.MustCompile(`retryIn=(\S+)`)

func retries(stderr string) []time.Duration {
	var out []time.Duration
	for _, m := range retryInRE.FindAllStringSubmatch(stderr, -1) {
		d, err := time.ParseDuration(m[1])
		if err == nil {
			out = append(out, d)
		}
	}
	return out
}

// assertBackoff checks that the logged retry delays grow: with initialDelay
// 200ms and jitter over [d/2, d), the third delay is always above the first.
func assertBackoff(t *testing.T, r run, want int) {
	t.Helper()
	ds := retries(r.stderr)
	if len(ds) < want {
		t.Errorf("%d retries logged, want at least %d\n%s", len(ds), want, r)
		return
	}
	if want >= 2 && ds[len(ds)-1] <= ds[0] {
		t.Errorf("retry delays did not grow: %v", ds)
	}
}

var knownReasons = map[string]bool{
	"not found": true, "unauthorized": true, "timeout": true, "registry unreachable": true,
	"registry error": true, "tls": true, "no space": true, "runtime unavailable": true,
	"canceled": true, "invalid reference": true, "not present after pull": true,
}

// verify is the check every scenario ends with. It returns the number of
// images reported present that the runtime does not have.
func (f *faultEnv) verify(t *testing.T, r run, refs ...string) (lost int) {
	t.Helper()
	out := parseOnce(t, r)
	ctx := context.Background()
	c, err := cri.Connect(ctx, f.endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seen := map[string]bool{}
	for _, img := range out.Images {
		seen[img.Image] = true
		switch img.Status {
		case "present", "pulled", "imported":
			st, err := c.ImageStatus(ctx, img.Image)
			if err != nil || st == nil {
				lost++
				t.Errorf("%s reported %s, but CRI ImageStatus = %v, %v", img.Image, img.Status, st, err)
			}
		case "failed":
			if !knownReasons[img.Reason] || img.Error == "" {
				t.Errorf("%s failed with reason %q, error %q: want a known reason and the runtime's message", img.Image, img.Reason, img.Error)
			}
		default:
			t.Errorf("%s: unexpected status %q", img.Image, img.Status)
		}
	}
	for _, ref := range refs {
		if !seen[ref] {
			t.Errorf("%s missing from the output\n%s", ref, r)
		}
	}
	return lost
}

func (f *faultEnv) leaked(r run) int { return leakedIn(r.stdout, r.stderr) }

// leakedIn counts the texts that hold the test password or its auth string.
func leakedIn(texts ...string) int {
	auth := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPassword))
	n := 0
	for _, s := range texts {
		if strings.Contains(s, testPassword) || strings.Contains(s, auth) {
			n++
		}
	}
	return n
}

// finish checks a run that must end with every image pulled, and reports
// its row.
func (f *faultEnv) finish(t *testing.T, r run, healed time.Time, exited time.Time, refs ...string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Log(r)
		}
	}()
	outcome := "exit 0, all pulled"
	if r.code != 0 {
		outcome = fmt.Sprintf("exit %d", r.code)
		t.Errorf("want exit 0:\n%s", r)
	}
	lost := f.verify(t, r, refs...)
	for _, ref := range refs {
		if st, reason := parseOnce(t, r).status(ref); st != "pulled" {
			t.Errorf("%s: %s %s, want pulled", ref, st, reason)
		}
	}
	var rec time.Duration
	if !healed.IsZero() {
		rec = exited.Sub(healed)
	}
	outcome += fmt.Sprintf(", %d retries", len(retries(r.stderr)))
	f.report(faultRow{scenario: string(f.flavor) + ": " + f.scenario, outcome: outcome, recover: rec, lost: lost, leaked: f.leaked(r)})
}

func isLayerGet(r *http.Request, img harness.TestImage) bool {
	if r.Method != http.MethodGet {
		return false
	}
	for _, l := range img.Layers {
		if strings.HasSuffix(r.URL.Path, "/blobs/"+l) {
			return true
		}
	}
	return false
}

// containerdKilled: SIGKILL containerd while a layer is downloading, start
// it again; the preloader's retry reconnects and the run completes. The
// proxy holds the layer's body after its first 256 KiB, so the pull is
// still in flight when containerd dies, however slow the machine.
func (f *faultEnv) containerdKilled(t *testing.T) {
	var img harness.TestImage
	hold := harness.NewHold(256<<10, func(r *http.Request) bool { return isLayerGet(r, img) })
	t.Cleanup(hold.Release)
	p := harness.StartProxy(t, f.reg.Host, harness.ProxyOptions{Hold: hold})
	img, ref := f.image(1<<20, p.Host)
	l := f.start(f.config(time.Minute, []string{p.Host}, ref)...)
	f.until(l, 30*time.Second, "a layer download held midway", func() bool { return hold.Held() > 0 })
	f.killRuntime()
	hold.Release()
	f.startRuntime()
	healed := time.Now()
	r := f.wait(l, 60*time.Second)
	f.finish(t, r, healed, time.Now(), ref)
	assertBackoff(t, r, 1)
}

// connectionRefused: the registry is down (nothing listens on its port)
// until three retries are logged, then comes back.
func (f *faultEnv) connectionRefused(t *testing.T) {
	_, ref := f.image(64<<10, "")
	f.reg.Stop()
	restarted := false
	t.Cleanup(func() {
		if !restarted { // leave the registry up for the scenarios after this one
			f.reg.Start()
		}
	})
	l := f.start(f.config(time.Minute, nil, ref)...)
	f.until(l, 30*time.Second, "three retries", func() bool { return len(retries(l.stderr.String())) >= 3 })
	f.reg.Start()
	restarted = true
	healed := time.Now()
	r := f.wait(l, 60*time.Second)
	f.finish(t, r, healed, time.Now(), ref)
	if !strings.Contains(r.stderr, "connection refused") {
		t.Errorf("log does not say connection refused:\n%s", r.stderr)
	}
	assertBackoff(t, r, 3)
}

// faulty runs one image through a proxy whose fault is active until the
// preloader has logged n retries.
func (f *faultEnv) faulty(t *testing.T, pullTimeout time.Duration, n int, fault func(w http.ResponseWriter, r *http.Request, img harness.TestImage) bool) run {
	t.Helper()
	var healedFlag atomic.Bool
	var img harness.TestImage
	p := harness.StartProxy(t, f.reg.Host, harness.ProxyOptions{
		Fault: func(w http.ResponseWriter, r *http.Request) bool {
			if healedFlag.Load() {
				return false
			}
			return fault(w, r, img)
		},
	})
	img, ref := f.image(256<<10, p.Host)
	l := f.start(f.config(pullTimeout, []string{p.Host}, ref)...)
	f.until(l, 60*time.Second, fmt.Sprintf("%d retries", n), func() bool { return len(retries(l.stderr.String())) >= n })
	healedFlag.Store(true)
	healed := time.Now()
	r := f.wait(l, 60*time.Second)
	f.finish(t, r, healed, time.Now(), ref)
	assertBackoff(t, r, n)
	return r
}

func (f *faultEnv) serverErrors(t *testing.T) {
	var n atomic.Int64
	r := f.faulty(t, time.Minute, 3, func(w http.ResponseWriter, r *http.Request, _ harness.TestImage) bool {
		if n.Add(1)%2 == 0 {
			http.Error(w, "injected", http.StatusInternalServerError)
		} else {
			http.Error(w, "injected", http.StatusServiceUnavailable)
		}
		return true
	})
	if !strings.Contains(r.stderr, `reason="registry error"`) {
		t.Errorf("retries not classified as registry error:\n%s", r.stderr)
	}
}

// stalledBody: layer downloads send headers and then nothing; pullTimeout
// (3s) cuts each attempt.
func (f *faultEnv) stalledBody(t *testing.T) {
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	r := f.faulty(t, 3*time.Second, 2, func(w http.ResponseWriter, r *http.Request, img harness.TestImage) bool {
		if !isLayerGet(r, img) {
			return false
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", "262144")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-stop:
		}
		return true
	})
	if !strings.Contains(r.stderr, "exceeded pullTimeout") {
		t.Errorf("log does not say pullTimeout cut the attempt:\n%s", r.stderr)
	}
}

// droppedMidBlob: layer downloads get part of the body, then the
// connection is closed under them.
func (f *faultEnv) droppedMidBlob(t *testing.T) {
	f.faulty(t, time.Minute, 3, func(w http.ResponseWriter, r *http.Request, img harness.TestImage) bool {
		if !isLayerGet(r, img) {
			return false
		}
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return false
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 262144\r\n\r\n")
		buf.Write(bytes.Repeat([]byte{0x1f}, 4096))
		buf.Flush()
		return true
	})
}

// slowLink: a bandwidth-limited registry; nothing fails, the pull simply
// takes its time.
func (f *faultEnv) slowLink(t *testing.T) {
	p := harness.StartProxy(t, f.reg.Host, harness.ProxyOptions{Latency: 50 * time.Millisecond, BytesPerSec: 512 << 10})
	_, ref := f.image(1<<20, p.Host)
	start := time.Now()
	l := f.start(f.config(time.Minute, []string{p.Host}, ref)...)
	r := f.wait(l, 60*time.Second)
	f.finish(t, r, time.Time{}, time.Now(), ref)
	if took := time.Since(start); took < time.Second {
		t.Errorf("1 MiB at 512 KiB/s took %s: the link was not slow", took)
	}
}

// sigterm: SIGTERM while three pulls are downloading; the process exits
// within a few seconds, non-zero, and the runtime has no trace of them.
// The proxy holds each layer's body after its first 64 KiB: no pull can
// finish before the signal.
func (f *faultEnv) sigterm(t *testing.T) {
	var imgs []harness.TestImage
	var mu sync.Mutex
	hold := harness.NewHold(64<<10, func(r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(imgs, func(img harness.TestImage) bool { return isLayerGet(r, img) })
	})
	t.Cleanup(hold.Release)
	p := harness.StartProxy(t, f.reg.Host, harness.ProxyOptions{Hold: hold})
	var refs []string
	for range 3 {
		img, ref := f.image(1<<20, p.Host)
		mu.Lock()
		imgs = append(imgs, img)
		mu.Unlock()
		refs = append(refs, ref)
	}
	l := f.start(f.config(time.Minute, []string{p.Host}, refs...)...)
	f.until(l, 30*time.Second, "three layer downloads held midway", func() bool { return hold.Held() >= 3 })
	sent := time.Now()
	if err := l.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := f.wait(l, 30*time.Second)
	took := time.Since(sent)
	if took > 5*time.Second {
		t.Errorf("exited %s after SIGTERM, want within 5s", took)
	}
	if r.code == 0 {
		t.Errorf("exit 0 after SIGTERM with pulls unfinished:\n%s", r)
	}
	defer func() {
		if t.Failed() {
			t.Log(r)
		}
	}()
	// Whatever was printed must be true; the run may end before printing.
	lost := 0
	if strings.HasPrefix(strings.TrimSpace(r.stdout), "{") {
		lost = f.verify(t, r)
	}
	ctx := context.Background()
	c, err := cri.Connect(ctx, f.endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	listed, err := c.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	half := 0
	for _, img := range listed {
		for _, tag := range img.RepoTags {
			for _, ref := range refs {
				if tag == ref {
					half++
					t.Errorf("%s is listed after SIGTERM cut its download", ref)
				}
			}
		}
	}
	// The CRI's own pull leases are not ours to judge; the preloader's
	// (none in a CRI pull) must be gone. CRI-O has no leases.
	ours := 0
	if f.ctrd != nil {
		ours = len(f.ourLeases(t))
	}
	if ours != 0 {
		t.Errorf("%d leases of the preloader left after SIGTERM", ours)
	}
	outcome := fmt.Sprintf("exit %d in %s, %d listed, %d leases left", r.code, took.Round(10*time.Millisecond), half, ours)
	f.report(faultRow{scenario: string(f.flavor) + ": SIGTERM during pulls", outcome: outcome, lost: lost + half, leaked: f.leaked(r)})
}
