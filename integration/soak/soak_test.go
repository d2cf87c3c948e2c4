// Package soak runs `preloader agent` for a long time against a registry
// that keeps failing and healing and a ConfigMap that keeps changing, and
// checks that its memory and goroutines stay flat and that
// it ends in the state its last config asks for. It runs only when asked:
// `make soak` (PRELOADER_SOAK=10m) or `make soak SOAK=2m`.
package soak

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

const (
	nodeName     = "soak-node"
	soakUser     = "soaker"
	soakPassword = "pw-S0ak-7yQ-never-print-me"
	poolSize     = 10

	editEvery   = 3 * time.Second  // a ConfigMap edit
	flipEvery   = 20 * time.Second // the registry changes between healthy and a fault
	removeEvery = 5 * time.Second  // an image removed behind the agent's back
	sampleEvery = 10 * time.Second // RSS and goroutines

	// Flat, comparing the median of the last third of the samples after
	// warm-up with that of the first third. Medians, because one sample
	// can land on a GC cycle or on three pulls in flight. RSS: once warm
	// (about 100 s), 10-minute runs stayed within a spread of 4% or less
	// (64.4-66.0 MiB in the last); the limit, 10% plus 2 MiB (about 8.5 MiB
	// at 65 MiB), is twice that or more, and the medians lie about 5.5
	// minutes apart in a 10-minute run, so a leak of about 80 KiB per
	// ConfigMap edit, or 130 KiB per removal and pull, fails it.
	// Goroutines: 61-66 in the same runs; in flight at once are at most the
	// 3 pulls of the default concurrency with their gRPC streams and retry
	// timers, and a metrics scrape, so +10; one leaked per edit or per
	// attempt would be hundreds.
	rssGrowth        = 1.10
	rssSlackMiB      = 2
	goroutineSlack   = 10
	warmupParts      = 6 // the first 1/warmupParts of the samples is warm-up
	convergeDeadline = 2 * time.Minute
)

// registryMode is what the proxy in front of the registry does to requests.
type registryMode int32

const (
	healthy     registryMode = iota
	unavailable              // 503 to every request
	dropped                  // the connection closed without an answer
	stalled                  // no answer until the client gives up (pullTimeout)
)

func (m registryMode) String() string {
	return [...]string{"healthy", "503", "dropped", "stalled"}[m]
}

// faultCycle is the order the registry goes through, one step per
// flipEvery: every other step healthy, so that pulls make progress between
// faults.
var faultCycle = []registryMode{healthy, unavailable, healthy, dropped, healthy, stalled}

