package integration

// Progress as users watch it: `preloader once` on a terminal and in a log,
// and the agent's status annotation, while a pull is paced by a link that
// delivers its bytes at a fixed rate until the test lifts it. The pace is
// shared by every response of the blob, so a pull cannot end sooner by
// fetching it in ranges over several connections.

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/kube-preloader/kube-preloader/agent"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// pacedLink answers the requests match accepts itself, from the registry
// at target, at rate bytes per second over all of them together, until
// lift.
type pacedLink struct {
	target string
	match  func(*http.Request) bool

	mu   sync.Mutex
	rate int64
	next time.Time
}

func (p *pacedLink) serve(w http.ResponseWriter, r *http.Request) bool {
	if !p.match(r) {
		return false
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, "http://"+p.target+r.URL.RequestURI(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return true
	}
	req.Header = r.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return true
	}
	defer resp.Body.Close()
	maps.Copy(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	buf := make([]byte, 8<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if !p.wait(r.Context(), n) {
				return true
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return true
			}
			w.(http.Flusher).Flush()
		}
		if err != nil {
			return true
		}
	}
}

// wait takes n bytes of the shared pace; false when the request ended.
func (p *pacedLink) wait(ctx context.Context, n int) bool {
	p.mu.Lock()
	if p.rate == 0 {
		p.mu.Unlock()
		return true
	}
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	p.next = p.next.Add(time.Duration(int64(n) * int64(time.Second) / p.rate))
	d := p.next.Sub(now)
	p.mu.Unlock()
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

func (p *pacedLink) lift() {
	p.mu.Lock()
	p.rate = 0
	p.mu.Unlock()
}

// pacedImage pushes a fresh image of one layer of size bytes and returns
// it with its reference through a proxy that paces that layer at rate.
func pacedImage(t *testing.T, reg *harness.Registry, repo string, size int, rate int64) (harness.TestImage, string, *pacedLink) {
	t.Helper()
	img := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: repo, Tag: "1.0", OwnLayers: 1, LayerSize: size}})[0]
	link := &pacedLink{target: reg.Host, rate: rate, match: func(r *http.Request) bool { return isLayerGet(r, img) }}
	t.Cleanup(link.lift)
	p := harness.StartProxy(t, reg.Host, harness.ProxyOptions{Fault: link.serve})
	return img, strings.Replace(img.Ref, reg.Host, p.Host, 1), link
}

// byteSize reads a size as the progress prints it ("6.0MiB").
func byteSize(t *testing.T, s string) float64 {
	t.Helper()
	units := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
	m := regexp.MustCompile(`^([0-9.]+)(B|KiB|MiB|GiB)$`).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("not a size: %q", s)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v * units[m[2]]
}

// sizeNear says whether printed, rounded to a tenth of its unit, is n.
func sizeNear(t *testing.T, printed string, n int64) bool {
	got := byteSize(t, printed)
	return got >= float64(n)*0.95 && got <= float64(n)*1.05
}

