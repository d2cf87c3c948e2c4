package scale

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// apiCounter is a reverse proxy in front of the kube-apiserver that counts
// requests by client (the user agent's product, preloader-agent or
// preloader-controller), verb and resource. A watch counts once, when it
// starts: the requests an API server handles, not the events it sends.
type apiCounter struct {
	url string
	ca  []byte // PEM of the proxy's certificate

	mu     sync.Mutex
	counts map[string]int // "client verb resource"
}

func startAPICounter(t *testing.T, k *harness.Kube) *apiCounter {
	t.Helper()
	target, err := url.Parse(k.URL)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(k.CAData) {
		t.Fatal("kube CA: no certificate")
	}
	a := &apiCounter{counts: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	rp.FlushInterval = -1
	// TLS: client-go sends credentials only to an https server.
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client, _, _ := strings.Cut(r.UserAgent(), "/")
		resource, named := resourceOf(r.URL.Path)
		verb := strings.ToLower(r.Method)
		switch {
		case r.Method == http.MethodGet && r.URL.Query().Get("watch") == "true":
			verb = "watch"
		case r.Method == http.MethodGet && !named:
			verb = "list"
		}
		a.mu.Lock()
		a.counts[client+" "+verb+" "+resource]++
		a.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	a.url = srv.URL
	a.ca = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return a
}

// resourceOf is the resource of an API path, and whether the path names
// one object: /api/v1/namespaces/NS/configmaps/NAME → configmaps, true.
func resourceOf(path string) (string, bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(parts) > 3 && parts[0] == "apis":
		parts = parts[3:]
	case len(parts) > 2 && parts[0] == "api":
		parts = parts[2:]
	default:
		return path, false
	}
	if len(parts) > 2 && parts[0] == "namespaces" {
		parts = parts[2:]
	}
	return parts[0], len(parts) > 1
}

func (a *apiCounter) take() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.counts
	a.counts = map[string]int{}
	return out
}

// through rewrites the kubeconfig at path to reach the API server through a.
func (a *apiCounter) through(t *testing.T, path string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfg.Clusters {
		c.Server, c.CertificateAuthorityData = a.url, a.ca
	}
	out := path + ".counted"
	if err := clientcmd.WriteToFile(*cfg, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAPILoadAtRest measures what the agents and the controller ask of the
// API server while nothing changes, with few and with many selected
// workloads: requests per node per hour, from a counting proxy in front of
// the kube-apiserver. It runs only when asked: `make api-load` (window
// PRELOADER_LOAD_WINDOW per workload count, PRELOADER_LOAD_NODES agents).
func TestAPILoadAtRest(t *testing.T) {
	setting := os.Getenv("PRELOADER_LOAD_WINDOW")
	if setting == "" {
		t.Skip("opt-in: set PRELOADER_LOAD_WINDOW to a duration (make api-load) to measure the API load at rest")
	}
	window, err := time.ParseDuration(setting)
	if err != nil || window < time.Minute {
		t.Fatalf("PRELOADER_LOAD_WINDOW=%q: want a duration of a minute or more", setting)
	}
	n := 5
	if s := os.Getenv("PRELOADER_LOAD_NODES"); s != "" {
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			t.Fatalf("PRELOADER_LOAD_NODES=%q: want a number of nodes", s)
		}
	}
	bin, err := harness.BuildPreloader(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	k.Kubectl(t, "apply", "-k", "../../manifests")
	k.Kubectl(t, "apply", "-k", "../../manifests/controller")
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	counter := startAPICounter(t, k)

	// Real images, small, so that the agents hold them all and are at
	// rest: present, nothing to retry.
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	var specs []harness.ImageSpec
	for i := range 200 {
		specs = append(specs, harness.ImageSpec{Repo: fmt.Sprintf("shop/app-%03d", i), Tag: "1", OwnLayers: 1, LayerSize: 1 << 10})
	}
	imgs := harness.PushTestImages(t, reg, specs)
	harness.SetImagesYAML(t, c, "sandboxImage: none\nimages: []\nworkloads:\n  - namespaces: [shop]\n")
	ctrl := startControllerProcess(t, bin, counter.through(t, k.KubeconfigFor(t, harness.AgentNamespace, "preloader-controller")))
	nodes := make([]string, n)
	for i := range nodes {
		nodes[i] = fmt.Sprintf("load-%02d", i)
		if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodes[i]}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2})
		harness.StartAgent(t, harness.AgentOptions{Bin: bin, Kubeconfig: counter.through(t, k.KubeconfigForPodOn(t, harness.AgentNamespace, harness.AgentServiceAccount, nodes[i])), Node: nodes[i], Containerd: ctrd})
	}

	created := 0
	var report []string
	for _, m := range []int{10, 200} {
		for ; created < m; created++ {
			d := &appsv1.Deployment{
				ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: fmt.Sprintf("app-%03d", created)},
				Spec: appsv1.DeploymentSpec{
					Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}},
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "x"}},
						Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: imgs[created].Ref}}},
					},
				},
			}
			if _, err := c.AppsV1().Deployments("shop").Create(ctx, d, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		want := imgs[m-1].Ref
		deadline := time.Now().Add(time.Minute)
		var hash string
		for {
			cm, err := c.CoreV1().ConfigMaps(harness.AgentNamespace).Get(ctx, harness.AgentConfigMap, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(cm.Data[workloads.Key], want) {
				hash = workloads.Hash(cm.Data, "images.yaml")
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d workloads: %s does not list %s after a minute\n%s", m, workloads.Key, want, ctrl())
			}
			time.Sleep(200 * time.Millisecond)
		}
		// At rest: every node holds every image, then a pause for the
		// last status writes and Events.
		deadline = time.Now().Add(10 * time.Minute)
		for _, node := range nodes {
			for why := "?"; why != ""; {
				if why = harness.ViewNode(c, node).Shows(hash, m, m); why != "" && time.Now().After(deadline) {
					t.Fatalf("%d workloads: %s: %s", m, node, why)
				}
				time.Sleep(time.Second)
			}
		}
		time.Sleep(20 * time.Second)
		counter.take()
		time.Sleep(window)
		counts := counter.take()
		var agent, controller int
		var lines []string
		for k, v := range counts {
			switch {
			case strings.HasPrefix(k, "preloader-agent "):
				agent += v
			case strings.HasPrefix(k, "preloader-controller "):
				controller += v
			}
			lines = append(lines, fmt.Sprintf("%s: %d", k, v))
		}
		sort.Strings(lines)
		perHour := func(x int) float64 { return float64(x) * float64(time.Hour) / float64(window) }
		line := fmt.Sprintf("%d workloads, %d nodes, %s at rest: agents %d requests (%.1f per node per hour), controller %d (%.1f per hour, for the cluster)",
			m, n, window, agent, perHour(agent)/float64(n), controller, perHour(controller))
		report = append(report, line)
		t.Logf("%s\n  %s", line, strings.Join(lines, "\n  "))
	}
	t.Logf("API load at rest:\n%s", strings.Join(report, "\n"))
}

// startControllerProcess runs `preloader controller` on the agents'
// ConfigMap; it returns its log.
func startControllerProcess(t *testing.T, bin, kubeconfig string) func() string {
	t.Helper()
	path := t.TempDir() + "/controller.log"
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "controller", "--configmap", harness.AgentNamespace+"/"+harness.AgentConfigMap, "--kubeconfig", kubeconfig, "--identity", "load")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		f.Close()
	})
	return func() string { b, _ := os.ReadFile(path); return string(b) }
}
