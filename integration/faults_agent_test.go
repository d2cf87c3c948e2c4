package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestFaultAPIServerDown: kube-apiserver stops under
// a running agent. Preloading goes on from the last good config (an image
// removed behind the agent's back comes back while the API is down), the
// agent does not exit, and once the API is back the Node's status is right
// after at most one write.
func TestFaultAPIServerDown(t *testing.T) {
	const nodeName = "worker-1"
	flavor := harness.Containerd2
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	k.Kubectl(t, "apply", "-k", "../manifests")

	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	pause := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	imgA := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "team/a", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 64 << 10}})[0].Ref
	// B comes through a proxy that answers 503 until the registry "heals",
	// during the outage: the status the agent must write changes while it
	// cannot write it.
	var registryDown atomic.Bool
	registryDown.Store(true)
	flaky := harness.StartProxy(t, reg.Host, harness.ProxyOptions{Fault: func(w http.ResponseWriter, _ *http.Request) bool {
		if registryDown.Load() {
			http.Error(w, "registry down for the test", http.StatusServiceUnavailable)
			return true
		}
		return false
	}})
	imgB := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "team/b", Tag: "1.0", OwnLayers: 1, LayerSize: 64 << 10}})[0].Ref
	imgB = strings.Replace(imgB, reg.Host, flaky.Host, 1)

	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: flavor, SandboxImage: pause.Ref})
	rt, err := cri.Connect(ctx, ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()

	createNode(t, c, nodeName, nil, nil)
	cfg := "# Images for the API-outage test.\nsandboxImage: auto\nresync: 1s\nretry: {initialDelay: 200ms, maxDelay: 1s}\nimages:\n  - image: " + imgA + "\n  - image: " + imgB + "\n"
	hash := harness.SetImagesYAML(t, c, cfg)

	proxy := startAPIRecorder(t, k)
	agent := startAgent(t, proxy.kubeconfig(t, k.KubeconfigForPodOn(t, agentNS, agentSA, nodeName)), nodeName, ctrd)
	node := func() harness.NodeView { return harness.ViewNode(c, nodeName) }

	agent.Eventually(t, time.Minute, "node with A, B failing", func() string {
		v := node()
		if why := v.Shows(hash, 2, 3); why != "" {
			return why
		}
		if v.FailedReason(imgB) == "" {
			return imgB + " not listed as failed"
		}
		return ""
	})
	if criImage(t, rt, imgA) == "" {
		t.Fatalf("CRI ImageStatus(%s): absent before the outage", imgA)
	}

	// The API server goes away; etcd stays.
	k.StopAPIServer()
	down := time.Now()
	apiUp := false
	t.Cleanup(func() {
		if !apiUp {
			k.Start()
		}
	})

	// A disappears behind the agent's back; it must come back from the last
	// good config while the API is still down.
	if err := rt.RemoveImage(ctx, imgA); err != nil {
		t.Fatalf("CRI RemoveImage(%s): %v", imgA, err)
	}
	removed := time.Now()
	agent.Eventually(t, 30*time.Second, imgA+" restored with the API server down", func() string {
		if criImage(t, rt, imgA) == "" {
			return "absent"
		}
		return ""
	})
	restored := time.Since(removed)
	// The registry heals while the API is still down: B is pulled.
	registryDown.Store(false)
	agent.Eventually(t, 30*time.Second, imgB+" pulled with the API server down", func() string {
		if criImage(t, rt, imgB) == "" {
			return "absent"
		}
		return ""
	})
	if ok := proxy.okSince(down); len(ok) != 0 {
		t.Fatalf("requests answered while the API server was down (the outage is not real): %s", describeAPI(ok))
	}
	// Stay down past a few resyncs: the agent must neither exit nor lose A.
	time.Sleep(3 * time.Second)
	select {
	case <-agent.Done():
		t.Fatalf("the agent exited while the API server was down: %v\n%s", agent.Err(), agent.Tail(60))
	default:
	}
	for _, ref := range []string{imgA, imgB} {
		if criImage(t, rt, ref) == "" {
			t.Fatalf("%s absent again during the outage", ref)
		}
	}
	t.Logf("API server down: %s re-pulled %v after RemoveImage (%d agent requests failed meanwhile)",
		imgA, restored.Round(time.Millisecond), len(proxy.since(down)))

	// The API comes back.
	up := time.Now()
	k.Start()
	apiUp = true
	t.Logf("API server down for %v; restarted (ready) in %v", up.Sub(down).Round(time.Millisecond), k.StartupTime.Round(time.Millisecond))

	// The agent is connected again once one of its requests succeeds.
	agent.Eventually(t, 30*time.Second, "the agent reaches the API server again", func() string {
		if len(proxy.okSince(down)) == 0 {
			return "no successful request yet"
		}
		return ""
	})
	reconnected := time.Since(up)
	agent.Eventually(t, 30*time.Second, "node status after the outage", func() string { return node().ShowsWithCondition(hash, 3, 3) })
	caughtUp := time.Since(up)
	// Let a few resyncs pass so that a late or repeated write is counted.
	time.Sleep(4 * time.Second)
	if why := node().ShowsWithCondition(hash, 3, 3); why != "" {
		t.Errorf("node status after settling: %s", why)
	}
	select {
	case <-agent.Done():
		t.Fatalf("the agent exited after the API server came back: %v\n%s", agent.Err(), agent.Tail(60))
	default:
	}
	for _, ref := range []string{imgA, imgB} {
		if criImage(t, rt, ref) == "" {
			t.Errorf("CRI ImageStatus(%s): absent at the end", ref)
		}
	}

	var nodeWrites, otherWrites []apiCall
	for _, r := range proxy.okSince(down) {
		switch {
		case !r.write():
		case strings.HasPrefix(r.path, "/api/v1/nodes/"):
			nodeWrites = append(nodeWrites, r)
		default:
			otherWrites = append(otherWrites, r)
		}
	}
	t.Logf("after the restart began: agent reconnected in %v, node status right in %v; Node writes after the API came back: %d %s; other writes: %s",
		reconnected.Round(time.Millisecond), caughtUp.Round(time.Millisecond), len(nodeWrites), describeAPI(nodeWrites), describeAPI(otherWrites))
	// One write of what changed meanwhile: the Node's label and
	// annotation, and its status's condition (False to True), each once.
	perPath := map[string]int{}
	for _, r := range nodeWrites {
		perPath[r.path]++
	}
	for path, n := range perPath {
		if n > 1 {
			t.Errorf("the agent made %d writes of %s after the API came back, want at most 1: %s", n, path, describeAPI(nodeWrites))
		}
	}
	if strings.Contains(agent.Log(), "panic") {
		t.Errorf("panic in the agent's log:\n%s", agent.Tail(60))
	}
	lost := 0
	for _, ref := range []string{imgA, imgB} {
		if criImage(t, rt, ref) == "" {
			lost++
		}
	}
	reportFault(faultRow{
		scenario: string(flavor) + ": agent, kube-apiserver stopped",
		outcome: fmt.Sprintf("removed image re-pulled in %s with the API down; %d Node write and %d of its status once back",
			restored.Round(10*time.Millisecond), perPath["/api/v1/nodes/"+nodeName], perPath["/api/v1/nodes/"+nodeName+"/status"]),
		recover: caughtUp, lost: lost, leaked: harness.AssertNoSecret(t, testUser, testPassword, agent.Log()),
	})

	t.Run("an oversized ConfigMap keeps the last good config", func(t *testing.T) {
		oversizedConfigMap(t, flavor, c, agent, rt, hash, nodeName, imgA, imgB)
	})
}

