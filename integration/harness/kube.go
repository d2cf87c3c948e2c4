package harness

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kube-preloader/kube-preloader/integration/harness/daemons"
)

// KubeVersion is the control plane's release (kube-apiserver,
// controller-manager, scheduler, kubectl) and the default kubelet's, the
// newest supported one; scripts/build-kube.sh builds it.
const KubeVersion = "v1.37.2"

// OldestKubeletVersion is the oldest supported kubelet minor, the last that
// runs on containerd 1.x; `make deps` builds its kubelet too.
const OldestKubeletVersion = "v1.35.4"

// etcdPath is the Debian etcd-server binary.
const etcdPath = "/usr/bin/etcd"

// KubeBinary is where scripts/build-kube.sh leaves a Kubernetes binary:
// $PRELOADER_CACHE (default ~/.cache/kube-preloader)/bin/NAME-$KUBE_VERSION.
func KubeBinary(name string) string {
	v := os.Getenv("KUBE_VERSION")
	if v == "" {
		v = KubeVersion
	}
	return filepath.Join(CacheDir(), "bin", name+"-"+v)
}

// kubeletBinary is the kubelet of a release scripts/build-kube.sh built.
func kubeletBinary(version string) string {
	return filepath.Join(CacheDir(), "bin", "kubelet-"+version)
}

// serviceAccountIssuer is the issuer (and API audience) of the test API server.
const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// Kube is a real etcd and kube-apiserver on 127.0.0.1, owned by one test.
type Kube struct {
	// Dir holds etcd data, certificates, keys, logs and kubeconfigs.
	Dir string
	// URL is the API server, https://127.0.0.1:PORT.
	URL string
	// Kubeconfig is an admin (system:masters) kubeconfig file.
	Kubeconfig string
	// Config and Client act as the admin.
	Config *rest.Config
	Client kubernetes.Interface
	// CAData verifies the API server's self-signed serving certificate.
	CAData []byte
	// StartupTime is how long the last Start took, etcd spawn to /readyz ok.
	StartupTime time.Duration

	t          T
	adminToken string
	apiserver  string
	etcdPort   int
	peerPort   int
	apiPort    int

	mu      sync.Mutex
	etcd    *daemons.Process
	apiProc *daemons.Process
}

// StartKube starts etcd and kube-apiserver in a temporary directory and waits
// until the API server's /readyz is ok. Without the binaries the test is
// skipped, or fails under CI=true (see Require). Everything stops when the test ends.
func StartKube(t T) *Kube {
	t.Helper()
	apiserver := KubeBinary("kube-apiserver")
	Require(t, "kube-apiserver (scripts/build-kube.sh)", apiserver)
	Require(t, "etcd (Debian etcd-server)", etcdPath)

	dir, err := os.MkdirTemp("", "preloader-kube-")
	if err != nil {
		t.Fatal(err)
	}
	k := &Kube{Dir: dir, t: t, apiserver: apiserver}
	t.Cleanup(func() {
		k.Stop()
		if f, ok := t.(interface{ Failed() bool }); !ok || !f.Failed() || os.Getenv("PRELOADER_KEEP_KUBE") == "" {
			os.RemoveAll(dir)
		} else {
			t.Logf("kube dir kept: %s", dir)
		}
	})
	ports, err := daemons.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	k.etcdPort, k.peerPort, k.apiPort = ports[0], ports[1], ports[2]
	k.URL = fmt.Sprintf("https://127.0.0.1:%d", k.apiPort)

	if err := k.prepare(); err != nil {
		t.Fatalf("kube: %v", err)
	}
	k.Start()

	// The serving certificate exists once the API server has started.
	bundle, err := os.ReadFile(filepath.Join(dir, "certs", "apiserver.crt"))
	if err != nil {
		t.Fatalf("kube: read serving certificate: %v", err)
	}
	k.CAData = bundle
	k.Config = &rest.Config{
		Host:            k.URL,
		BearerToken:     k.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: bundle},
		QPS:             200,
		Burst:           400,
	}
	if k.Client, err = kubernetes.NewForConfig(k.Config); err != nil {
		t.Fatal(err)
	}
	k.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := k.writeKubeconfig(k.Kubeconfig, "admin", k.adminToken, ""); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver %s ready at %s in %v", KubeVersion, k.URL, k.StartupTime.Round(time.Millisecond))
	return k
}

