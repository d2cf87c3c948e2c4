package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// What the agent is held to at rest and on an edit (docs/development/benchmarks.md).
const (
	idleWindow       = 60 * time.Second
	idleRSSTarget    = 40 << 20 // bytes
	idleCPUTarget    = 1.0      // % of one core
	editLatencyLimit = 2 * time.Second
	edits            = 7
	agentImages      = 10 // besides the sandbox image
)

// BenchmarkAgent runs `preloader agent` as a process, under the
// ServiceAccount and RBAC of manifests/, against a real kube-apiserver and
// containerd, and measures
//
//   - idle: all images present, resync 5s, for a minute: the API requests
//     the agent sends (every one goes through a counting proxy, so a no-op
//     PATCH would count too), its RSS and its CPU use;
//   - edit: a ConfigMap edit that adds (or removes) an image already in the
//     runtime, to the Node's status showing the new config, as seen by a
//     watch on the Node: the control-plane path, no pull.
//
// Zero API writes at rest is the design contract (docs/design/contract.md)
// and fails the benchmark; RSS, CPU and latency are reported against the
// targets above, as the other benchmarks report theirs.
func BenchmarkAgent(b *testing.B) {
	if preloaderBin == "" {
		b.Fatal("PRELOADER_BIN is not set: run `make bench`")
	}
	bin, err := filepath.Abs(preloaderBin)
	if err != nil {
		b.Fatal(err)
	}
	for _, flavor := range []harness.Flavor{harness.Containerd2, harness.Containerd16} {
		b.Run(string(flavor), func(b *testing.B) { benchAgent(b, bin, flavor) })
	}
}

