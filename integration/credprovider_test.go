package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/credprovider"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// TestOnceCredentialProvider: `once` with the kubelet's two flags gets a
// private image's credentials from a plugin, static as the agent's image
// needs, run once per cache key; a plugin that fails fails its images with
// reason credentials and shows nothing it printed.
func TestOnceCredentialProvider(t *testing.T) {
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	open := harness.StartRegistry(t, harness.RegistryOptions{})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	priv := harness.PushTestImages(t, private, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.4", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/tool", Tag: "2.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
	})
	pub := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "other/app", Tag: "1", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})

	dir, bin, runs := t.TempDir(), t.TempDir(), t.TempDir()
	buildTestPlugin(t, filepath.Join(bin, "registry-login"))
	if err := os.Symlink(filepath.Join(bin, "registry-login"), filepath.Join(bin, "crashing")); err != nil {
		t.Fatal(err)
	}
	// "missing" has no binary: unlike the kubelet, which would not start,
	// that fails only the images it matches, none here.
	providers := writeFile(t, dir, "providers.yaml", fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: registry-login
    matchImages: [%q]
    defaultCacheDuration: 1h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
      - {name: PLUGIN_USER, value: %s}
      - {name: PLUGIN_PASS, value: %s}
      - {name: PLUGIN_RUNS, value: %s}
  - name: crashing
    matchImages: [%q]
    defaultCacheDuration: 1h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
      - {name: PLUGIN_MODE, value: crash}
      - {name: PLUGIN_PASS, value: %s}
  - name: missing
    matchImages: [%q]
    defaultCacheDuration: 1h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
`, private.Host, testUser, testPassword, runs, open.Host+"/other", testPassword, "missing.example.com"))

	env := []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}
	cfg := writeFile(t, dir, "images.yaml", imagesYAML("none", priv[0].Ref, priv[1].Ref, pub.Ref))
	r := preloader(t, 2*time.Minute, env, "once", "--config", cfg, "-o", "json",
		"--docker-config", writeFile(t, dir, "empty.json", `{"auths":{}}`),
		"--image-credential-provider-config", providers, "--image-credential-provider-bin-dir", bin)
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 1 {
		t.Fatalf("want exit 1 (one image failed):\n%s", r)
	}
	out := parseOnce(t, r)
	for _, img := range priv {
		if st, reason := out.status(img.Ref); st != "pulled" {
			t.Errorf("%s: %s %q, want pulled with the plugin's credentials\n%s", img.Ref, st, reason, r)
		}
	}
	assertPresent(t, ctrd.Endpoint, priv[0].Ref, priv[1].Ref)
	entries, err := os.ReadDir(runs)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("plugin ran %d times for 2 images of one registry, want 1 (cacheKeyType Registry)", len(entries))
	}
	st, reason := out.status(pub.Ref)
	if want := "credential provider crashing: failed: exit status 3 ("; st != "failed" || !strings.HasPrefix(reason, want) {
		t.Errorf("%s: %s %q, want failed %q…\n%s", pub.Ref, st, reason, want, r)
	}
}

// TestOnceCredentialProviderToken: `once` has no ServiceAccount to
// request a token with. A provider with tokenAttributes that requires one
// fails its image with reason credentials, unrun; one that does not is
// run without a token, as the kubelet runs it for a pod without a
// ServiceAccount, and its credentials pull the image.
func TestOnceCredentialProviderToken(t *testing.T) {
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	open := harness.StartRegistry(t, harness.RegistryOptions{})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	imgs := harness.PushTestImages(t, private, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1", OwnLayers: 1, LayerSize: 16 << 10},
		{Repo: "team/tool", Tag: "1", OwnLayers: 1, LayerSize: 16 << 10},
	})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})

	dir, bin, runs := t.TempDir(), t.TempDir(), t.TempDir()
	buildTestPlugin(t, filepath.Join(bin, "sa-required"))
	if err := os.Symlink(filepath.Join(bin, "sa-required"), filepath.Join(bin, "sa-optional")); err != nil {
		t.Fatal(err)
	}
	providers := writeFile(t, dir, "providers.yaml", fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: sa-required
    matchImages: [%q]
    defaultCacheDuration: 1h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    tokenAttributes:
      serviceAccountTokenAudience: registry.example
      requireServiceAccount: true
      cacheType: ServiceAccount
    env:
      - {name: PLUGIN_RUNS, value: %s}
  - name: sa-optional
    matchImages: [%q]
    defaultCacheDuration: 1h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    tokenAttributes:
      serviceAccountTokenAudience: registry.example
      requireServiceAccount: false
      cacheType: ServiceAccount
    env:
      - {name: PLUGIN_USER, value: %s}
      - {name: PLUGIN_PASS, value: %s}
      - {name: PLUGIN_RUNS, value: %s}
`, private.Host+"/team/app", runs, private.Host+"/team/tool", testUser, testPassword, runs))

	env := []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}
	cfg := writeFile(t, dir, "images.yaml", imagesYAML("none", imgs[0].Ref, imgs[1].Ref))
	r := preloader(t, 2*time.Minute, env, "once", "--config", cfg, "-o", "json",
		"--image-credential-provider-config", providers, "--image-credential-provider-bin-dir", bin)
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 1 {
		t.Fatalf("want exit 1 (one image failed):\n%s", r)
	}
	out := parseOnce(t, r)
	st, reason := out.status(imgs[0].Ref)
	if want := `credential provider sa-required: no service account token: the provider wants a token for audience "registry.example", and preloader once has no service account`; st != "failed" || !strings.HasPrefix(reason, want) {
		t.Errorf("%s: %s %q, want failed %q…\n%s", imgs[0].Ref, st, reason, want, r)
	}
	if st, reason := out.status(imgs[1].Ref); st != "pulled" {
		t.Errorf("%s: %s %q, want pulled with the credentials of the plugin run without a token\n%s", imgs[1].Ref, st, reason, r)
	}
	assertPresent(t, ctrd.Endpoint, imgs[1].Ref)
	entries, err := os.ReadDir(runs)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || !strings.HasPrefix(entries[0].Name(), strings.ReplaceAll(private.Host+"/team/tool", "/", "_")) {
		t.Fatalf("plugin runs %v, want one, for team/tool", entries)
	}
	req, err := os.ReadFile(filepath.Join(runs, entries[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(req), "serviceAccount") {
		t.Errorf("request %s has service account fields, want none", req)
	}
}

// TestOnceCredentialProviderFaults: one `once` run whose providers each
// fail their own way, as real processes from the bin dir, next to one that
// works. Each failed image says which provider failed and how, with
// reason credentials, and is not pulled although its registry would serve
// it anonymously (a pull with fewer credentials than the kubelet's is not
// what the kubelet gets when its plugin works); the good provider's image
// is pulled while the hanging plugin still runs; nothing shows what a
// plugin printed. The hang costs the kubelet's fixed minute, once: the
// providers run concurrently.
func TestOnceCredentialProviderFaults(t *testing.T) {
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	open := harness.StartRegistry(t, harness.RegistryOptions{TLS: true})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "team/app", Tag: "1", OwnLayers: 1, LayerSize: 4 << 10}})
	good := harness.PushTestImages(t, private, []harness.ImageSpec{{Repo: "team/app", Tag: "1", OwnLayers: 1, LayerSize: 16 << 10}})[0]
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})
	open.TrustIn(ctrd)

	dir, bin, runs := t.TempDir(), t.TempDir(), t.TempDir()
	plugin := filepath.Join(dir, "plugin")
	buildTestPlugin(t, plugin)
	fifo := filepath.Join(dir, "never-written")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	faults := []struct {
		name, mode string
		install    func(path string) error
		want       string // the reason's beginning
	}{
		{"missing", "", func(string) error { return nil },
			"credential provider missing: missing: no plugin binary " + filepath.Join(bin, "missing")},
		{"noexec", "", func(p string) error { return os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644) },
			"credential provider noexec: not executable: " + filepath.Join(bin, "noexec") + " is not an executable file (mode -rw-r--r--)"},
		{"crash", "crash", nil, "credential provider crash: failed: exit status 3 ("},
		{"garbage", "garbage", nil, "credential provider garbage: bad response: stdout ("},
		{"version", "version", nil, `credential provider version: wrong apiVersion: answered "credentialprovider.kubelet.k8s.io/v1alpha1", want credentialprovider.kubelet.k8s.io/v1`},
		{"hang", "hang", nil, "credential provider hang: timed out: no answer after 1m0s ("},
	}
	providers := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: good
    matchImages: [%q]
    defaultCacheDuration: 1h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
      - {name: PLUGIN_USER, value: %s}
      - {name: PLUGIN_PASS, value: %s}