// TestSoak is opt-in by design: ten minutes of real components is no unit
// of `make test`.
func TestSoak(t *testing.T) {
	setting := os.Getenv("PRELOADER_SOAK")
	if setting == "" {
		t.Skip("opt-in: set PRELOADER_SOAK to a duration (make soak SOAK=10m) to run the soak")
	}
	duration, err := time.ParseDuration(setting)
	if err != nil || duration < time.Minute {
		t.Fatalf("PRELOADER_SOAK=%q: want a duration of at least 1m (e.g. 10m)", setting)
	}
	// Starting the components and the final convergence take a few
	// minutes besides the soak itself; fail now rather than at the timeout.
	if dl, ok := t.Deadline(); ok && time.Until(dl) < duration+10*time.Minute {
		t.Fatalf("PRELOADER_SOAK=%v needs a go test -timeout of at least %v (make soak SOAK_TIMEOUT=...)", duration, duration+10*time.Minute)
	}
	bin, err := harness.BuildPreloader(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := newSoak(t, bin, harness.Containerd2)
	s.run(duration)
	s.check()
}

// soak is the run's components and what it has done to the agent so far.
type soak struct {
	t     *testing.T
	kube  *harness.Kube
	ctrd  *harness.Containerd
	rt    *cri.Client
	agent *harness.Agent
	pool  []string // image references, through the faulty proxy
	mode  atomic.Int32
	// faulted counts the registry requests a fault answered: proof that
	// the faults reached the runtime's pulls.
	faulted atomic.Int64
	rnd     *rand.Rand
	start   time.Time
	config  []string // the images of the last config written
	hash    string   // its config hash

	edits, flips, removals int
	samples                []sample
}

type sample struct {
	at                     time.Duration
	rss, heap              float64 // MiB
	goroutines             int
	edits, flips, removals int
	mode                   registryMode
}

func newSoak(t *testing.T, bin string, flavor harness.Flavor) *soak {
	s := &soak{t: t}
	seed := uint64(time.Now().UnixNano())
	s.rnd = rand.New(rand.NewPCG(seed, seed))
	t.Logf("soak: seed %d", seed)

	s.kube = harness.StartKube(t)
	s.kube.Kubectl(t, "apply", "-k", "../../manifests")
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: soakUser, Password: soakPassword})
	proxy := harness.StartProxy(t, reg.Host, harness.ProxyOptions{Fault: s.fault})
	var specs []harness.ImageSpec
	for i := range poolSize {
		// Shared base layers as real images have them, and two layers of
		// their own so that a fault can land between blobs.
		specs = append(specs, harness.ImageSpec{Repo: fmt.Sprintf("soak/app%d", i), Tag: "1", BaseLayers: 2, OwnLayers: 2, LayerSize: 128 << 10})
	}
	for _, img := range harness.PushTestImages(t, reg, specs) {
		s.pool = append(s.pool, strings.Replace(img.Ref, reg.Host, proxy.Host, 1))
	}

	ctx := context.Background()
	c := s.kube.Client
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: harness.AgentNamespace},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(harness.DockerConfigJSON(proxy.Host, soakUser, soakPassword))},
	}
	if _, err := c.CoreV1().Secrets(harness.AgentNamespace).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Secret regcred: %v", err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"kubernetes.io/hostname": nodeName}}}
	if _, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Node %s: %v", nodeName, err)
	}

	s.ctrd = harness.StartContainerd(t, harness.ContainerdOptions{Flavor: flavor})
	var err error
	if s.rt, err = cri.Connect(ctx, s.ctrd.Endpoint); err != nil {
		t.Fatalf("connect to the CRI of %s: %v", flavor, err)
	}
	t.Cleanup(func() { s.rt.Close() })

	s.edit()
	s.agent = harness.StartAgent(t, harness.AgentOptions{
		Bin: bin, Kubeconfig: s.kube.KubeconfigForPodOn(t, harness.AgentNamespace, harness.AgentServiceAccount, nodeName),
		Node: nodeName, Containerd: s.ctrd,
	})
	return s
}

// fault is the proxy's hook: what the registry does now.
func (s *soak) fault(w http.ResponseWriter, r *http.Request) bool {
	mode := registryMode(s.mode.Load())
	if mode != healthy {
		s.faulted.Add(1)
	}
	switch mode {
	case unavailable:
		http.Error(w, "registry unavailable (soak)", http.StatusServiceUnavailable)
		return true
	case stalled:
		// Hold the request until the client gives up or the fault ends,
		// then drop it: a stalled attempt never succeeds.
		for registryMode(s.mode.Load()) == stalled && r.Context().Err() == nil {
			time.Sleep(100 * time.Millisecond)
		}
		drop(w)
		return true
	case dropped:
		drop(w)
		return true
	}
	return false
}

// drop closes the client's connection without an answer.
func drop(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
			return
		}
	}
	// Cannot happen on the proxy's HTTP/1 server; answer rather than hang.
	http.Error(w, "dropped (soak)", http.StatusBadGateway)
}

// edit writes a config of a random half of the pool (at least one image).
func (s *soak) edit() {
	s.edits++
	var imgs []string
	for _, ref := range s.pool {
		if s.rnd.IntN(2) == 0 {
			imgs = append(imgs, ref)
		}
	}
	if len(imgs) == 0 {
		imgs = append(imgs, s.pool[s.rnd.IntN(len(s.pool))])
	}
	// No sandbox image: it is not a config entry, so it could not name
	// the Secret, and the registry is authenticated. pullTimeout cuts the
	// stalls; resync brings back what was removed.
	var b strings.Builder
	fmt.Fprintf(&b, "# soak edit %d\nsandboxImage: none\nresync: 5s\npullTimeout: 8s\nretry: {initialDelay: 200ms, maxDelay: 2s}\nimages:\n", s.edits)
	for _, ref := range imgs {
		fmt.Fprintf(&b, "  - image: %s\n    pullSecrets: [regcred]\n", ref)
	}
	s.config = imgs
	s.hash = harness.SetImagesYAML(s.t, s.kube.Client, b.String())
}

// remove deletes an image of the current config from the runtime, as the
// kubelet's image GC or a person with crictl rmi would. Pool images stay
// once pulled, so removals are what keep pulls, and the faults they meet,
// going all through the run.
func (s *soak) remove() {
	ref := s.config[s.rnd.IntN(len(s.config))]
	img, err := s.rt.ImageStatus(context.Background(), ref)
	if err != nil {
		s.t.Fatalf("CRI ImageStatus(%s): %v", ref, err)
	}
	if img == nil {
		return // not pulled yet
	}
	if err := s.rt.RemoveImage(context.Background(), ref); err != nil {
		s.t.Fatalf("CRI RemoveImage(%s): %v", ref, err)
	}
	s.removals++
}

