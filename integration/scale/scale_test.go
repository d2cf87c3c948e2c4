// Package scale runs N real agents, each with its own containerd 2.x,
// against one kube-apiserver and one registry, three
// times: without waves, with rollout.maxNodesPulling 5, and through a
// pull-through mirror with rollout.firstNodes 1, and prints what each run
// cost the registry and the API server. It runs only when asked: `make
// scale` (PRELOADER_SCALE=20 nodes), or `make scale SCALE_NODES=30`.
package scale

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

const (
	maxPulling = 5                      // run 2's rollout.maxNodesPulling
	blobHold   = 300 * time.Millisecond // each node's blob download is held this long: a slow link
	readyBy    = 5 * time.Minute
	settle     = 3 * time.Second
	// What one cache miss of the distribution 2.8 mirror costs upstream.
	mirrorGetsPerMiss = 2 // after the last node is ready, for the releases and last patches
)

// row is one run's line of the table.
type row struct {
	name          string
	upstreamBytes int64
	maxLayerGets  int // the most GETs the upstream registry served of one layer
	peakNodes     int // nodes with a blob download in flight at once, seen by the proxy
	peakSlots     int // slot Leases held at once
	ready         time.Duration
	writes        float64
	writesBy      string
	watchEvents   float64
	watchBy       string
}

func TestScale(t *testing.T) {
	setting := os.Getenv("PRELOADER_SCALE")
	if setting == "" {
		t.Skip("opt-in: set PRELOADER_SCALE to a number of nodes (make scale, SCALE_NODES=20 by default) to run the scale test")
	}
	n, err := strconv.Atoi(setting)
	if err != nil || n < 1 {
		t.Fatalf("PRELOADER_SCALE=%q: want a number of nodes (20 or more for the scale checks)", setting)
	}
	if n < 20 {
		t.Logf("PRELOADER_SCALE=%d: fewer than the 20 nodes the scale checks are sized for; a development run", n)
	}
	bin, err := harness.BuildPreloader(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	k := harness.StartKube(t)
	c := k.Client
	k.Kubectl(t, "apply", "-k", "../../manifests")
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	up := startUpstream(t, reg.Host)
	mirror := startMirror(t, up.host)
	fr := startFront(t, n, blobHold)
	// Four images of 3 layers of 1 MiB (random, so about 1 MiB
	// compressed too), one per run, so that every run pulls anew.
	var imgs []harness.TestImage
	for i := 1; i <= 4; i++ {
		imgs = append(imgs, harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: fmt.Sprintf("scale/run%d", i), Tag: "1.0", OwnLayers: 3, LayerSize: 1 << 20}})[0])
	}
	ref := func(img harness.TestImage) string { return strings.Replace(img.Ref, reg.Host, up.host, 1) }

	base := harness.SetImagesYAML(t, c, "sandboxImage: none\nimages: []\n")
	nodes := make([]string, n)
	start := time.Now()
	for i := range nodes {
		nodes[i] = fmt.Sprintf("scale-%02d", i)
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodes[i], Labels: map[string]string{"kubernetes.io/hostname": nodes[i]}}}
		if _, err := c.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2})
		// The upstream host's only host, for this node, is its own
		// entrance of the front proxy.
		hosts := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+up.host, "http://"+fr.hosts[i])
		dir := ctrd.Path(filepath.Join(ctrd.ConfigPath, up.host))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
		harness.StartAgent(t, harness.AgentOptions{Bin: bin, Kubeconfig: k.KubeconfigForPodOn(t, harness.AgentNamespace, harness.AgentServiceAccount, nodes[i]), Node: nodes[i], Containerd: ctrd})
	}
	t.Logf("%d nodes with containerd and agent started in %s", n, time.Since(start).Round(time.Millisecond))
	waitReady(t, c, nodes, base, 0)

	common := "sandboxImage: none\nresync: 30s\nretry: {initialDelay: 200ms, maxDelay: 2s}\n"
	var rows []row
	rows = append(rows, runOnce(t, c, nodes, fr, up, up.host, "1. no waves (maxNodesPulling 100%)", common+"images:\n  - image: "+ref(imgs[0])+"\n", imgs[0]))
	r2 := runOnce(t, c, nodes, fr, up, up.host, fmt.Sprintf("2. maxNodesPulling %d", maxPulling),
		common+fmt.Sprintf("rollout: {maxNodesPulling: %d}\nimages:\n  - image: %s\n", maxPulling, ref(imgs[1])), imgs[1])
	rows = append(rows, r2)
	if r2.peakNodes > maxPulling {
		t.Errorf("maxNodesPulling %d: the proxy saw %d nodes pulling at once", maxPulling, r2.peakNodes)
	}
	if r2.peakSlots > maxPulling {
		t.Errorf("maxNodesPulling %d: %d slot Leases held at once", maxPulling, r2.peakSlots)
	}
	r3 := runOnce(t, c, nodes, fr, up, mirror, "3. mirror + firstNodes 1",
		common+"rollout: {firstNodes: 1, firstNodesTimeout: 2m}\nimages:\n  - image: "+ref(imgs[2])+"\n", imgs[2])
	rows = append(rows, r3)
	// Every layer reaches the upstream registry through one miss of the
	// mirror, whatever N. Debian's distribution (2.8.2) fetches a missed
	// blob twice: once streamed to the client, once in the background
	// into its cache (proxyblobstore's copyContent and storeLocal); a
	// third GET would be a second miss, or a node going around the mirror.
	gets := up.blobGets()
	for _, l := range imgs[2].Layers {
		if gets[l] == 0 || gets[l] > mirrorGetsPerMiss {
			t.Errorf("mirror + firstNodes 1: upstream served layer %s %d times, want one mirror miss (%d GETs)", l[:19], gets[l], mirrorGetsPerMiss)
		}
	}

	// For comparison, not a check: the mirror without firstNodes, every
	// node missing at once.
	rows = append(rows, runOnce(t, c, nodes, fr, up, mirror, "4. mirror, no firstNodes",
		common+"images:\n  - image: "+ref(imgs[3])+"\n", imgs[3]))

	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "run (%d nodes, image %.1f MiB, 3 layers)\tregistry bytes served\tmost GETs of one layer\tpeak nodes pulling\tpeak slots held\tall ready after\tAPI writes\twatch events\n", n, float64(imgs[0].Size)/(1<<20))
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%.1f MiB\t%d\t%d\t%d\t%s\t%.0f\t%.0f\n", r.name, float64(r.upstreamBytes)/(1<<20), r.maxLayerGets, r.peakNodes, r.peakSlots, r.ready.Round(100*time.Millisecond), r.writes, r.watchEvents)
	}
	tw.Flush()
	t.Logf("scale table:\n%s", b.String())
	var open []string
	for res, v := range apiCounts(t, c).watches {
		if v > 0 {
			open = append(open, fmt.Sprintf("%s %.0f", res, v))
		}
	}
	sort.Strings(open)
	t.Logf("watch connections open on kube-apiserver with %d agents: %s", n, strings.Join(open, ", "))
	for _, r := range rows {
		t.Logf("%s: API writes by verb and resource: %s; watch events by kind: %s", r.name, r.writesBy, r.watchBy)
	}
}

