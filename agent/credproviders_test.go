package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/credprovider"
	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// buildTestPlugin builds credprovider's test plugin, static as plugins
// in the agent's image must be, under each of names in a new bin dir.
func buildTestPlugin(t *testing.T, names ...string) string {
	t.Helper()
	bin := t.TempDir()
	first := filepath.Join(bin, names[0])
	cmd := exec.Command("go", "build", "-o", first, "github.com/kube-preloader/kube-preloader/credprovider/testdata/plugin")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build test plugin: %v\n%s", err, out)
	}
	for _, n := range names[1:] {
		if err := os.Symlink(first, filepath.Join(bin, n)); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

func env(kv ...string) []credprovider.EnvVar {
	var out []credprovider.EnvVar
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, credprovider.EnvVar{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

// Plugin credentials come after the pull Secrets', as in the kubelet; a
// provider that fails fails its images with reason credentials, without
// a pull, and nothing it printed reaches status, Events or logs.
func TestCredentialProviders(t *testing.T) {
	const (
		password  = "plugin-pw-never-shown"
		ecrImage  = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1.4"
		ecrImage2 = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/tool:2"
		brokenImg = "broken.example/team/app:1"
	)
	bin := buildTestPlugin(t, "ecr-credential-provider", "broken")
	runs := t.TempDir()
	plugins := credprovider.New(&credprovider.Config{Providers: []credprovider.Provider{
		{Name: "ecr-credential-provider", MatchImages: []string{"*.dkr.ecr.*.amazonaws.com"}, APIVersion: "credentialprovider.kubelet.k8s.io/v1",
			Env: env("PLUGIN_USER", "AWS", "PLUGIN_PASS", password, "PLUGIN_RUNS", runs, "PLUGIN_DURATION", "6h")},
		{Name: "broken", MatchImages: []string{"broken.example"}, APIVersion: "credentialprovider.kubelet.k8s.io/v1",
			Env: env("PLUGIN_MODE", "crash", "PLUGIN_PASS", password)},
	}}, bin, credprovider.Options{})

	pulls := &pullAuths{seen: map[string][]string{}}
	setup := pulls.serve
	data := testConfig("  - image: " + ecrImage + "\n  - image: " + ecrImage2 + "\n  - image: " + brokenImg + "\n")
	e := startWith(t, setup, func(o *Options) { o.CredentialProviders = plugins }, newNode(nil), newConfigMap(data))

	st := e.waitStatus("two pulled, one failed", func(st nodestatus.Status) bool { return st.Present == 2 && len(st.Failed) == 1 })
	if f := st.Failed[0]; f.Image != brokenImg || !strings.HasPrefix(f.Reason, "credential provider broken: failed: exit status 3 (") {
		t.Errorf("failed = %+v, want %s failing for its provider", st.Failed, brokenImg)
	}
	pulls.mu.Lock()
	for _, img := range []string{ecrImage, ecrImage2} {
		if got := strings.Join(pulls.seen[img], ","); got != "AWS:"+password {
			t.Errorf("pulls of %s with %q, want one with the plugin's credentials", img, got)
		}
	}
	if got := pulls.seen[brokenImg]; len(got) != 0 {
		t.Errorf("%s pulled (%v) though its provider failed", brokenImg, got)
	}
	pulls.mu.Unlock()
	if entries, _ := os.ReadDir(runs); len(entries) != 1 {
		t.Errorf("ecr plugin ran %d times for two images of one registry, want 1", len(entries))
	}
	e.waitEvent("default", "Node", ReasonPreloadFailed, brokenImg+": credential provider broken")
	for _, ev := range e.events("default") {
		if strings.Contains(ev.Message, password) {
			t.Errorf("Event shows the plugin's secret: %s", ev.Message)
		}
	}
	if strings.Contains(e.logs.String(), password) {
		t.Error("logs show the plugin's secret")
	}
}

// tokenClient answers TokenRequests as an API server would, recording them.
type tokenClient struct {
	kubeapi.Interface
	token string

	mu       sync.Mutex
	requests []string // namespace/name audience uid
}

// IsWatchListSemanticsUnSupported is the fake clientset's, which the
// embedded Interface hides.
func (c *tokenClient) IsWatchListSemanticsUnSupported() bool {
	w, ok := c.Interface.(interface{ IsWatchListSemanticsUnSupported() bool })
	return ok && w.IsWatchListSemanticsUnSupported()
}

func (c *tokenClient) CreateToken(_ context.Context, ns, name string, tr *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requests = append(c.requests, fmt.Sprintf("%s/%s %s %s", ns, name, strings.Join(tr.Spec.Audiences, ","), tr.UID))
	out := tr.DeepCopy()
	out.Status = authenticationv1.TokenRequestStatus{Token: c.token, ExpirationTimestamp: metav1.NewTime(time.Now().Add(10 * time.Minute))}
	return out, nil
}

// A provider with tokenAttributes gets a token of the ServiceAccount the
// image names, for its audience, and the credentials it makes of it reach
// the pull; an image that names none fails with reason credentials,
// unpulled. The token is in no status, Event or log.
func TestCredentialProviderToken(t *testing.T) {
	const (
		token     = "eyJ-sa-token-never-shown"
		withSA    = "tok.example/team/app:1"
		withoutSA = "tok.example/team/other:1"
	)
	bin := buildTestPlugin(t, "token-provider")
	plugins := credprovider.New(&credprovider.Config{Providers: []credprovider.Provider{
		{Name: "token-provider", MatchImages: []string{"tok.example"}, APIVersion: "credentialprovider.kubelet.k8s.io/v1",
			// The plugin answers the token as the password: allowed with cacheType Token.
			Env:             env("PLUGIN_USER", "sa", "PLUGIN_MODE", "echo"),
			TokenAttributes: &credprovider.TokenAttributes{ServiceAccountTokenAudience: "tok.example", RequireServiceAccount: true, CacheType: "Token"}},
	}}, bin, credprovider.Options{})
	tc := &tokenClient{token: token}

	pulls := &pullAuths{seen: map[string][]string{}}
	setup := pulls.serve
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "app", UID: "uid-app"}}
	data := testConfig("  - image: " + withSA + "\n    serviceAccount: app\n  - image: " + withoutSA + "\n")
	e := startWith(t, setup, func(o *Options) {
		o.CredentialProviders = plugins
		tc.Interface = o.Client
		o.Client = tc
	}, newNode(nil), newConfigMap(data), sa)

	st := e.waitStatus("one pulled, one failed", func(st nodestatus.Status) bool { return st.Present == 1 && len(st.Failed) == 1 })
	if f := st.Failed[0]; f.Image != withoutSA || f.Reason != `credential provider token-provider: no service account token: the provider requires a service account token for audience "tok.example", and the image names no serviceAccount` {
		t.Errorf("failed = %+v, want %s failing for want of a ServiceAccount", st.Failed, withoutSA)
	}
	pulls.mu.Lock()
	if got := strings.Join(pulls.seen[withSA], ","); got != "sa:"+token {
		t.Errorf("pulls of %s: %d, want one with the credentials the plugin made of the token", withSA, len(pulls.seen[withSA]))
	}
	if got := pulls.seen[withoutSA]; len(got) != 0 {
		t.Errorf("%s pulled (%d times) though its provider had no token", withoutSA, len(got))
	}
	pulls.mu.Unlock()
	tc.mu.Lock()
	if len(tc.requests) == 0 || tc.requests[0] != testNS+"/app tok.example uid-app" {
		t.Errorf("TokenRequests %q, want one for %s/app, audience tok.example, its UID", tc.requests, testNS)
	}
	tc.mu.Unlock()
	e.waitEvent("default", "Node", ReasonPreloadFailed, withoutSA+": credential provider token-provider")
	for _, ev := range e.events("default") {
		if strings.Contains(ev.Message, token) {
			t.Errorf("Event shows the token: %s", ev.Message)
		}
	}
	if strings.Contains(fmt.Sprint(st), token) {
		t.Error("status shows the token")
	}
	if strings.Contains(e.logs.String(), token) {
		t.Error("logs show the token")
	}
}

// pullAuths is a runtime that records the credentials of each pull
// (user:password, or anonymous) and refuses pulls without any.
type pullAuths struct {
	mu   sync.Mutex
	seen map[string][]string
}

func (p *pullAuths) serve(s *critest.Server) {
	s.Pull = func(_ context.Context, ref string, auth *runtimeapi.AuthConfig) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if auth == nil {
			p.seen[ref] = append(p.seen[ref], "anonymous")
			return critest.Errorf("failed to authorize: 401 Unauthorized")
		}
		p.seen[ref] = append(p.seen[ref], auth.Username+":"+auth.Password)
		return nil
	}
}
