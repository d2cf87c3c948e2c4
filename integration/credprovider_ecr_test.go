package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// TestOnceECRCredentialProvider: `once` with the real ecr-credential-provider
// and no Secret preloads ECR-named images, with one plugin run for both
// images of a registry (the plugin answers cacheKeyType Registry); an
// account whose GetAuthorizationToken is denied fails its image with
// reason credentials and nothing of the plugin's stderr, the others go on.
// containerd resolves the ECR names to the local registry through
// hosts.toml; the plugin talks to a local ECR stub; nothing leaves
// 127.0.0.1.
//
// pullVia cri is the kubelet's path: the runtime's own pull with the
// credentials in the request; containerd is the preloader's own client,
// which reads the same hosts.toml. Both on containerd 2.x and 1.6, whose
// CRI gives the request's credentials to a mirror of another name too.
func TestOnceECRCredentialProvider(t *testing.T) {
	harness.Require(t, "ecr-credential-provider "+harness.ECRCredentialProviderVersion+" (scripts/install-deps.sh)", harness.ECRCredentialProviderBinary())
	for _, flavor := range flavors {
		for _, via := range []string{"cri", "containerd"} {
			t.Run(string(flavor)+"/"+via, func(t *testing.T) { testOnceECRCredentialProvider(t, flavor, via) })
		}
	}
}

func testOnceECRCredentialProvider(t *testing.T, flavor harness.Flavor, via string) {
	const (
		allowed = harness.ECRAllowedRegistry
		denied  = harness.ECRDeniedRegistry
	)
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: "AWS", Password: harness.ECRPassword, TLS: true})
	open := harness.StartRegistry(t, harness.RegistryOptions{})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	harness.PushTestImages(t, private, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.4", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/tool", Tag: "2.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
	})
	pub := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "other/app", Tag: "1", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: flavor, SandboxImage: pause.Ref})
	// The ECR hosts are served by the local registry as their mirror: the
	// credentials the preloader puts in the CRI request carry no server
	// address, so containerd hands them to a mirror of another name too.
	for _, h := range []string{allowed, denied} {
		private.MirrorFor(ctrd, h)
	}
	stub := harness.StartECRStub(t)

	dir, bin := t.TempDir(), t.TempDir()
	if err := os.Symlink(harness.ECRCredentialProviderBinary(), filepath.Join(bin, "ecr-credential-provider")); err != nil {
		t.Fatal(err)
	}
	providers := writeFile(t, dir, "providers.yaml", stub.ProviderConfig(dir))

	refs := []string{allowed + "/team/app:1.4", allowed + "/team/tool:2.0"}
	deniedRef := denied + "/team/app:1.4"
	env := []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}
	cfg := writeFile(t, dir, "images.yaml", "pullVia: "+via+"\n"+imagesYAML("none", refs[0], refs[1], deniedRef, pub.Ref))
	r := preloader(t, 2*time.Minute, env, "once", "--config", cfg, "-o", "json",
		"--image-credential-provider-config", providers, "--image-credential-provider-bin-dir", bin)
	harness.AssertNoSecret(t, "AWS", harness.ECRPassword, r.stdout, r.stderr)
	if strings.Contains(r.stdout+r.stderr, harness.ECRDeniedDetail) {
		t.Errorf("output shows the plugin's stderr:\n%s", r)
	}
	if r.code != 1 {
		t.Fatalf("want exit 1 (one image failed):\n%s", r)
	}
	out := parseOnce(t, r)
	for _, ref := range append(refs, pub.Ref) {
		if st, reason := out.status(ref); st != "pulled" {
			t.Errorf("%s: %s %q, want pulled\n%s", ref, st, reason, r)
		}
	}
	assertPresent(t, ctrd.Endpoint, append(refs, pub.Ref)...)
	for _, img := range out.Images {
		if img.Via != via {
			t.Errorf("%s: pulled via %q, want %q\n%s", img.Image, img.Via, via, r)
		}
	}
	st, reason := out.status(deniedRef)
	if want := "credential provider ecr-credential-provider: failed: exit status 1 ("; st != "failed" || !strings.HasPrefix(reason, want) {
		t.Errorf("%s: %s %q, want failed %q…\n%s", deniedRef, st, reason, want, r)
	}
	if n := stub.Calls("us-east-1"); n != 1 {
		t.Errorf("GetAuthorizationToken called %d times for 2 images of %s, want 1 (cacheKeyType Registry)", n, allowed)
	}
	if n := stub.Calls("eu-west-1"); n != 1 {
		t.Errorf("GetAuthorizationToken called %d times for %s, want 1", n, denied)
	}
}