// runOnce sets cfg, with the nodes' downloads going to target, and
// measures until every node shows img present and ready.
func runOnce(t *testing.T, c kubernetes.Interface, nodes []string, fr *front, up *upstream, target, name, cfg string, img harness.TestImage) row {
	t.Helper()
	fr.reset(target)
	up.reset()
	before := apiCounts(t, c)
	stop := make(chan struct{})
	var peakSlots int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			peakSlots = max(peakSlots, heldSlots(c))
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	hash := harness.SetImagesYAML(t, c, cfg)
	waitReady(t, c, nodes, hash, 1)
	ready := time.Since(start)
	time.Sleep(settle)
	close(stop)
	wg.Wait()
	after := apiCounts(t, c)

	r := row{name: name, upstreamBytes: up.bytes.Load(), peakSlots: peakSlots, ready: ready}
	r.peakNodes, _ = fr.read()
	for _, l := range img.Layers {
		r.maxLayerGets = max(r.maxLayerGets, up.blobGets()[l])
	}
	var by []string
	for k, v := range after.writes {
		d := v - before.writes[k]
		// The test's own edit of the ConfigMap is not the agents'.
		if strings.HasSuffix(k, " configmaps") {
			d--
		}
		if d > 0 {
			r.writes += d
			by = append(by, fmt.Sprintf("%s %.0f", k, d))
		}
	}
	sort.Strings(by)
	r.writesBy = strings.Join(by, ", ")
	r.watchEvents = after.watchEvents - before.watchEvents
	var wby []string
	for k, v := range after.watchBy {
		if d := v - before.watchBy[k]; d > 0 {
			wby = append(wby, fmt.Sprintf("%s %.0f", k, d))
		}
	}
	sort.Strings(wby)
	r.watchBy = strings.Join(wby, ", ")
	t.Logf("%s: all %d nodes ready after %s", name, len(nodes), ready.Round(time.Millisecond))
	return r
}

