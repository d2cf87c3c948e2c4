package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// The kubelet's own e2e credential provider plugin answers for these names
// with the metadata server's access token; the tests serve them from a
// local registry through containerd's hosts.toml.
const (
	garHost = "us-docker.pkg.dev"
	gcrHost = "eu.gcr.io"
)

// gcpPluginPrinted is what gcp-credential-provider prints to stderr when it
// fails (klog.Fatalf of the error): none of it may reach any output.
var gcpPluginPrinted = []string{"failed to get credentials", "metadata.google.internal", "http status code", "unexpected audience", "unexpected service account annotations"}

// gcpPlugin puts the kubelet's e2e plugin into a fresh bin dir under each
// of names, the providers' names.
func gcpPlugin(t *testing.T, names ...string) string {
	t.Helper()
	harness.Require(t, "gcp-credential-provider "+harness.KubeVersion+" (make deps)", harness.GCPCredentialProviderBinary())
	bin := t.TempDir()
	for _, n := range names {
		if err := os.Symlink(harness.GCPCredentialProviderBinary(), filepath.Join(bin, n)); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

// TestOnceGCPCredentialProvider: `once` with the kubelet's e2e plugin
// gcp-credential-provider (the GKE plugin's protocol: the metadata
// server's access token as user _token) and no Secret preloads
// Artifact-Registry-named images, with one token fetch for two images of
// a registry (the plugin answers cacheKeyType Registry). A metadata server
// that answers 500 fails the image with reason credentials and nothing the
// plugin printed; the other image goes on. The plugin resolves
// metadata.google.internal. from the preloader's own /etc/hosts, in a
// mount namespace of its own; nothing leaves 127.0.0.0/8.
func TestOnceGCPCredentialProvider(t *testing.T) {
	for _, tc := range []struct {
		name     string
		metadata int      // the metadata server's status, 0 for a token
		repos    []string // Artifact Registry images
		via      string   // pullVia, "" for the default
	}{
		{"token", 0, []string{"kp-test/team/app:1.4", "kp-test/team/tool:2.0"}, ""},
		// pullVia cri, the kubelet's path: the default (auto) asks the
		// plugins once more for each image while it chooses its path, and
		// a failed answer is not cached, so the plugin would run twice.
		{"metadata 500", http.StatusInternalServerError, []string{"kp-test/team/app:1.4"}, "cri"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := gcpPlugin(t, "gcp-credential-provider")
			private := harness.StartRegistry(t, harness.RegistryOptions{Username: harness.GCPTokenUser, Password: harness.GCPAccessToken, TLS: true})
			open := harness.StartRegistry(t, harness.RegistryOptions{})
			pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
			var specs []harness.ImageSpec
			var refs []string
			for _, r := range tc.repos {
				repo, tag, _ := strings.Cut(r, ":")
				specs = append(specs, harness.ImageSpec{Repo: repo, Tag: tag, BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10})
				refs = append(refs, garHost+"/"+r)
			}
			harness.PushTestImages(t, private, specs)
			pub := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "other/app", Tag: "1", OwnLayers: 1, LayerSize: 4 << 10}})[0]
			ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})
			private.MirrorFor(ctrd, garHost)
			stub := harness.StartGCEMetadataStub(t, tc.metadata)

			dir := t.TempDir()
			// The default-mode provider of the kubelet's own e2e config.
			providers := writeFile(t, dir, "providers.yaml", `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: gcp-credential-provider
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    matchImages: ["gcr.io", "*.gcr.io", "container.cloud.google.com", "*.pkg.dev"]
    defaultCacheDuration: 1m
`)
			env := []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}
			images := imagesYAML("none", append(refs, pub.Ref)...)
			if tc.via != "" {
				images = "pullVia: " + tc.via + "\n" + images
			}
			cfg := writeFile(t, dir, "images.yaml", images)
			name, args := harness.WithHosts(stub.Hosts(t), preloaderBin, "once", "--config", cfg, "-o", "json",
				"--image-credential-provider-config", providers, "--image-credential-provider-bin-dir", bin)
			r := runPreloader(t, 2*time.Minute, env, name, args...)
			if hosts, err := os.ReadFile("/etc/hosts"); err != nil || strings.Contains(string(hosts), stub.IP) {
				t.Errorf("the machine's /etc/hosts names the stub (%v):\n%s", err, hosts)
			}
			harness.AssertNoSecret(t, harness.GCPTokenUser, harness.GCPAccessToken, r.stdout, r.stderr)
			for _, s := range gcpPluginPrinted {
				if strings.Contains(r.stdout+r.stderr, s) {
					t.Errorf("output shows what the plugin printed (%q):\n%s", s, r)
				}
			}
			if n := stub.Calls(); n != 1 {
				t.Errorf("metadata token requested %d times for %d images of %s, want 1", n, len(refs), garHost)
			}
			out := parseOnce(t, r)
			if st, reason := out.status(pub.Ref); st != "pulled" {
				t.Errorf("%s: %s %q, want pulled\n%s", pub.Ref, st, reason, r)
			}
			if tc.metadata == 0 {
				if r.code != 0 {
					t.Fatalf("want exit 0:\n%s", r)
				}
				for _, ref := range refs {
					if st, reason := out.status(ref); st != "pulled" {
						t.Errorf("%s: %s %q, want pulled\n%s", ref, st, reason, r)
					}
				}
				assertPresent(t, ctrd.Endpoint, append(refs, pub.Ref)...)
				return
			}
			if r.code != 1 {
				t.Fatalf("want exit 1 (one image failed):\n%s", r)
			}
			st, reason := out.status(refs[0])
			if want := "credential provider gcp-credential-provider: failed: exit status 255 ("; st != "failed" || !strings.HasPrefix(reason, want) {
				t.Errorf("%s: %s %q, want failed %q…\n%s", refs[0], st, reason, want, r)
			}
			assertPresent(t, ctrd.Endpoint, pub.Ref)
		})
	}
}