// prepare writes the token file and service account key.
func (k *Kube) prepare() error {
	for _, d := range []string{"etcd", "certs"} {
		if err := os.MkdirAll(filepath.Join(k.Dir, d), 0o700); err != nil {
			return err
		}
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	k.adminToken = hex.EncodeToString(tok)
	// token,user,uid,"group1,group2"
	tokens := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n", k.adminToken)
	if err := os.WriteFile(filepath.Join(k.Dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(k.saKeyPath(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(k.Dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

func (k *Kube) saKeyPath() string { return filepath.Join(k.Dir, "sa.key") }

// caFile is a PEM file with the API server's serving certificate chain
// (for --root-ca-file and kubeconfigs of other components).
func (k *Kube) caFile() string { return filepath.Join(k.Dir, "certs", "apiserver.crt") }

func (k *Kube) etcdArgs() []string {
	client := fmt.Sprintf("http://127.0.0.1:%d", k.etcdPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", k.peerPort)
	return []string{
		"--name=default",
		"--data-dir=" + filepath.Join(k.Dir, "etcd"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=default=" + peer,
		"--log-level=warn",
	}
}

func (k *Kube) apiserverArgs() []string {
	return []string{
		"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", k.etcdPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// 1.37 refuses a loopback advertise address for the endpoint
		// reconciler; the tests need no kubernetes Service endpoints.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(k.apiPort),
		"--cert-dir=" + filepath.Join(k.Dir, "certs"),
		"--authorization-mode=Node,RBAC",
		"--token-auth-file=" + filepath.Join(k.Dir, "tokens.csv"),
		"--service-account-issuer=" + serviceAccountIssuer,
		"--api-audiences=" + serviceAccountIssuer,
		"--service-account-key-file=" + filepath.Join(k.Dir, "sa.pub"),
		"--service-account-signing-key-file=" + k.saKeyPath(),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		// Each test has its own server; no need for fairness queues.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1",
	}
}

// Start starts etcd and the API server (again, after Stop: same ports, same
// data) and waits for /readyz. It fails the test if they do not come up.
func (k *Kube) Start() {
	k.t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.apiProc != nil {
		return
	}
	start := time.Now()
	var err error
	if k.etcd == nil {
		k.etcd, err = daemons.StartProcess(filepath.Join(k.Dir, "etcd.log"), nil, etcdPath, k.etcdArgs()...)
		if err != nil {
			k.t.Fatalf("kube: start etcd: %v", err)
		}
		if err := waitTCP(fmt.Sprintf("127.0.0.1:%d", k.etcdPort), k.etcd, 20*time.Second); err != nil {
			k.t.Fatalf("kube: etcd: %v\n%s", err, daemons.LogTail(filepath.Join(k.Dir, "etcd.log"), 30))
		}
	}
	k.apiProc, err = daemons.StartProcess(filepath.Join(k.Dir, "kube-apiserver.log"), nil, k.apiserver, k.apiserverArgs()...)
	if err != nil {
		k.t.Fatalf("kube: start kube-apiserver: %v", err)
	}
	if err := k.waitReady(60 * time.Second); err != nil {
		k.t.Fatalf("kube: kube-apiserver not ready: %v\n--- kube-apiserver.log (tail)\n%s\n--- etcd.log (tail)\n%s",
			err, daemons.LogTail(filepath.Join(k.Dir, "kube-apiserver.log"), 40), daemons.LogTail(filepath.Join(k.Dir, "etcd.log"), 10))
	}
	k.StartupTime = time.Since(start)
}

// Stop stops the API server and etcd (SIGTERM, then SIGKILL after 10 s).
// Clients see connection refused until Start.
func (k *Kube) Stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.apiProc != nil {
		k.apiProc.Stop(10 * time.Second)
		k.apiProc = nil
	}
	if k.etcd != nil {
		k.etcd.Stop(10 * time.Second)
		k.etcd = nil
	}
}

// StopAPIServer stops only the API server, leaving etcd running; Start
// brings it back.
func (k *Kube) StopAPIServer() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.apiProc != nil {
		k.apiProc.Stop(10 * time.Second)
		k.apiProc = nil
	}
}

func (k *Kube) waitReady(timeout time.Duration) error {
	bundle, err := waitFile(filepath.Join(k.Dir, "certs", "apiserver.crt"), k.apiProc, timeout)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if err := k.apiProc.ExitError(); err != nil {
			return fmt.Errorf("kube-apiserver exited: %v", err)
		}
		req, _ := http.NewRequest("GET", k.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+k.adminToken)
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("/readyz not ok after %v: %s", timeout, last)
}

// KubeconfigFor mints a token for the ServiceAccount (creating the
// ServiceAccount if the namespace has none of that name) with TokenRequest,
// and writes a kubeconfig that acts as it, so tests can prove RBAC. The
// token is bound to no object: it carries no node claim, as a token made
// by hand (kubectl create token) does not.
func (k *Kube) KubeconfigFor(t T, namespace, serviceAccount string) string {
	t.Helper()
	return k.kubeconfigFor(t, namespace, serviceAccount, "")
}

// KubeconfigForPodOn is KubeconfigFor with the token a pod of the
// ServiceAccount scheduled to node would get: bound to such a pod (created
// here, named for the node; nothing runs it), so that it carries the
// node's name in the user extra authentication.kubernetes.io/node-name.
// The Node must exist first, or the token carries no node claim.
func (k *Kube) KubeconfigForPodOn(t T, namespace, serviceAccount, node string) string {
	t.Helper()
	return k.kubeconfigFor(t, namespace, serviceAccount, node)
}

func (k *Kube) kubeconfigFor(t T, namespace, serviceAccount, node string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: serviceAccount, Namespace: namespace}}
	if _, err := k.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kube: create ServiceAccount %s/%s: %v", namespace, serviceAccount, err)
	}
	expiry := int64(3600)
	spec := authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}
	name := fmt.Sprintf("sa-%s-%s", namespace, serviceAccount)
	if node != "" {
		pod := k.podOn(t, ctx, namespace, serviceAccount, node)
		spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		name += "-" + node
	}
	tr, err := k.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kube: TokenRequest for %s/%s: %v", namespace, serviceAccount, err)
	}
	path := filepath.Join(k.Dir, name+".kubeconfig")
	user := "system:serviceaccount:" + namespace + ":" + serviceAccount
	if err := k.writeKubeconfig(path, user, tr.Status.Token, namespace); err != nil {
		t.Fatal(err)
	}
	return path
}

// podOn returns the ServiceAccount's pod on node, creating it: what a
// DaemonSet's pod would be to the API server, never run.
func (k *Kube) podOn(t T, ctx context.Context, namespace, serviceAccount, node string) *corev1.Pod {
	t.Helper()
	pods := k.Client.CoreV1().Pods(namespace)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: serviceAccount + "-" + node, Namespace: namespace},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: serviceAccount,
			Containers:         []corev1.Container{{Name: "token-holder", Image: "registry.invalid/token-holder:1"}},
		},
	}
	got, err := pods.Create(ctx, pod, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		got, err = pods.Get(ctx, pod.Name, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatalf("kube: pod for a token of %s/%s on node %s: %v", namespace, serviceAccount, node, err)
	}
	return got
}