func benchAgent(b *testing.B, bin string, flavor harness.Flavor) {
	const node = "bench-node"
	k := harness.StartKube(b)
	c := k.Client
	ctx := context.Background()
	kubectl := kubectlPath(b)
	if out, err := exec.Command(kubectl, "--kubeconfig", k.Kubeconfig, "apply", "-k", "../../manifests").CombinedOutput(); err != nil {
		b.Fatalf("kubectl apply -k manifests: %v\n%s", err, out)
	}

	reg := harness.StartRegistry(b, harness.RegistryOptions{})
	pause := harness.PushTestImages(b, reg, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	var specs []harness.ImageSpec
	for i := range agentImages + 1 {
		specs = append(specs, harness.ImageSpec{Repo: fmt.Sprintf("bench/app%d", i), Tag: "1", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10})
	}
	imgs := harness.PushTestImages(b, reg, specs)
	extra := imgs[agentImages].Ref // already in the runtime, in the config every other edit
	ctrd := harness.StartContainerd(b, harness.ContainerdOptions{Flavor: flavor, SandboxImage: pause.Ref})
	rt, err := cri.Connect(ctx, ctrd.Endpoint)
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	if _, err := rt.PullImage(ctx, extra, nil); err != nil {
		b.Fatal(err)
	}

	if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: node, Labels: map[string]string{"kubernetes.io/hostname": node}}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	configYAML := func(n int, withExtra bool) string {
		s := fmt.Sprintf("# edit %d\nsandboxImage: auto\nresync: 5s\nimages:\n", n)
		for _, img := range imgs[:agentImages] {
			s += "  - image: " + img.Ref + "\n"
		}
		if withExtra {
			s += "  - image: " + extra + "\n"
		}
		return s
	}
	hash := setConfig(b, c, configYAML(0, false))

	proxy := startCountingProxy(b, k)
	criCalls := startCRIProxy(b, ctrd)
	agent := startBenchAgent(b, bin, proxy.kubeconfig(b, k.KubeconfigForPodOn(b, "kube-preloader", "preloader", node)), node, criCalls.endpoint, ctrd)
	ready := waitNode(b, c, node, 2*time.Minute, func(st *nodestatus.Status) bool {
		return st.ConfigHash == hash && st.Present == agentImages+1 && st.Total == agentImages+1
	})
	b.Logf("agent ready: %d images present after %v", agentImages+1, ready.Round(time.Millisecond))

	b.Run("idle", func(b *testing.B) {
		// Two resyncs to settle: the first sync's Events are out, the
		// informers' echo of the agent's own patch has come back.
		time.Sleep(10 * time.Second)
		before := snapshot(b, c, node, agent, proxy, criCalls)
		time.Sleep(idleWindow)
		after := snapshot(b, c, node, agent, proxy, criCalls)

		reqs := proxy.since(before.requests)
		writes := 0
		for _, r := range reqs {
			if r.write() {
				writes++
			}
		}
		cpu := float64(after.cpuTicks-before.cpuTicks) / clockTicks / after.at.Sub(before.at).Seconds() * 100
		rss, anon, file := mib(after.rss), mib(after.rssAnon), mib(after.rssFile)
		calls := map[string]int{}
		for m, n := range after.cri {
			if d := n - before.cri[m]; d > 0 {
				calls[m] = d
			}
		}
		lists := calls[listImagesMethod]
		b.ReportMetric(float64(writes), "api-writes")
		b.ReportMetric(rss, "rss-MiB")
		b.ReportMetric(cpu, "cpu-%")
		fmt.Printf("agent idle %s: %d API writes, %d API requests of any kind in %v (Node resourceVersion %s→%s, Events %d→%d), target 0 writes\n",
			flavor, writes, len(reqs), idleWindow, before.nodeRV, after.nodeRV, before.events, after.events)
		fmt.Printf("agent idle %s: RSS %.1f MiB (VmRSS; %.1f MiB anonymous, %.1f MiB file-backed pages of the %.0f MiB binary; peak %.1f MiB), target ≤ %d MiB: %s\n",
			flavor, rss, anon, file, mib(fileSize(b, bin)), mib(after.hwm), idleRSSTarget>>20, verdict(rss <= mib(idleRSSTarget)))
		if agent.cgroup != nil {
			ws, err := agent.cgroup.workingSet()
			if err != nil {
				b.Errorf("working set: %v", err)
			} else {
				b.ReportMetric(mib(ws), "working-set-MiB")
				fmt.Printf("agent idle %s: working set %.1f MiB (its memory cgroup's usage less inactive file pages, what the kubelet holds against the limit), target ≤ %d MiB: %s\n",
					flavor, mib(ws), idleRSSTarget>>20, verdict(ws <= idleRSSTarget))
			}
		}
		fmt.Printf("agent idle %s: CPU %.2f%% of a core over %v, target ≤ %.0f%%: %s\n", flavor, cpu, idleWindow, idleCPUTarget, verdict(cpu <= idleCPUTarget))
		fmt.Printf("agent idle %s: CRI calls in %v with resync 5s: %v\n", flavor, idleWindow, calls)
		if writes != 0 || before.nodeRV != after.nodeRV || before.events != after.events {
			b.Errorf("idle agent wrote to the API: %s", describe(reqs))
		}
		if len(reqs) != 0 {
			b.Logf("requests while idle: %s", describe(reqs))
		}
		// At rest a resync is one ListImages and nothing else; with none,
		// the agent would be idle only because it stopped checking.
		want := int(idleWindow / (5 * time.Second))
		if lists < want-2 || lists > want+1 || len(calls) != 1 {
			b.Errorf("CRI calls while idle %v: want about %d ListImages and nothing else", calls, want)
		}
	})

	b.Run("edit", func(b *testing.B) {
		updates := watchNode(b, c, node)
		var lat []time.Duration
		before := proxy.since(0)
		for i := 1; i <= edits; i++ {
			data := configYAML(i, i%2 == 1)
			want := config.Hash([]byte(data))
			total := agentImages + 1
			if i%2 == 1 {
				total++
			}
			start := time.Now()
			setConfig(b, c, data)
			d := awaitStatus(b, updates, want, total, start)
			lat = append(lat, d)
			time.Sleep(time.Second)
		}
		patches := 0
		for _, r := range proxy.since(len(before)) {
			if r.method == http.MethodPatch && strings.Contains(r.path, "/nodes/"+node) {
				patches++
			}
		}
		m := median(lat)
		b.ReportMetric(float64(m.Milliseconds()), "edit-ms")
		fmt.Printf("agent edit %s: config edit → Node status %v, median of %d (min %v, max %v; all %v), target ≤ %v: %s; the proxy saw %d Node PATCHes for %d edits\n",
			flavor, m.Round(time.Millisecond), edits, minDur(lat).Round(time.Millisecond), maxDur(lat).Round(time.Millisecond), roundAll(lat),
			editLatencyLimit, verdict(m <= editLatencyLimit), patches, edits)
		// The idle measurement's proof: the counter sees the agent's writes.
		if patches != edits {
			b.Errorf("the counting proxy saw %d Node PATCHes for %d status changes", patches, edits)
		}
	})

	if err := agent.stop(); err != nil {
		b.Error(err)
	}
	if b.Failed() {
		b.Logf("agent log (tail):\n%s", tailFile(agent.logPath, 40))
	}
}