// agentMaxGrowth bounds what a ConfigMap as large as the API server allows
// may add to the agent's peak RSS: it is decoded from the watch, parsed (a
// YAML node tree of 20000 entries), rejected and dropped. Measured: 16 MiB
// over 60; four times that still tells a bounded parse from one that
// keeps or multiplies what it read.
const agentMaxGrowth = 64 << 20

// oversizedConfigMap is hostile input for the agent: the ConfigMap
// at the API server's limit (1 MiB), with far more images than a config
// may list. The agent keeps the last good config (the Node still shows
// it, the images stay), says why in a Warning Event, and its peak memory
// grows by a bounded amount.
func oversizedConfigMap(t *testing.T, flavor harness.Flavor, c kubernetes.Interface, agent *harness.Agent, rt *cri.Client, good, nodeName string, refs ...string) {
	before := vmHWM(t, agent.Pid())
	var b strings.Builder
	b.WriteString("# As large as a ConfigMap can be.\nimages:\n")
	n := 0
	for ; b.Len() < 1000000; n++ {
		fmt.Fprintf(&b, "  - image: registry.example/oversized/app-%d:1\n", n)
	}
	start := time.Now()
	harness.SetImagesYAML(t, c, b.String())
	want := fmt.Sprintf("%d images, more than the limit of 10000", n)
	agent.Eventually(t, 30*time.Second, "InvalidConfig Event on the ConfigMap", func() string {
		evs := listEvents(t, c, agentNS, "involvedObject.kind=ConfigMap,involvedObject.name="+agentCM+",reason="+agentReasonInvalidConfig)
		return eventWith(evs, corev1.EventTypeWarning, "images.yaml:3", want, "keeping the last good config "+good)
	})
	said := time.Since(start)
	if why := harness.ViewNode(c, nodeName).Shows(good, len(refs)+1, len(refs)+1); why != "" {
		t.Errorf("after an oversized edit: %s", why)
	}
	lost := 0
	for _, ref := range refs {
		if criImage(t, rt, ref) == "" {
			lost++
			t.Errorf("%s gone after an oversized edit", ref)
		}
	}
	after := vmHWM(t, agent.Pid())
	t.Logf("%d images, %d KiB: InvalidConfig after %s; agent peak RSS %d -> %d MiB", n, b.Len()>>10, said.Round(time.Millisecond), before>>20, after>>20)
	if after-before > agentMaxGrowth {
		t.Errorf("the agent's peak RSS grew by %d MiB, want at most %d MiB", (after-before)>>20, agentMaxGrowth>>20)
	}
	reportFault(faultRow{
		scenario: fmt.Sprintf("%s: agent, 1 MiB ConfigMap of %d images", flavor, n),
		outcome:  fmt.Sprintf("last good config kept, InvalidConfig Event in %s, peak RSS %d -> %d MiB", said.Round(10*time.Millisecond), before>>20, after>>20),
		lost:     lost, leaked: harness.AssertNoSecret(t, testUser, testPassword, agent.Log()),
	})
}