func TestOnceProgress(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2})
	env := []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}
	dir := t.TempDir()
	config := func(name, ref string) string {
		// The containerd client's path, the one that counts bytes on any
		// containerd 2.x; the disk is not what this test is about.
		return writeFile(t, dir, name, "sandboxImage: none\npullVia: containerd\ndiskBudget: none\nimages:\n  - image: "+ref+"\n")
	}
	const layer = 16 << 20

	// stderr a pipe, as in a bootstrap log: a log line per image at most
	// every 10 s, with the bytes, rate and time left; stdout JSON alone.
	t.Run("log", func(t *testing.T) {
		img, ref, link := pacedImage(t, reg, "progress/log", layer, 256<<10)
		var stdout, stderr harness.LockedBuffer
		cmd := exec.Command(preloaderBin, "once", "--config", config("log.yaml", ref), "-o", "json", "--timeout", "3m")
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		lineRE := regexp.MustCompile(`(?m)^time=(\S+) level=INFO msg=pulling image=(\S+) done=(\S+) total=(\S+) rate=(\S+) eta=(\S+) elapsed=\S+$`)
		runPaced(t, cmd, &stderr, link, "three progress lines", func(s string) bool { return len(lineRE.FindAllString(s, -1)) >= 3 })
		var out onceResult
		if err := json.Unmarshal([]byte(stdout.String()), &out); err != nil {
			t.Fatalf("stdout is not JSON alone: %v\n%s", err, stdout.String())
		}
		if st, _ := out.status(ref); st != "pulled" {
			t.Errorf("%s: %s, want pulled\n%s", ref, st, stdout.String())
		}
		if strings.Contains(stderr.String(), "\x1b[") {
			t.Errorf("terminal control sequences in a log:\n%q", stderr.String())
		}
		var last time.Time
		for i, m := range lineRE.FindAllStringSubmatch(stderr.String(), -1) {
			at, err := time.Parse(time.RFC3339Nano, m[1])
			if err != nil {
				t.Fatal(err)
			}
			if i > 0 && at.Sub(last) < 9500*time.Millisecond {
				t.Errorf("progress lines %s apart, want at least 10s:\n%s", at.Sub(last), stderr.String())
			}
			last = at
			if m[2] != ref || byteSize(t, m[3]) <= 0 || !sizeNear(t, m[4], img.Size) {
				t.Errorf("line %d: image %s done %s total %s; want %s, done > 0, total about %d", i, m[2], m[3], m[4], ref, img.Size)
			}
			// 256 KiB/s through the paced link: the rate says so.
			if r := byteSize(t, strings.TrimSuffix(m[5], "/s")); r < 128<<10 || r > 384<<10 {
				t.Errorf("line %d: rate %s, want about 256KiB/s", i, m[5])
			}
			if _, err := time.ParseDuration(m[6]); err != nil && !regexp.MustCompile(`^\d+m\d{2}s$`).MatchString(m[6]) {
				t.Errorf("line %d: eta %q is not a time left", i, m[6])
			}
		}
	})

	// On a terminal (a pty from script(1)): live lines redrawn in place
	// with bytes, rate and time left, cleared before the results table.
	t.Run("terminal", func(t *testing.T) {
		if _, err := exec.LookPath("script"); err != nil {
			if harness.Strict() {
				t.Fatalf("integration prerequisite missing: script (util-linux): %v", err)
			}
			t.Skipf("integration prerequisite missing: script (util-linux): %v (set CI=true to fail instead of skip)", err)
		}
		img, ref, link := pacedImage(t, reg, "progress/tty", layer, 1<<20)
		var out harness.LockedBuffer
		cmd := exec.Command("script", "-qfec", preloaderBin+" once --config "+config("tty.yaml", ref)+" --timeout 3m", "/dev/null")
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = &out, &out
		clear := "\x1b[1A\x1b[2K"
		runPaced(t, cmd, &out, link, "a live line redrawn 4 times", func(s string) bool { return strings.Count(s, clear) >= 4 })
		text := strings.ReplaceAll(out.String(), "\r\n", "\n")
		lineRE := regexp.MustCompile(`pulling ` + regexp.QuoteMeta(ref) + `  (\S+) / (\S+) +(\d+)%  (\S+)/s  ETA (\S+)\n`)
		lines := lineRE.FindAllStringSubmatch(text, -1)
		if len(lines) < 3 {
			t.Fatalf("%d live lines for %s, want at least 3:\n%q", len(lines), ref, text)
		}
		for _, m := range lines[1:] { // the first precedes the first rate
			if byteSize(t, m[1]) <= 0 || !sizeNear(t, m[2], img.Size) || byteSize(t, m[4]) < 512<<10 || m[5] == "-" {
				t.Errorf("live line %q: want bytes done of about %d, a rate near 1MiB/s and a time left", strings.TrimSpace(m[0]), img.Size)
			}
		}
		// The table comes after the last clearing, whole, with no live line
		// in or after it.
		i := strings.LastIndex(text, clear)
		table := text[i+len(clear):]
		if !regexp.MustCompile(`(?m)^IMAGE +STATUS +SIZE +TIME +REASON\n` + regexp.QuoteMeta(ref) + ` +pulled +`).MatchString(table) {
			t.Errorf("results table not intact after the live lines:\n%q", table)
		}
		if strings.Contains(table, "pulling ") {
			t.Errorf("a live line left in the table:\n%q", table)
		}
	})
}

// runPaced runs cmd until its output shows enough, then lifts the link's
// pace and waits for it to exit 0.
func runPaced(t *testing.T, cmd *exec.Cmd, out *harness.LockedBuffer, link *pacedLink, enough string, shows func(string) bool) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for !shows(out.String()) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			t.Fatalf("no %s in 60s:\n%q", enough, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	link.lift()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%v: %v\n%q", cmd.Args, err, out.String())
		}
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%v did not end after the link was lifted:\n%q", cmd.Args, out.String())
	}
}