// TestAgentGCPCredentialProviderServiceAccount: the agent, under
// manifests/ and a Role that lets it request tokens of the images'
// ServiceAccounts, runs the kubelet's e2e plugin in its service-account
// mode (KEP-4412) as the kubelet's own e2e configures it. The plugin
// requires a JWT whose audience is the provider's and the ServiceAccount's
// annotations exactly as its e2e sets them: given the API server's token,
// it fetches the metadata token and the image is pulled. Where the
// ServiceAccount's annotations or the provider's audience are not what it
// requires, it refuses, and those images fail with reason credentials
// showing nothing it printed: the positive case is the plugin's own check
// passing. No token in the agent's log, Events or node status.
func TestAgentGCPCredentialProviderServiceAccount(t *testing.T) {
	const nodeName = "worker-1"
	bin := gcpPlugin(t, "gcp-credential-provider-with-sa", "gcp-credential-provider-other-audience")
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	k.Kubectl(t, "apply", "-k", "../manifests")
	for name, id := range map[string]string{"gar-puller": "123456", "gar-other": "654321"} {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: agentNS, Annotations: map[string]string{
			"domain.io/identity-id": id, "domain.io/identity-type": "serviceaccount"}}}
		if _, err := c.CoreV1().ServiceAccounts(agentNS).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	allowTokenRequests(t, c, "gar-puller", "gar-other")

	open := harness.StartRegistry(t, harness.RegistryOptions{})
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: harness.GCPTokenUser, Password: harness.GCPAccessToken, TLS: true})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	harness.PushTestImages(t, private, []harness.ImageSpec{
		{Repo: "kp-test/team/app", Tag: "1", OwnLayers: 1, LayerSize: 16 << 10},
		{Repo: "kp-test/team/tool", Tag: "1", OwnLayers: 1, LayerSize: 16 << 10},
	})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})
	for _, h := range []string{garHost, gcrHost} {
		private.MirrorFor(ctrd, h)
	}
	rt, err := cri.Connect(ctx, ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	stub := harness.StartGCEMetadataStub(t, 0)

	// The service-account provider of the kubelet's own e2e config for
	// Artifact Registry; for gcr.io, the same with another audience.
	dir := t.TempDir()
	providers := writeFile(t, dir, "providers.yaml", `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: gcp-credential-provider-with-sa
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    matchImages: ["*.pkg.dev"]
    defaultCacheDuration: 1m
    tokenAttributes:
      serviceAccountTokenAudience: test-audience
      cacheType: Token
      requireServiceAccount: true
      requiredServiceAccountAnnotationKeys: ["domain.io/identity-id", "domain.io/identity-type"]
    env:
      - {name: PLUGIN_MODE, value: serviceaccount}
  - name: gcp-credential-provider-other-audience
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    matchImages: ["*.gcr.io"]
    defaultCacheDuration: 1m
    tokenAttributes:
      serviceAccountTokenAudience: other-audience
      cacheType: Token
      requireServiceAccount: true
      requiredServiceAccountAnnotationKeys: ["domain.io/identity-id", "domain.io/identity-type"]
    env:
      - {name: PLUGIN_MODE, value: serviceaccount}
`)
	pulled := garHost + "/kp-test/team/app:1"
	refused := map[string]string{
		garHost + "/kp-test/team/tool:1": "gcp-credential-provider-with-sa",        // gar-other's identity-id
		gcrHost + "/kp-test/team/app:1":  "gcp-credential-provider-other-audience", // the audience
	}
	createNode(t, c, nodeName, nil, nil)
	hash := harness.SetImagesYAML(t, c, agentConfig(
		"  - image: "+pulled+"\n    serviceAccount: gar-puller\n",
		"  - image: "+garHost+"/kp-test/team/tool:1\n    serviceAccount: gar-other\n",
		"  - image: "+gcrHost+"/kp-test/team/app:1\n    serviceAccount: gar-puller\n",
	))
	agent := harness.StartAgent(t, harness.AgentOptions{Bin: preloaderBin, Kubeconfig: k.KubeconfigForPodOn(t, agentNS, agentSA, nodeName),
		Node: nodeName, Containerd: ctrd, Hosts: stub.Hosts(t),
		Args: []string{"--image-credential-provider-config", providers, "--image-credential-provider-bin-dir", bin}})
	node := func() harness.NodeView { return harness.ViewNode(c, nodeName) }
	agent.Eventually(t, 2*time.Minute, "node status", func() string {
		v := node()
		if why := v.Shows(hash, 2, 4); why != "" {
			return why
		}
		for ref, provider := range refused {
			if want, r := "credential provider "+provider+": failed: exit status 255 (", v.FailedReason(ref); !strings.HasPrefix(r, want) {
				return fmt.Sprintf("reason for %s: %q, want %q…", ref, r, want)
			}
		}
		return ""
	})
	// The plugin answers cacheKeyType Global; the kubelet keys a token
	// provider's answers by the token too, so gar-other's image, retried at
	// each sync after gar-puller's answer is cached, still runs the plugin
	// with its own token, which it refuses.
	syncs := strings.Count(agent.Log(), "msg=synced")
	agent.Eventually(t, time.Minute, "two more syncs", func() string {
		if n := strings.Count(agent.Log(), "msg=synced"); n < syncs+2 {
			return fmt.Sprintf("%d syncs, want %d", n, syncs+2)
		}
		return ""
	})
	v := node()
	for ref, provider := range refused {
		if want, r := "credential provider "+provider+": failed: exit status 255 (", v.FailedReason(ref); !strings.HasPrefix(r, want) {
			t.Errorf("after two more syncs, reason for %s: %q, want %q…", ref, r, want)
		}
		if criImage(t, rt, ref) != "" {
			t.Errorf("CRI ImageStatus(%s): present, want refused by the plugin", ref)
		}
	}
	if criImage(t, rt, pulled) == "" {
		t.Errorf("CRI ImageStatus(%s): absent, want pulled with the plugin's credentials", pulled)
	}
	if n := stub.Calls(); n != 1 {
		t.Errorf("metadata token requested %d times, want once (for gar-puller's token with audience test-audience)", n)
	}
	if _, metrics := agent.Get(t, "/metrics"); !strings.Contains(metrics, `preloader_pulls_total{reason="credentials",result="failed"}`) {
		t.Errorf("metrics count no failure of reason credentials:\n%s", metrics)
	}

	var shown []string
	for _, ev := range listEvents(t, c, "", "") {
		shown = append(shown, ev.Message)
	}
	shown = append(shown, agent.Log(), node().String())
	jwt := regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.`)
	for _, s := range shown {
		if jwt.MatchString(s) || strings.Contains(s, harness.GCPAccessToken) {
			t.Errorf("a token shows: %.300s", s)
		}
		for _, p := range gcpPluginPrinted {
			if strings.Contains(s, p) {
				t.Errorf("what the plugin printed (%q) shows: %.300s", p, s)
			}
		}
	}
}