// kubectlPath is kubectl on PATH, else the one scripts/build-kube.sh built.
func kubectlPath(b *testing.B) string {
	if p, err := exec.LookPath("kubectl"); err == nil {
		return p
	}
	p := harness.KubeBinary("kubectl")
	harness.Require(b, "kubectl (scripts/build-kube.sh)", p)
	return p
}

func setConfig(b *testing.B, c kubernetes.Interface, data string) string {
	b.Helper()
	cms := c.CoreV1().ConfigMaps("kube-preloader")
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		cm, err := cms.Get(context.Background(), "preloader-config", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cm.Data = map[string]string{"images.yaml": data}
		_, err = cms.Update(context.Background(), cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return config.Hash([]byte(data))
}

func nodeStatus(n *corev1.Node) *nodestatus.Status {
	var st nodestatus.Status
	if err := json.Unmarshal([]byte(n.Annotations[nodestatus.AnnotationStatus]), &st); err != nil {
		return nil
	}
	return &st
}

// waitNode polls the Node until its status satisfies ok.
func waitNode(b *testing.B, c kubernetes.Interface, name string, timeout time.Duration, ok func(*nodestatus.Status) bool) time.Duration {
	b.Helper()
	start := time.Now()
	for {
		n, err := c.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err == nil {
			if st := nodeStatus(n); st != nil && ok(st) {
				return time.Since(start)
			}
		}
		if time.Since(start) > timeout {
			b.Fatalf("node %s not as expected after %v: %v %v", name, timeout, n.Annotations, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nodeUpdate is a Node as a watch delivered it, and when.
type nodeUpdate struct {
	at   time.Time
	node *corev1.Node
}

// watchNode informs on one Node straight from the API server (not through
// the proxy) and sends every version of it with the time it arrived: when
// a user watching the Node could have seen it.
func watchNode(b *testing.B, c kubernetes.Interface, name string) <-chan nodeUpdate {
	ch := make(chan nodeUpdate, 1000)
	lw := cache.NewListWatchFromClient(c.CoreV1().RESTClient(), "nodes", "", fields.OneTermEqualSelector("metadata.name", name))
	inf := cache.NewSharedIndexInformer(lw, &corev1.Node{}, 0, cache.Indexers{})
	send := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok {
			ch <- nodeUpdate{time.Now(), n}
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: send, UpdateFunc: func(_, n any) { send(n) }}); err != nil {
		b.Fatal(err)
	}
	stop := make(chan struct{})
	b.Cleanup(func() { close(stop) })
	go inf.Run(stop)
	if !cache.WaitForCacheSync(stop, inf.HasSynced) {
		b.Fatal("Node informer did not sync")
	}
	return ch
}

// awaitStatus reads Node updates until the status shows config hash with
// total images, all present, and returns how long after start it came.
func awaitStatus(b *testing.B, updates <-chan nodeUpdate, hash string, total int, start time.Time) time.Duration {
	b.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case u := <-updates:
			if st := nodeStatus(u.node); st != nil && st.ConfigHash == hash && st.Total == total && st.Present == total {
				return u.at.Sub(start)
			}
		case <-timeout:
			b.Fatalf("no Node status for config %s within a minute", hash)
		}
	}
}

// countingProxy stands between the agent and the API server and records
// every request the agent sends.
type countingProxy struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []apiRequest
}

type apiRequest struct {
	method, path, query string
}

func (r apiRequest) write() bool {
	switch r.method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

func startCountingProxy(b *testing.B, k *harness.Kube) *countingProxy {
	target, err := url.Parse(k.URL)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(k.CAData)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	rp.FlushInterval = -1 // watches stream
	p := &countingProxy{}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.reqs = append(p.reqs, apiRequest{r.Method, r.URL.Path, r.URL.RawQuery})
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	p.srv.EnableHTTP2 = true
	p.srv.StartTLS()
	b.Cleanup(p.srv.Close)
	return p
}

// kubeconfig rewrites a kubeconfig to reach the API server through the
// proxy, with the same credentials.
func (p *countingProxy) kubeconfig(b *testing.B, path string) string {
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		b.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
	for _, cl := range cfg.Clusters {
		cl.Server, cl.CertificateAuthorityData = p.srv.URL, ca
	}
	out := filepath.Join(b.TempDir(), "agent.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, out); err != nil {
		b.Fatal(err)
	}
	return out
}

// since returns the requests after the first n.
func (p *countingProxy) since(n int) []apiRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]apiRequest(nil), p.reqs[n:]...)
}