// The agent shows the bytes of a pull in flight in its status annotation,
// no more often than agent.ProgressInterval, without moving the status's
// changed time or the label, and clears it with its status write once the
// pull ends; at rest it writes nothing.
func TestAgentProgress(t *testing.T) {
	const nodeName = "gpu-1"
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	k.Kubectl(t, "apply", "-k", "../manifests")
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	pause := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	img, ref, link := pacedImage(t, reg, "progress/agent", 8<<20, 96<<10)
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})
	createNode(t, c, nodeName, nil, func(n *corev1.Node) {
		n.Spec.Taints = []corev1.Taint{{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}}
	})

	// Every change of what the agent writes, seen as the API server
	// stores it.
	type write struct {
		at     time.Time
		ready  string
		status nodestatus.Status
	}
	var (
		mu     sync.Mutex
		writes []write
	)
	w, err := c.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + nodeName})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	go func() {
		var lastAnn, lastReady string
		for ev := range w.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if !ok || ev.Type != watch.Modified {
				continue
			}
			ann, ready := n.Annotations[nodestatus.AnnotationStatus], n.Labels[nodestatus.LabelReady]
			if ann == lastAnn && ready == lastReady {
				continue // not the agent's write
			}
			lastAnn, lastReady = ann, ready
			st, err := nodestatus.Decode(ann)
			if err != nil {
				t.Errorf("annotation does not decode: %v", err)
			}
			mu.Lock()
			writes = append(writes, write{at: time.Now(), ready: ready, status: st})
			mu.Unlock()
		}
	}()
	seen := func() []write {
		mu.Lock()
		defer mu.Unlock()
		return append([]write(nil), writes...)
	}

	harness.SetImagesYAML(t, c, agentConfig("  - image: "+ref+"\n")+"pullVia: containerd\ndiskBudget: none\n")
	started := time.Now()
	a := startAgent(t, k.KubeconfigForPodOn(t, agentNS, agentSA, nodeName), nodeName, ctrd)

	var first write
	a.Eventually(t, 40*time.Second, "progress in the status annotation", func() string {
		for _, w := range seen() {
			if len(w.status.Pulling) > 0 {
				first = w
				return ""
			}
		}
		return fmt.Sprintf("writes so far: %+v", seen())
	})
	if d := first.at.Sub(started); d < agent.ProgressInterval-time.Second {
		t.Errorf("first progress write %s after the agent started, want no sooner than %s", d, agent.ProgressInterval)
	}
	p := first.status.Pulling[0]
	if p.Image != ref || p.Done <= 0 || p.Done >= p.Total || p.Total < int64(8<<20) || p.Total > img.Size {
		t.Errorf("pulling %+v: want %s with 0 < done < total, total the image's blobs (%d of %d)", p, ref, 8<<20, img.Size)
	}
	if first.ready != "" || first.status.Ready() || !strings.Contains(strings.Join(first.status.Missing, ","), ref) {
		t.Errorf("a progress write on a new node says it is ready, or not what is missing: label %q, %+v", first.ready, first.status)
	}
	if v := harness.ViewNode(c, nodeName); !v.Tainted {
		t.Errorf("taint lifted while pulling: %s", v)
	}
	r := preloader(t, time.Minute, nil, "status", "-o", "wide", "--kubeconfig", k.Kubeconfig)
	if rows := tableRows(t, r.stdout); len(rows) != 1 || !strings.HasPrefix(rows[0]["PULLING"], ref+" ") || !strings.Contains(rows[0]["PULLING"], "/") {
		t.Errorf("status -o wide: want PULLING %s with done/total:\n%s", ref, r)
	}

	// Hold the pull for two more intervals and more: bytes arrive all the
	// time, the writes stay an interval apart.
	window := 2*agent.ProgressInterval + 5*time.Second
	time.Sleep(time.Until(first.at.Add(window)))
	var during []write
	for _, w := range seen() {
		if !w.at.Before(first.at) && len(w.status.Pulling) > 0 {
			during = append(during, w)
		}
	}
	for _, w := range during {
		t.Logf("progress write %s after the first: %+v", w.at.Sub(first.at).Round(time.Millisecond), w.status.Pulling)
	}
	if max := int(window/agent.ProgressInterval) + 1; len(during) < 2 || len(during) > max {
		t.Errorf("%d progress writes in %s, want 2..%d: %+v", len(during), window, max, during)
	}
	for i := 1; i < len(during); i++ {
		if gap := during[i].at.Sub(during[i-1].at); gap < agent.ProgressInterval-time.Second {
			t.Errorf("progress writes %s apart, want at least %s", gap, agent.ProgressInterval)
		}
		if !during[i].status.Changed.Equal(first.status.Changed) {
			t.Errorf("progress moved the status's changed time: %s, then %s", first.status.Changed, during[i].status.Changed)
		}
		if during[i].status.Pulling[0].Done <= during[i-1].status.Pulling[0].Done {
			t.Errorf("progress did not advance: %+v then %+v", during[i-1].status.Pulling, during[i].status.Pulling)
		}
	}

	// Lifted: the pull ends, the status write shows the node ready with no
	// progress left, and at rest (resync 3s) nothing more is written.
	link.lift()
	a.Eventually(t, time.Minute, "ready", func() string {
		ws := seen()
		if l := ws[len(ws)-1]; l.ready != "true" || len(l.status.Pulling) > 0 {
			return fmt.Sprintf("last write: label %q, %+v", l.ready, l.status)
		}
		return ""
	})
	n := len(seen())
	time.Sleep(7 * time.Second)
	if ws := seen(); len(ws) != n {
		t.Errorf("%d writes at rest after the pull: %+v", len(ws)-n, ws[n:])
	}
	if v := harness.ViewNode(c, nodeName); v.Tainted || strings.Contains(v.Node.Annotations[nodestatus.AnnotationStatus], "pulling") {
		t.Errorf("after the pull: %s", v)
	}
}
