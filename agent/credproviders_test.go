package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/credprovider"
	"github.com/kube-preloader/kube-preloader/cri/critest"
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

	var (
		mu   sync.Mutex
		seen = map[string][]string{}
	)
	setup := func(s *critest.Server) {
		s.Pull = func(_ context.Context, ref string, auth *runtimeapi.AuthConfig) error {
			mu.Lock()
			defer mu.Unlock()
			if auth == nil {
				seen[ref] = append(seen[ref], "anonymous")
				return critest.Errorf("failed to authorize: 401 Unauthorized")
			}
			seen[ref] = append(seen[ref], auth.Username+":"+auth.Password)
			return nil
		}
	}
	data := testConfig("  - image: " + ecrImage + "\n  - image: " + ecrImage2 + "\n  - image: " + brokenImg + "\n")
	e := startWith(t, setup, func(o *Options) { o.CredentialProviders = plugins }, newNode(nil), newConfigMap(data))

	st := e.waitStatus("two pulled, one failed", func(st nodestatus.Status) bool { return st.Present == 2 && len(st.Failed) == 1 })
	if f := st.Failed[0]; f.Image != brokenImg || !strings.HasPrefix(f.Reason, "credential provider broken: failed: exit status 3 (") {
		t.Errorf("failed = %+v, want %s failing for its provider", st.Failed, brokenImg)
	}
	mu.Lock()
	for _, img := range []string{ecrImage, ecrImage2} {
		if got := strings.Join(seen[img], ","); got != "AWS:"+password {
			t.Errorf("pulls of %s with %q, want one with the plugin's credentials", img, got)
		}
	}
	if got := seen[brokenImg]; len(got) != 0 {
		t.Errorf("%s pulled (%v) though its provider failed", brokenImg, got)
	}
	mu.Unlock()
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