// ConfigFor is KubeconfigFor as a rest.Config.
func (k *Kube) ConfigFor(t T, namespace, serviceAccount string) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", k.KubeconfigFor(t, namespace, serviceAccount))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func (k *Kube) writeKubeconfig(path, user, token, namespace string) error {
	cfg := clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{
			"test": {Server: k.URL, CertificateAuthorityData: k.CAData},
		},
		AuthInfos: map[string]*clientcmdapi.AuthInfo{user: {Token: token}},
		Contexts: map[string]*clientcmdapi.Context{
			"test": {Cluster: "test", AuthInfo: user, Namespace: namespace},
		},
		CurrentContext: "test",
	}
	return clientcmd.WriteToFile(cfg, path)
}

// Kubectl runs kubectl (from PATH, else the one scripts/build-kube.sh
// builds) as the admin and returns its combined output; it fails the test if
// kubectl fails. Without kubectl the test is skipped, or fails when Strict.
func (k *Kube) Kubectl(t T, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("kubectl")
	if err != nil {
		path = KubeBinary("kubectl")
		Require(t, "kubectl (scripts/build-kube.sh)", path)
	}
	out, err := exec.Command(path, append([]string{"--kubeconfig", k.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func waitTCP(addr string, p *daemons.Process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := p.ExitError(); err != nil {
			return fmt.Errorf("exited: %v", err)
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not listening after %v", addr, timeout)
}

func waitFile(path string, p *daemons.Process, timeout time.Duration) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte("END CERTIFICATE")) {
			return b, nil
		}
		if err := p.ExitError(); err != nil {
			return nil, fmt.Errorf("kube-apiserver exited: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, fmt.Errorf("%s not written after %v", path, timeout)
}

// Requests is how many requests of verb (as the API server counts them:
// PATCH, UPDATE, …) on resource and subresource ("" for none) the API
// server has answered with a 2xx since it started, from its own
// apiserver_request_total.
func (k *Kube) Requests(t T, verb, resource, subresource string) float64 {
	t.Helper()
	body, err := k.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("kube-apiserver /metrics: %v", err)
	}
	want := []string{`verb="` + verb + `"`, `resource="` + resource + `"`, `subresource="` + subresource + `"`}
	var n float64
next:
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `code="2`) {
			continue
		}
		labels, value, ok := strings.Cut(line[len("apiserver_request_total{"):], "} ")
		if !ok {
			continue
		}
		for _, w := range want {
			if !strings.Contains(","+labels+",", ","+w+",") {
				continue next
			}
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			t.Fatalf("kube-apiserver /metrics: %q: %v", line, err)
		}
		n += v
	}
	return n
}
