package e2e

// Scenario h: an ECR-named private image with no Secret anywhere, through
// the real ecr-credential-provider that the chart hands the agent (the
// k3s paths, credentialProviders.enabled) and the node's kubelet runs
// too. The plugin asks a local ECR stub; containerd's hosts.toml sends the
// ECR name to a TLS registry that wants the stub's token, through a front
// that notes which credentials each request carried (a hash, never the
// token).

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

const (
	// k3sProviderConfig and k3sProviderBinDir are where k3s's agent finds
	// credential providers, and so what the chart mounts for
	// distribution k3s with credentialProviders.enabled.
	k3sProviderConfig = "/var/lib/rancher/credentialprovider/config.yaml"
	k3sProviderBinDir = "/var/lib/rancher/credentialprovider/bin"
	// ecrUser is the user name ECR tokens go with.
	ecrUser = "AWS"
)

// ecrSetup is the ECR side of the full run: the registry behind the ECR
// name, its recording front, the stub the plugin asks, and two images,
// one for the agent to preload and one for the kubelet to pull itself.
type ecrSetup struct {
	reg   *harness.Registry
	front *harness.Proxy
	stub  *harness.ECRStub
	seen  *credentialLog
	// preloaded and kubeletPulled are the pushed images; their ECR-named
	// references are ecrRef(...).
	preloaded, kubeletPulled harness.TestImage
}

func startECR(t *testing.T, spec func(repo, tag string) harness.ImageSpec) *ecrSetup {
	t.Helper()
	harness.Require(t, "ecr-credential-provider "+harness.ECRCredentialProviderVersion+" (scripts/install-deps.sh)", harness.ECRCredentialProviderBinary())
	start := time.Now()
	e := &ecrSetup{seen: &credentialLog{}}
	e.reg = harness.StartRegistry(t, harness.RegistryOptions{Username: ecrUser, Password: harness.ECRPassword, TLS: true})
	e.front = harness.StartTLSProxy(t, e.reg, harness.ProxyOptions{Served: e.seen.note})
	e.stub = harness.StartECRStub(t)
	imgs := harness.PushTestImages(t, e.reg, []harness.ImageSpec{spec("team/app", "1.4"), spec("team/app", "1.5")})
	e.preloaded, e.kubeletPulled = imgs[0], imgs[1]
	t.Logf("ECR registry, its front and two images, and the ECR stub: %v", time.Since(start).Round(time.Millisecond))
	return e
}

// ecrRef is img under the ECR registry's name.
func ecrRef(img harness.TestImage) string {
	return harness.ECRAllowedRegistry + "/" + img.Spec.Repo + ":" + img.Spec.Tag
}