// vmHWM is the peak RSS of process pid so far, from /proc; a process
// started by exec has its own, unlike getrusage's, which keeps the test's.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kib << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// apiRecorder stands between the agent and the API server and records every
// request with the status it got (502 while the API server is down).
type apiRecorder struct {
	srv   *httptest.Server
	mu    sync.Mutex
	calls []apiCall
}

type apiCall struct {
	start        time.Time
	method, path string
	code         int
}

func (r apiCall) write() bool {
	switch r.method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

type codeWriter struct {
	http.ResponseWriter
	code int
}

func (w *codeWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *codeWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *codeWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func startAPIRecorder(t *testing.T, k *harness.Kube) *apiRecorder {
	t.Helper()
	target, err := url.Parse(k.URL)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(k.CAData)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	rp.FlushInterval = -1                    // watches stream
	rp.ErrorLog = log.New(io.Discard, "", 0) // GOAWAYs and refusals of the outage
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	p := &apiRecorder{}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &codeWriter{ResponseWriter: w}
		start := time.Now()
		rp.ServeHTTP(cw, r)
		p.mu.Lock()
		p.calls = append(p.calls, apiCall{start, r.Method, r.URL.Path, cw.code})
		p.mu.Unlock()
	}))
	p.srv.EnableHTTP2 = true
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	return p
}

// kubeconfig rewrites a kubeconfig to reach the API server through the
// recorder, with the same credentials.
func (p *apiRecorder) kubeconfig(t *testing.T, path string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
	for _, cl := range cfg.Clusters {
		cl.Server, cl.CertificateAuthorityData = p.srv.URL, ca
	}
	out := filepath.Join(t.TempDir(), "agent.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// since returns the completed requests sent after t.
func (p *apiRecorder) since(t time.Time) []apiCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []apiCall
	for _, r := range p.calls {
		if r.start.After(t) {
			out = append(out, r)
		}
	}
	return out
}

// okSince returns the completed requests sent after t that the API server
// answered with 2xx.
func (p *apiRecorder) okSince(t time.Time) []apiCall {
	var ok []apiCall
	for _, r := range p.since(t) {
		if r.code >= 200 && r.code < 300 {
			ok = append(ok, r)
		}
	}
	return ok
}

func describeAPI(calls []apiCall) string {
	s := make([]string, 0, len(calls))
	for _, r := range calls {
		s = append(s, fmt.Sprintf("%s %s %d", r.method, r.path, r.code))
	}
	return fmt.Sprintf("%q", s)
}