func describe(reqs []apiRequest) string {
	var s []string
	for _, r := range reqs {
		s = append(s, r.method+" "+r.path+"?"+r.query)
	}
	return fmt.Sprintf("%d: %q", len(s), s)
}

// benchAgentProc is the agent process.
type benchAgentProc struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
	cgroup  *memCgroup // nil when it could not have one
}

func startBenchAgent(b *testing.B, bin, kubeconfig, node, criEndpoint string, ctrd *harness.Containerd) *benchAgentProc {
	a := &benchAgentProc{logPath: filepath.Join(b.TempDir(), "agent.log"), done: make(chan struct{})}
	f, err := os.Create(a.logPath)
	if err != nil {
		b.Fatal(err)
	}
	args := []string{"agent", "--configmap", "kube-preloader/preloader-config", "--node-name", node,
		"--kubeconfig", kubeconfig, "--cri-endpoint", criEndpoint, "--containerd-address", ctrd.Address,
		"--metrics-addr", "127.0.0.1:0"}
	a.cmd = exec.Command(bin, args...)
	// In a memory cgroup of its own from its first instruction, started
	// from a copy of the binary the page cache does not hold, for the
	// working set as the kubelet sees it; without one (no permission, no
	// memory controller) the benchmark says so and reports VmRSS alone.
	if cg, err := newMemCgroup(fmt.Sprintf("preloader-bench-%d-%d", os.Getpid(), time.Now().UnixNano())); err != nil {
		b.Logf("no memory cgroup for the agent, no working set: %v", err)
	} else if fresh, err := uncachedCopy(bin, b.TempDir()); err != nil {
		cg.remove()
		b.Logf("no uncached copy of %s, no working set: %v", bin, err)
	} else {
		a.cgroup = cg
		a.cmd = exec.Command("/bin/sh", append([]string{"-c", `echo $$ > "$1" && shift && exec "$@"`, "sh", cg.procs(), fresh}, args...)...)
	}
	a.cmd.Env = append(os.Environ(), noderuntime.ContainerdConfigEnv+"="+ctrd.ConfigFile)
	a.cmd.Stdout, a.cmd.Stderr = f, f
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() {
		a.err = a.cmd.Wait()
		f.Close()
		close(a.done)
	}()
	b.Cleanup(func() {
		_ = a.stop()
		if a.cgroup != nil {
			if err := a.cgroup.remove(); err != nil {
				b.Logf("memory cgroup %s: %v", a.cgroup.dir, err)
			}
		}
	})
	return a
}