// run churns for d: edits, flips, removals and samples on their tickers,
// all from the test's goroutine.
func (s *soak) run(d time.Duration) {
	s.start = time.Now()
	edits, flips := time.NewTicker(editEvery), time.NewTicker(flipEvery)
	removes, samples := time.NewTicker(removeEvery), time.NewTicker(sampleEvery)
	defer edits.Stop()
	defer flips.Stop()
	defer removes.Stop()
	defer samples.Stop()
	end := time.After(d)
	step := 0
	fmt.Printf("soak: %v against a registry cycling %v every %v, a ConfigMap edit every %v, a removal every %v\n",
		d, faultCycle, flipEvery, editEvery, removeEvery)
	fmt.Printf("%8s %8s %9s %10s %7s %6s %8s  %s\n", "t", "RSS MiB", "heap MiB", "goroutines", "configs", "flips", "removals", "registry")
	s.sample()
	for {
		select {
		case <-edits.C:
			s.edit()
		case <-flips.C:
			step++
			s.mode.Store(int32(faultCycle[step%len(faultCycle)]))
			s.flips++
		case <-removes.C:
			s.remove()
		case <-samples.C:
			s.sample()
		case <-end:
			s.sample()
			return
		case <-s.agent.Done():
			s.t.Fatalf("the agent exited after %v: %v\n%s", time.Since(s.start).Round(time.Second), s.agent.Err(), s.agent.Tail(60))
		}
	}
}

// sample reads the agent's RSS from /proc and its goroutines and heap from
// its own /metrics (the Go collector), and prints the row.
func (s *soak) sample() {
	rss, err := vmRSS(s.agent.Pid())
	if err != nil {
		s.t.Fatalf("agent RSS: %v", err)
	}
	code, body := s.agent.Get(s.t, "/metrics")
	if code != http.StatusOK {
		s.t.Fatalf("agent /metrics: HTTP %d", code)
	}
	g, err := metric(body, "go_goroutines")
	if err != nil {
		s.t.Fatal(err)
	}
	heap, err := metric(body, "go_memstats_heap_alloc_bytes")
	if err != nil {
		s.t.Fatal(err)
	}
	sm := sample{
		at: time.Since(s.start), rss: mib(rss), heap: mib(int64(heap)), goroutines: int(g),
		edits: s.edits, flips: s.flips, removals: s.removals, mode: registryMode(s.mode.Load()),
	}
	s.samples = append(s.samples, sm)
	fmt.Printf("%8v %8.1f %9.1f %10d %7d %6d %8d  %v\n", sm.at.Round(time.Second), sm.rss, sm.heap, sm.goroutines, sm.edits, sm.flips, sm.removals, sm.mode)
}