// TestAgentECRCredentialProvider: the agent, under manifests/, with the
// real ecr-credential-provider and no Secret anywhere, preloads the
// ECR-named images of an allowed account: present per ImageStatus, and
// the Node's status says so; the denied account's image fails with reason
// credentials in the status, an Event and the metrics, with nothing of the
// plugin's stderr. One GetAuthorizationToken call serves both images of the
// allowed registry (cacheKeyType Registry), and a later sync that pulls an
// image again (removed behind the agent's back) uses the cached answer
// instead of calling again. No token anywhere a user looks.
func TestAgentECRCredentialProvider(t *testing.T) {
	harness.Require(t, "ecr-credential-provider "+harness.ECRCredentialProviderVersion+" (scripts/install-deps.sh)", harness.ECRCredentialProviderBinary())
	const nodeName = "worker-1"
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	k.Kubectl(t, "apply", "-k", "../manifests")

	private := harness.StartRegistry(t, harness.RegistryOptions{Username: "AWS", Password: harness.ECRPassword, TLS: true})
	open := harness.StartRegistry(t, harness.RegistryOptions{})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	harness.PushTestImages(t, private, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.4", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/tool", Tag: "2.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
	})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})
	for _, h := range []string{harness.ECRAllowedRegistry, harness.ECRDeniedRegistry} {
		private.MirrorFor(ctrd, h)
	}
	rt, err := cri.Connect(ctx, ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	stub := harness.StartECRStub(t)

	dir, bin := t.TempDir(), t.TempDir()
	if err := os.Symlink(harness.ECRCredentialProviderBinary(), filepath.Join(bin, "ecr-credential-provider")); err != nil {
		t.Fatal(err)
	}
	providers := writeFile(t, dir, "providers.yaml", stub.ProviderConfig(dir))

	app, tool := harness.ECRAllowedRegistry+"/team/app:1.4", harness.ECRAllowedRegistry+"/team/tool:2.0"
	denied := harness.ECRDeniedRegistry + "/team/app:1.4"
	createNode(t, c, nodeName, nil, nil)
	hash := harness.SetImagesYAML(t, c, agentConfig("  - image: "+app+"\n", "  - image: "+tool+"\n", "  - image: "+denied+"\n"))
	agent := harness.StartAgent(t, harness.AgentOptions{Bin: preloaderBin, Kubeconfig: k.KubeconfigForPodOn(t, agentNS, agentSA, nodeName),
		Node: nodeName, Containerd: ctrd,
		Args: []string{"--image-credential-provider-config", providers, "--image-credential-provider-bin-dir", bin}})
	node := func() harness.NodeView { return harness.ViewNode(c, nodeName) }
	const wantReason = "credential provider ecr-credential-provider: failed: exit status 1 ("
	// pause, app and tool present; denied failed.
	shows := func() string {
		v := node()
		if why := v.Shows(hash, 3, 4); why != "" {
			return why
		}
		if r := v.FailedReason(denied); !strings.HasPrefix(r, wantReason) {
			return fmt.Sprintf("reason for %s: %q, want %q…", denied, r, wantReason)
		}
		return ""
	}
	agent.Eventually(t, time.Minute, "node status", shows)
	for _, ref := range []string{app, tool} {
		if criImage(t, rt, ref) == "" {
			t.Errorf("CRI ImageStatus(%s): absent, want pulled with the plugin's credentials", ref)
		}
	}
	if criImage(t, rt, denied) != "" {
		t.Errorf("CRI ImageStatus(%s): present, want it held back for its provider's failure", denied)
	}
	agent.Eventually(t, 30*time.Second, "PreloadFailed Event on the Node", func() string {
		evs := listEvents(t, c, "", "involvedObject.kind=Node,involvedObject.name="+nodeName+",reason="+agentReasonPreloadFailed)
		return eventWith(evs, corev1.EventTypeWarning, denied+": "+wantReason)
	})
	if _, body := agent.Get(t, "/metrics"); !strings.Contains(body, `preloader_pulls_total{reason="credentials",result="failed"}`) {
		t.Errorf("/metrics counts no pull failed for credentials")
	}
	if n := stub.Calls("us-east-1"); n != 1 {
		t.Errorf("GetAuthorizationToken called %d times for 2 images of %s, want 1 (cacheKeyType Registry)", n, harness.ECRAllowedRegistry)
	}

	// A later sync that has to pull app again finds the plugin's answer
	// in the cache, valid for 6 hours (half the token's life).
	if err := rt.RemoveImage(ctx, app); err != nil {
		t.Fatalf("CRI RemoveImage(%s): %v", app, err)
	}
	agent.Eventually(t, time.Minute, app+" pulled again", func() string {
		if criImage(t, rt, app) == "" {
			return "absent"
		}
		return ""
	})
	agent.Eventually(t, 30*time.Second, "node status after the pull again", shows)
	if n := stub.Calls("us-east-1"); n != 1 {
		t.Errorf("GetAuthorizationToken called %d times, want still 1: the cached answer is valid", n)
	}
	t.Logf("GetAuthorizationToken calls for the denied account, one per sync that retried it: %d", stub.Calls("eu-west-1"))

	var shown []string
	for _, ev := range listEvents(t, c, "", "") {
		shown = append(shown, ev.Message)
	}
	shown = append(shown, agent.Log(), node().String())
	harness.AssertNoSecret(t, "AWS", harness.ECRPassword, shown...)
	for _, s := range shown {
		if strings.Contains(s, harness.ECRDeniedDetail) {
			t.Errorf("the plugin's stderr shows: %.300s", s)
		}
	}
}