func (a *benchAgentProc) stop() error {
	select {
	case <-a.done:
		return a.err
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		return a.err
	case <-time.After(15 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
		return fmt.Errorf("agent ignored SIGTERM for 15s")
	}
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

type sample struct {
	at       time.Time
	requests int
	cpuTicks int64          // utime + stime
	rss, hwm int64          // VmRSS, VmHWM in bytes
	rssAnon  int64          // RssAnon: heap, stacks
	rssFile  int64          // RssFile: the binary's pages
	cri      map[string]int // CRI calls so far, by method
	nodeRV   string
	events   int
}

func snapshot(b *testing.B, c kubernetes.Interface, node string, a *benchAgentProc, p *countingProxy, cp *criProxy) sample {
	b.Helper()
	select {
	case <-a.done:
		b.Fatalf("agent exited: %v\n%s", a.err, tailFile(a.logPath, 40))
	default:
	}
	pid := a.cmd.Process.Pid
	s := sample{at: time.Now(), requests: len(p.since(0))}
	// /proc first: the API reads below are the benchmark's, not the agent's.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after "(comm)": state is field 3, utime 14, stime 15.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s.cpuTicks = ut + st
	status := procStatusKiB(pid)
	if status == nil {
		b.Fatalf("/proc/%d/status: the agent is gone", pid)
	}
	s.rss, s.hwm = status["VmRSS"]<<10, status["VmHWM"]<<10
	s.rssAnon, s.rssFile = status["RssAnon"]<<10, status["RssFile"]<<10
	s.cri = cp.counts()
	n, err := c.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	s.nodeRV = n.ResourceVersion
	evs, err := c.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	s.events = len(evs.Items)
	return s
}

func tailFile(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func minDur(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = min(m, d)
	}
	return m
}

func maxDur(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// listImagesMethod is the CRI call a sync at rest makes.
const listImagesMethod = "/runtime.v1.ImageService/ListImages"

// criProxy passes the agent's CRI calls through to containerd, counting
// them by method; the bytes go through untouched.
type criProxy struct {
	endpoint string
	mu       sync.Mutex
	calls    map[string]int
}

// rawCodec hands gRPC messages through as bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func startCRIProxy(b *testing.B, ctrd *harness.Containerd) *criProxy {
	// Not b.TempDir(): unix socket paths must stay short.
	dir, err := os.MkdirTemp("/tmp", "criproxy")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "cri.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	conn, err := grpc.NewClient(ctrd.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		b.Fatal(err)
	}
	p := &criProxy{endpoint: "unix://" + sock, calls: map[string]int{}}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		p.mu.Lock()
		p.calls[method]++
		p.mu.Unlock()
		cs, err := conn.NewStream(ss.Context(), &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
		if err != nil {
			return err
		}
		go func() {
			for {
				var m []byte
				if ss.RecvMsg(&m) != nil {
					_ = cs.CloseSend()
					return
				}
				if cs.SendMsg(&m) != nil {
					return
				}
			}
		}()
		for {
			var m []byte
			if err := cs.RecvMsg(&m); err != nil {
				if err == io.EOF {
					return nil
				}
				return err // the runtime's status, as it sent it
			}
			if err := ss.SendMsg(&m); err != nil {
				return err
			}
		}
	}))
	go srv.Serve(lis)
	b.Cleanup(func() {
		srv.Stop()
		conn.Close()
	})
	return p
}

func (p *criProxy) counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.calls)
}

func mib[T int64 | int](n T) float64 { return float64(n) / (1 << 20) }

func fileSize(b *testing.B, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT MET"
}