// install puts the provider config and the real plugin at k3s's paths on
// node n, and the ECR name's hosts.toml mirror (the front) in its
// containerd, before the kubelet starts: the kubelet refuses to start
// when a configured plugin is missing. The plugin is copied, not linked:
// the agent's container sees only the bin dir.
func (e *ecrSetup) install(t *testing.T, n *harness.Node) {
	t.Helper()
	ctrd := n.Containerd
	bin := ctrd.Path(k3sProviderBinDir)
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	plugin, err := os.ReadFile(harness.ECRCredentialProviderBinary())
	if err != nil {
		t.Fatal(err)
	}
	writeMode(t, filepath.Join(bin, "ecr-credential-provider"), string(plugin), 0o755)
	write(t, ctrd.Path(k3sProviderConfig), e.stub.ProviderConfig(t.TempDir()))
	// The registry's CA next to hosts.toml, as an admin puts it: the
	// agent's container, which pulls through containerd's client with
	// pullVia auto, sees the hosts directory and not the test's.
	hosts := filepath.Join(ctrd.ConfigPath, harness.ECRAllowedRegistry)
	ca, err := os.ReadFile(e.reg.CACertPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(ctrd.Path(hosts), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, ctrd.Path(filepath.Join(hosts, "ca.crt")), string(ca))
	if err := ctrd.WriteHosts(harness.ECRAllowedRegistry, "https://127.0.0.1:1", e.front.URL, filepath.Join(hosts, "ca.crt")); err != nil {
		t.Fatal(err)
	}
}

// secretNeedles are the forms of the ECR token scenario f looks for.
func (e *ecrSetup) secretNeedles() map[string]string {
	return map[string]string{
		"the ECR token":                   harness.ECRPassword,
		"the ECR token in base64":         base64.StdEncoding.EncodeToString([]byte(harness.ECRPassword)),
		"the ECR auth string":             base64.StdEncoding.EncodeToString([]byte(ecrUser + ":" + harness.ECRPassword)),
		"the ECR user:token in the clear": ecrUser + ":" + harness.ECRPassword,
	}
}

// credentialLog is what the front saw: per request path, the user and a
// hash of the password each answered request carried.
type credentialLog struct {
	mu   sync.Mutex
	seen map[string][]seenCredential
}

type seenCredential struct {
	user string
	// hash is the password's SHA-256, hex: compared, never the password.
	hash string
}

func (l *credentialLog) note(r *http.Request, status int, _ int64) {
	if status >= 300 {
		return
	}
	c := seenCredential{user: "(anonymous)"}
	if user, pw, ok := r.BasicAuth(); ok {
		c = seenCredential{user: user, hash: credentialHash(pw)}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[string][]seenCredential{}
	}
	if !slices.Contains(l.seen[r.URL.Path], c) {
		l.seen[r.URL.Path] = append(l.seen[r.URL.Path], c)
	}
}

func credentialHash(pw string) string {
	h := sha256.Sum256([]byte(pw))
	return hex.EncodeToString(h[:])
}

// forManifest is the credentials of the answered requests for img's
// manifest, by tag or by digest: the requests of a pull of it.
func (l *credentialLog) forManifest(img harness.TestImage) []seenCredential {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []seenCredential
	for _, ref := range []string{img.Spec.Tag, img.Digest} {
		for _, c := range l.seen["/v2/"+img.Spec.Repo+"/manifests/"+ref] {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	return out
}

func (c seenCredential) String() string {
	if c.hash == "" {
		return c.user
	}
	return fmt.Sprintf("%s, password sha256 %s…", c.user, c.hash[:8])
}

// scenarioCredentialProvider: the agent preloads the ECR-named image with
// the plugin's credentials (h1); with its registry then unreachable, a
// Never pod without imagePullSecrets runs it under the kubelet's default
// KEP-2535 policy. Then the kubelet, given the same provider config and
// bin dir, pulls another tag itself (h2): the registry must have seen the
// same credentials from both.
func (r *run) scenarioCredentialProvider(t *testing.T) {
	t.Helper()
	n, e := r.node, r.ecr
	ctx := context.Background()
	ref := ecrRef(e.preloaded)
	r.assertNoSecretFor(t, harness.ECRAllowedRegistry)

	// Before: the kubelet's verdict on the absent image.
	createPod(t, n, hostPod(n, "h-before", ref, corev1.PullNever))
	p := n.WaitContainerWaiting(t, "default", "h-before", "ErrImageNeverPull", time.Minute)
	before := fmt.Sprintf("%s, ErrImageNeverPull", p.Status.Phase)
	_ = n.Client.CoreV1().Pods("default").Delete(ctx, "h-before", metav1.DeleteOptions{})

	callsBefore := e.stub.Calls("us-east-1")
	r.entries = append(r.entries, cfgEntry{Image: ref})
	edited := time.Now()
	r.writeConfig(t)
	for !r.imagePresent(t, ref) {
		if time.Since(edited) > 2*time.Minute {
			t.Fatalf("%s not present 2m after the ConfigMap edit (agent's plugin calls: %d)", ref, e.stub.Calls("us-east-1")-callsBefore)
		}
		time.Sleep(100 * time.Millisecond)
	}
	present := time.Since(edited)
	agentCalls := e.stub.Calls("us-east-1") - callsBefore
	if agentCalls < 1 {
		t.Fatalf("%s present, but the plugin never asked ECR for a token", ref)
	}
	agentCreds := e.seen.forManifest(e.preloaded)

	e.reg.Stop()
	r.assertUnreachable(t)
	created := time.Now()
	pod := hostPod(n, "h-plugin", ref, corev1.PullNever)
	createPod(t, n, pod)
	p = n.WaitPodRunning(t, "default", "h-plugin", time.Minute)
	toRunning := time.Since(created)
	sa, err := n.Client.CoreV1().ServiceAccounts("default").Get(ctx, p.Spec.ServiceAccountName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Spec.ImagePullSecrets) != 0 || len(sa.ImagePullSecrets) != 0 || p.Spec.Containers[0].ImagePullPolicy != corev1.PullNever {
		t.Errorf("h-plugin: imagePullSecrets %v, its ServiceAccount's %v, policy %s", p.Spec.ImagePullSecrets, sa.ImagePullSecrets, p.Spec.Containers[0].ImagePullPolicy)
	}
	node := waitNode(t, n, time.Minute, "ready under the default policy", func(node *corev1.Node) bool {
		st := nodeStatus(t, node)
		return st.Complete() && st.Policy == "NeverVerifyPreloadedImages" && st.Refused == 0 && node.Labels[nodestatus.LabelReady] == "true"
	})
	verdicts.add(verdict{
		scenario: r.row("h1 ECR image by plugin, no Secret; Never, registry down (KEP-2535 default)"),
		before:   before,
		after: fmt.Sprintf("%s, registry unreachable; agent had it %.1fs after the edit, says %s",
			p.Status.Phase, present.Seconds(), readyWord(node)),
		toRunning: toRunning,
	})
	e.reg.Start()

	// h2: the kubelet pulls another tag with its own run of the plugin.
	kref := ecrRef(e.kubeletPulled)
	callsBefore = e.stub.Calls("us-east-1")
	pulled := time.Now()
	createPod(t, n, hostPod(n, "h-kubelet", kref, corev1.PullIfNotPresent))
	n.WaitPodRunning(t, "default", "h-kubelet", 2*time.Minute)
	kubeletPull := time.Since(pulled)
	kubeletCalls := e.stub.Calls("us-east-1") - callsBefore
	kubeletCreds := e.seen.forManifest(e.kubeletPulled)
	t.Logf("h2: registry saw for the agent's pull of %s %v (%d GetAuthorizationToken), for the kubelet's pull of %s %v (%d)",
		ref, agentCreds, agentCalls, kref, kubeletCreds, kubeletCalls)
	want := seenCredential{user: ecrUser, hash: credentialHash(harness.ECRPassword)}
	if len(agentCreds) != 1 || agentCreds[0] != want {
		t.Errorf("the agent's pull of %s: registry saw %v, want only the ECR stub's token for %s", ref, agentCreds, ecrUser)
	}
	if !slices.Equal(kubeletCreds, agentCreds) {
		t.Errorf("the kubelet's pull of %s: registry saw %v, the agent's %v: want the same", kref, kubeletCreds, agentCreds)
	}
	if kubeletCalls < 1 {
		t.Errorf("the kubelet pulled %s without running the plugin (no GetAuthorizationToken call)", kref)
	}
	verdicts.add(verdict{
		scenario: r.row("h2 kubelet as oracle: pulls another ECR tag with the same plugin"),
		before:   "-",
		after: fmt.Sprintf("IfNotPresent pod Running in %.1fs; registry got the same credentials (%s) from both",
			kubeletPull.Seconds(), ecrUser),
	})
}

func readyWord(node *corev1.Node) string {
	if node.Labels[nodestatus.LabelReady] == "true" {
		return "ready"
	}
	return "not ready"
}

// assertNoSecretFor fails if a Secret in any namespace names registry or
// holds the ECR token: the agent must have had it from the plugin alone.
func (r *run) assertNoSecretFor(t *testing.T, registry string) {
	t.Helper()
	list, err := r.node.Client.CoreV1().Secrets("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		for k, v := range s.Data {
			if strings.Contains(string(v), registry) || strings.Contains(string(v), harness.ECRPassword) {
				t.Fatalf("Secret %s/%s (%s) names %s or holds its token", s.Namespace, s.Name, k, registry)
			}
		}
	}
}

// assertUnreachable proves that neither the registry nor the mirror
// containerd's hosts.toml names for the ECR host answers a pull.
func (r *run) assertUnreachable(t *testing.T) {
	t.Helper()
	e := r.ecr
	hc := &http.Client{Transport: e.reg.Transport(), Timeout: 5 * time.Second}
	if resp, err := hc.Get(e.reg.URL + "/v2/"); err == nil {
		resp.Body.Close()
		t.Fatalf("registry %s still answers after Stop: %s", e.reg.URL, resp.Status)
	}
	resp, err := hc.Get(e.front.URL + "/v2/" + e.preloaded.Spec.Repo + "/manifests/" + e.preloaded.Spec.Tag)
	if err != nil {
		t.Fatalf("the ECR mirror %s: %v", e.front.URL, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("the ECR mirror %s answers %s with the registry stopped: %s", e.front.URL, resp.Status, body)
	}
}