// check heals the registry, makes one last edit and asserts what a user
// would: the agent's footprint stayed flat, and the runtime, the Node and
// the metrics all agree with the last config.
func (s *soak) check() {
	t := s.t
	s.mode.Store(int32(healthy))
	s.edit()
	final, hash := slices.Clone(s.config), s.hash
	healed := time.Now()
	node := func() harness.NodeView { return harness.ViewNode(s.kube.Client, nodeName) }
	s.agent.Eventually(t, convergeDeadline, "the Node shows the final config all present", func() string {
		return node().Shows(hash, len(final), len(final))
	})
	converged := time.Since(healed)
	// Two resyncs more: what the Node says must still hold, and be true.
	time.Sleep(11 * time.Second)
	v := node()
	if why := v.Shows(hash, len(final), len(final)); why != "" {
		t.Errorf("the Node's status after settling: %s", why)
	}
	if v.Status != nil && (len(v.Status.Missing) != 0 || len(v.Status.Failed) != 0) {
		t.Errorf("the Node reports missing %q, failed %v with every image present", v.Status.Missing, v.Status.Failed)
	}
	missing := 0
	for _, ref := range final {
		img, err := s.rt.ImageStatus(context.Background(), ref)
		switch {
		case err != nil:
			t.Errorf("CRI ImageStatus(%s): %v", ref, err)
		case img == nil:
			missing++
			t.Errorf("%s: the Node reports it present, CRI ImageStatus finds nothing", ref)
		}
	}
	code, metrics := s.agent.Get(t, "/metrics")
	for _, want := range []string{fmt.Sprintf("preloader_images_desired %d\n", len(final)), fmt.Sprintf("preloader_images_present %d\n", len(final))} {
		if code != http.StatusOK || !strings.Contains(metrics, want) {
			t.Errorf("/metrics (HTTP %d) lacks %q", code, strings.TrimSpace(want))
		}
	}

	rss, goroutines := s.flatness()
	pulled, failed := pulls(metrics)
	if s.faulted.Load() == 0 {
		t.Errorf("no registry request met a fault in %d flips: the soak did not test what it says", s.flips)
	}

	nodeJSON, err := json.Marshal(v.Node)
	if err != nil {
		t.Fatalf("Node as JSON: %v", err)
	}
	events, err := s.kube.Client.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list Events: %v", err)
	}
	eventsJSON, err := json.Marshal(events)
	if err != nil {
		t.Fatalf("Events as JSON: %v", err)
	}
	if err := s.agent.Stop(15 * time.Second); err != nil {
		t.Errorf("agent: %v", err)
	}
	log := s.agent.Log()
	leaked := harness.AssertNoSecret(t, soakUser, soakPassword, log, string(nodeJSON), string(eventsJSON), metrics)

	first, last := s.samples[0], s.samples[len(s.samples)-1]
	state := "OK"
	if missing > 0 || t.Failed() {
		state = "FAILED"
	}
	fmt.Printf("soak summary: %v, %d registry flips, %d configs applied, %d images removed behind the agent's back; "+
		"RSS %.1f → %.1f MiB (median after warm-up %s), goroutines %d → %d (%s); "+
		"%d registry requests faulted, %.0f pulls, %.0f failed; final config of %d images shown all present %v after the registry healed, %d missing per CRI, %d texts with a credential; final state %s\n",
		last.at.Round(time.Second), s.flips, s.edits, s.removals,
		first.rss, last.rss, rss, first.goroutines, last.goroutines, goroutines, s.faulted.Load(), pulled, failed,
		len(final), converged.Round(100*time.Millisecond), missing, leaked, state)
}

// flatness compares the median of the first and the last third of the
// samples after warm-up, fails the test if they grew beyond the
// tolerances, and describes the comparison.
func (s *soak) flatness() (rss, goroutines string) {
	t := s.t
	n := len(s.samples)
	after := s.samples[n/warmupParts:]
	third := len(after) / 3
	if third < 2 {
		t.Fatalf("%d samples after warm-up: too few to judge memory and goroutines; soak longer", len(after))
	}
	head, tail := after[:third], after[len(after)-third:]
	median := func(ss []sample, f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, x := range ss {
			v[i] = f(x)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	rssOf := func(x sample) float64 { return x.rss }
	gOf := func(x sample) float64 { return float64(x.goroutines) }
	r0, r1 := median(head, rssOf), median(tail, rssOf)
	g0, g1 := median(head, gOf), median(tail, gOf)
	if limit := r0*rssGrowth + rssSlackMiB; r1 > limit {
		t.Errorf("RSS grew: median %.1f MiB in the last third, %.1f MiB in the first after warm-up; limit %.1f MiB", r1, r0, limit)
	}
	if limit := g0 + goroutineSlack; g1 > limit {
		t.Errorf("goroutines grew: median %.0f in the last third, %.0f in the first after warm-up; limit %.0f", g1, g0, limit)
	}
	rss = fmt.Sprintf("%.1f → %.1f MiB, limit ×%.2f+%d", r0, r1, rssGrowth, rssSlackMiB)
	goroutines = fmt.Sprintf("median %.0f → %.0f, limit +%d", g0, g1, goroutineSlack)
	return rss, goroutines
}

// vmRSS is the resident set of pid, from /proc/PID/status, in bytes.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("read /proc/%d/status: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmRSS %q: %w", pid, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
}

// metric is the value of an unlabelled sample in a Prometheus text
// exposition.
func metric(exposition, name string) (float64, error) {
	for _, line := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, fmt.Errorf("metric %s: %q: %w", name, v, err)
			}
			return f, nil
		}
	}
	return 0, fmt.Errorf("/metrics has no %s", name)
}

// pulls sums preloader_pulls_total by result.
func pulls(exposition string) (pulled, failed float64) {
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, "preloader_pulls_total{") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.Contains(line, `result="pulled"`):
			pulled += v
		case strings.Contains(line, `result="failed"`):
			failed += v
		}
	}
	return pulled, failed
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
