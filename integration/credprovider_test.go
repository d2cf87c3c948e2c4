package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "registry-login"), "github.com/kube-preloader/kube-preloader/credprovider/testdata/plugin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build test plugin: %v\n%s", err, out)
	}
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
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "sa-required"), "github.com/kube-preloader/kube-preloader/credprovider/testdata/plugin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build test plugin: %v\n%s", err, out)
	}
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