// waitReady waits until every node shows config hash with present of
// present images, ready.
func waitReady(t *testing.T, c kubernetes.Interface, nodes []string, hash string, present int) {
	t.Helper()
	deadline := time.Now().Add(readyBy)
	for {
		var behind []string
		for _, n := range nodes {
			if why := harness.ViewNode(c, n).Shows(hash, present, present); why != "" {
				behind = append(behind, n+": "+why)
			}
		}
		if len(behind) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d nodes not ready after %v; first: %s", len(behind), len(nodes), readyBy, behind[0])
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// heldSlots counts the slot Leases held and not lapsed.
func heldSlots(c kubernetes.Interface) int {
	l, err := c.CoordinationV1().Leases(harness.AgentNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: "preloader.io/lease=slot"})
	if err != nil {
		return 0
	}
	held := 0
	for _, le := range l.Items {
		s := le.Spec
		if s.HolderIdentity == nil || *s.HolderIdentity == "" {
			continue
		}
		if s.RenewTime != nil && s.LeaseDurationSeconds != nil && time.Since(s.RenewTime.Time) > time.Duration(*s.LeaseDurationSeconds)*time.Second {
			continue
		}
		held++
	}
	return held
}

// counts are the API server's own counters, from its /metrics.
type counts struct {
	writes      map[string]float64 // "VERB resource" -> requests
	watchEvents float64            // events sent to watchers, all kinds
	watchBy     map[string]float64 // by kind
	watches     map[string]float64 // open watch connections by resource
}

// apiCounts reads kube-apiserver's /metrics with the admin client:
// apiserver_request_total by verb and resource (writes only) and
// apiserver_watch_events_total.
func apiCounts(t *testing.T, c kubernetes.Interface) counts {
	t.Helper()
	body, err := c.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("kube-apiserver /metrics: %v", err)
	}
	out := counts{writes: map[string]float64{}, watchBy: map[string]float64{}, watches: map[string]float64{}}
	for _, line := range strings.Split(string(body), "\n") {
		labels, value, ok := sample(line)
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(line, "apiserver_request_total{"):
			switch verb := labels["verb"]; verb {
			case "CREATE", "UPDATE", "PATCH", "DELETE", "APPLY", "POST", "PUT":
				key := verb + " " + labels["resource"]
				if labels["subresource"] != "" {
					key += "/" + labels["subresource"]
				}
				// Conflicts (409: a slot or image Lease another node
				// took first) are writes the API server refused.
				if code := labels["code"]; !strings.HasPrefix(code, "2") {
					key += " (" + code + ")"
				}
				out.writes[key] += value
			}
		case strings.HasPrefix(line, "apiserver_longrunning_requests{") && labels["verb"] == "WATCH":
			out.watches[labels["resource"]] += value
		case strings.HasPrefix(line, "apiserver_watch_events_total{"):
			out.watchEvents += value
			out.watchBy[labels["kind"]+labels["resource"]] += value
		}
	}
	return out
}

// sample parses a Prometheus text line name{k="v",...} value.
func sample(line string) (map[string]string, float64, bool) {
	open, closing := strings.IndexByte(line, '{'), strings.LastIndexByte(line, '}')
	if open < 0 || closing < open {
		return nil, 0, false
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(line[closing+1:]), 64)
	if err != nil {
		return nil, 0, false
	}
	labels := map[string]string{}
	for _, kv := range strings.Split(line[open+1:closing], ",") {
		k, val, ok := strings.Cut(kv, "=")
		if ok {
			labels[k] = strings.Trim(val, `"`)
		}
	}
	return labels, v, true
}

// startMirror runs the distribution registry in proxy mode (a pull-through
// cache) for the plain-HTTP registry at remote, and returns its host.
func startMirror(t *testing.T, remote string) string {
	t.Helper()
	harness.Require(t, "docker-registry", harness.RegistryBinary)
	dir := t.TempDir()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := lis.Addr().String()
	lis.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: %q\nhttp:\n  addr: %s\nproxy:\n  remoteurl: http://%s\n", filepath.Join(dir, "data"), host, remote)
	path := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "mirror.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(harness.RegistryBinary, "serve", path)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REGISTRY_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logf.Close()
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return host
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("mirror did not answer /v2/: %v\n%s", err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