`, private.Host, testUser, testPassword)
	if err := os.Symlink(plugin, filepath.Join(bin, "good")); err != nil {
		t.Fatal(err)
	}
	refs := []string{good.Ref}
	for _, f := range faults {
		install := f.install
		if install == nil {
			install = func(p string) error { return os.Symlink(plugin, p) }
		}
		if err := install(filepath.Join(bin, f.name)); err != nil {
			t.Fatal(err)
		}
		// Each provider has its own registry name, which the open
		// registry serves: only the failed provider keeps the image out.
		host := f.name + ".faults.example"
		open.MirrorFor(ctrd, host)
		refs = append(refs, host+"/team/app:1")
		// Every failing mode prints the password to stderr, garbage to
		// stdout too.
		providers += fmt.Sprintf(`  - name: %s
    matchImages: [%q]
    defaultCacheDuration: 1h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
      - {name: PLUGIN_MODE, value: %q}
      - {name: PLUGIN_USER, value: %s}
      - {name: PLUGIN_PASS, value: %s}
      - {name: PLUGIN_FIFO, value: %s}
      - {name: PLUGIN_RUNS, value: %s}
`, f.name, host, f.mode, testUser, testPassword, fifo, runs)
	}
	providersFile := writeFile(t, dir, "providers.yaml", providers)

	// Watch, while `once` runs, for the good image and the hanging run.
	rt, err := cri.Connect(context.Background(), ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	var goodAt, hangAt time.Time
	stop, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		for {
			if goodAt.IsZero() {
				if img, err := rt.ImageStatus(context.Background(), good.Ref); err == nil && img != nil {
					goodAt = time.Now()
				}
			}
			if hangAt.IsZero() {
				if m, _ := filepath.Glob(filepath.Join(runs, "hang.faults.example_*")); len(m) > 0 {
					hangAt = time.Now()
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	env := []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}
	cfg := writeFile(t, dir, "images.yaml", imagesYAML("none", refs...))
	start := time.Now()
	r := preloader(t, 3*time.Minute, env, "once", "--config", cfg, "-o", "json",
		"--image-credential-provider-config", providersFile, "--image-credential-provider-bin-dir", bin)
	took := time.Since(start)
	close(stop)
	<-watched
	t.Logf("once with a hanging plugin: %v", took.Round(time.Millisecond))
	for _, line := range strings.Split(r.stderr, "\n") {
		if strings.Contains(line, `msg="pull path"`) {
			t.Log(line) // auto decides by timings: either path must hold
		}
	}

	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 1 {
		t.Fatalf("want exit 1 (images failed):\n%s", r)
	}
	out := parseOnce(t, r)
	if st, reason := out.status(good.Ref); st != "pulled" {
		t.Errorf("%s: %s %q, want pulled with the good provider's credentials\n%s", good.Ref, st, reason, r)
	}
	assertPresent(t, ctrd.Endpoint, good.Ref)
	for i, f := range faults {
		ref := refs[i+1]
		if st, reason := out.status(ref); st != "failed" || !strings.HasPrefix(reason, f.want) {
			t.Errorf("%s: %s %q, want failed %q…\n%s", f.name, st, reason, f.want, r)
		}
		if id := criImage(t, rt, ref); id != "" {
			t.Errorf("%s: %s present although its provider failed", f.name, ref)
		}
	}
	switch {
	case hangAt.IsZero():
		t.Errorf("the hanging plugin never ran")
	case goodAt.IsZero() || !goodAt.Before(hangAt.Add(credprovider.DefaultTimeout)):
		t.Errorf("%s was not pulled while the hanging plugin ran (seen at %v, the hang began %v after the start)",
			good.Ref, goodAt.Sub(start), hangAt.Sub(start))
	}
	if took < credprovider.DefaultTimeout || took > credprovider.DefaultTimeout+45*time.Second {
		t.Errorf("once took %v; want the kubelet's fixed minute for the hanging plugin, paid once", took)
	}
}

// buildTestPlugin builds credprovider's test plugin at path, static as
// the agent's image needs.
func buildTestPlugin(t *testing.T, path string) {
	t.Helper()
	build := exec.Command("go", "build", "-o", path, "github.com/kube-preloader/kube-preloader/credprovider/testdata/plugin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build test plugin: %v\n%s", err, out)
	}
}
