package integration

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// TestSandboxImageCRIO: on a real CRI-O the pause image is the one its
// status reports, its effective pause_image (a crio.conf.d drop-in's over
// crio.conf's), and `once` with sandboxImage auto pulls it and an image of
// the config from a private registry with the node's credentials, naming
// CRI-O as its runtime.
func TestSandboxImageCRIO(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, TLS: true})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "infra/pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10},
		{Repo: "team/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
	})
	pause, app := imgs[0], imgs[1]
	crio := harness.StartCRIO(t, harness.CRIOOptions{
		PauseImage:   "registry.example/overridden/pause:0",
		ConfigDropIn: "[crio.image]\npause_image = " + strconv.Quote(pause.Ref) + "\n",
		Registries:   []*harness.Registry{reg},
	})

	ctx := context.Background()
	store, err := noderuntime.Connect(ctx, noderuntime.Options{CRIEndpoint: crio.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	img, source, err := store.Facts().SandboxImage(ctx)
	if err != nil || img != pause.Ref || source != "CRI-O status (pause_image)" {
		t.Fatalf("SandboxImage = %q, %q, %v; want %s from CRI-O's status", img, source, err, pause.Ref)
	}

	dir := t.TempDir()
	cfg := writeFile(t, dir, "images.yaml", imagesYAML("auto", app.Ref))
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	r := preloader(t, time.Minute, []string{cri.EndpointEnv + "=" + crio.Endpoint}, "once", "--config", cfg, "--docker-config", creds, "-o", "json")
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("want exit 0:\n%s", r)
	}
	out := parseOnce(t, r)
	for _, ref := range []string{pause.Ref, app.Ref} {
		if st, reason := out.status(ref); st != "pulled" {
			t.Errorf("%s: %s %s, want pulled\n%s", ref, st, reason, r)
		}
	}
	assertPresent(t, crio.Endpoint, pause.Ref, app.Ref)
	assertRuntime(t, out, crio.Endpoint, "cri-o")
	if want := strings.TrimPrefix(harness.CRIOVersion, "v"); out.Runtime.Version != want {
		t.Errorf("runtime version %q, want the harness's CRI-O %s", out.Runtime.Version, want)
	}
}

// TestOnceCRIO runs `once` on a real CRI-O as the docs promise it there:
// pulls with credentials from a registry with htpasswd behind TLS (the CA
// in CRI-O's certs directory), unauthorized without them; pins, refresh,
// prune and the disk budget skipped with the reason and what to do
// instead; CRI-O's mirrors; an archive entry failing with reason
// "unsupported runtime".
func TestOnceCRIO(t *testing.T) {
	secure := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, TLS: true})
	app := harness.PushTestImages(t, secure, []harness.ImageSpec{{Repo: "corp/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10}})[0]
	// CRI-O's own mirror, as its docs have it, of a name no DNS resolves:
	// another htpasswd+TLS registry, whose credentials are in CRI-O's
	// global_auth_file (containers/image never sends a mirror the
	// credentials of the registry it stands for).
	const mirrored = "mirrored.example"
	mirror := harness.StartRegistry(t, harness.RegistryOptions{Username: "mirror-reader", Password: testPassword, TLS: true})
	harness.PushTestImages(t, mirror, []harness.ImageSpec{{Repo: "corp/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10}})
	authFile := writeFile(t, t.TempDir(), "auth.json", harness.DockerConfigJSON(mirror.Host, mirror.Username, mirror.Password))
	crio := harness.StartCRIO(t, harness.CRIOOptions{
		PauseImage:       "registry.example/unused/pause:0",
		Registries:       []*harness.Registry{secure, mirror},
		RegistriesDropIn: fmt.Sprintf("[[registry]]\nlocation = %q\n\n[[registry.mirror]]\nlocation = %q\n", mirrored, mirror.Host),
		ConfigDropIn:     "[crio.image]\nglobal_auth_file = " + strconv.Quote(authFile) + "\n",
	})

	env := []string{cri.EndpointEnv + "=" + crio.Endpoint}
	crioRuntime := "cri-o " + strings.TrimPrefix(harness.CRIOVersion, "v") // as messages name it
	dir := t.TempDir()
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(secure.Host, testUser, testPassword))
	var printed []string
	once := func(t *testing.T, args ...string) run {
		t.Helper()
		r := preloader(t, time.Minute, env, append([]string{"once"}, args...)...)
		printed = append(printed, r.stdout, r.stderr)
		return r
	}
	t.Cleanup(func() { assertNoSecret(t, printed...) })

	t.Run("private TLS registry: unauthorized without credentials, pulled with them", func(t *testing.T) {
		cfg := writeFile(t, dir, "private.yaml", imagesYAML("none", app.Ref))
		r := once(t, "--config", cfg, "-o", "json", "--docker-config", writeFile(t, dir, "empty.json", `{"auths":{}}`))
		if r.code != 1 {
			t.Fatalf("without credentials: want exit 1:\n%s", r)
		}
		out := parseOnce(t, r)
		if st, reason := out.status(app.Ref); st != "failed" || reason != "unauthorized" || out.Images[0].Attempts != 1 {
			t.Errorf("without credentials: %s %q after %d attempts, want failed unauthorized after 1\n%s", st, reason, out.Images[0].Attempts, r)
		}
		r = once(t, "--config", cfg, "-o", "json", "--docker-config", creds)
		if r.code != 0 {
			t.Fatalf("with credentials: want exit 0:\n%s", r)
		}
		if st, reason := parseOnce(t, r).status(app.Ref); st != "pulled" {
			t.Errorf("with credentials: %s %q, want pulled\n%s", st, reason, r)
		}
		assertPresent(t, crio.Endpoint, app.Ref)
	})

	t.Run("pins, refresh, prune and the disk budget: skipped with the reason, the images present", func(t *testing.T) {
		// A fresh image: the disk budget is weighed before its pull.
		fresh := harness.PushTestImages(t, secure, []harness.ImageSpec{{Repo: "corp/fresh", Tag: "1.0", OwnLayers: 1, LayerSize: 16 << 10}})[0]
		cfg := writeFile(t, dir, "pin.yaml", imagesYAML("none", app.Ref, fresh.Ref)+"pin: true\nrefresh: 1m\nprune: true\n")
		r := once(t, "--config", cfg, "--docker-config", creds)
		if r.code != 0 {
			t.Fatalf("first run: want exit 0:\n%s", r)
		}
		if want := `msg="disk budget not applied" reason="estimating image sizes for the disk budget needs containerd, and the runtime is ` + crioRuntime + `; keep the list within the disk yourself"`; !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %s\n%s", want, r)
		}
		// A tag is checked for refresh once it is on the node: the second run.
		r = once(t, "--config", cfg, "--docker-config", creds)
		if r.code != 0 {
			t.Fatalf("want exit 0:\n%s", r)
		}
		for _, want := range []string{
			`msg="images not pinned" reason="pinning images needs containerd, and the runtime is ` + crioRuntime + `; pin them in the runtime's own config (CRI-O: pinned_images)"`,
			`msg="tags not refreshed" reason="refreshing moving tags needs containerd, and the runtime is ` + crioRuntime + `; name images by digest, or pull moved tags with crictl pull"`,
			`msg="prune failed" err="prune: pruning images (recording which images the preloader brought) needs containerd, and the runtime is ` + crioRuntime + `; leave removal to the kubelet's image garbage collection, or remove them by hand (crictl rmi)"`,
		} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %s\n%s", want, r)
			}
		}
		if !strings.Contains(r.stdout, " present ") {
			t.Errorf("%s not shown present\n%s", app.Ref, r)
		}
	})

	t.Run("mirrors: CRI-O's registries.conf mirror, not the config's mirror key", func(t *testing.T) {
		// The kubelet asks for the name pods write and CRI-O goes to its
		// mirror: so does once, and the image is there under that name.
		ref := mirrored + "/corp/app:1.0"
		r := once(t, "--config", writeFile(t, dir, "mirrored.yaml", imagesYAML("none", ref)), "-o", "json", "--docker-config", writeFile(t, dir, "none.json", `{"auths":{}}`))
		if r.code != 0 {
			t.Fatalf("image of a registry CRI-O mirrors: want exit 0:\n%s", r)
		}
		if st, reason := parseOnce(t, r).status(ref); st != "pulled" {
			t.Errorf("%s: %s %q, want pulled through CRI-O's mirror\n%s", ref, st, reason, r)
		}
		assertPresent(t, crio.Endpoint, ref)

		// The config's mirror key needs the runtime to record the image
		// under another name than it pulled: refused, pointing at CRI-O's.
		ref = "registry.example/corp/app:1.0"
		cfg := writeFile(t, dir, "mirror.yaml", imagesYAML("none", ref)+"    mirror: "+secure.Host+"\n")
		r = once(t, "--config", cfg, "-o", "json", "--docker-config", creds)
		if r.code != 1 {
			t.Fatalf("mirror key: want exit 1:\n%s", r)
		}
		out := parseOnce(t, r)
		if st, reason := out.status(ref); st != "failed" || reason != "unsupported runtime" {
			t.Errorf("mirror key: %s %q, want failed \"unsupported runtime\"\n%s", st, reason, r)
		}
		if want := "CRI-O: registries.conf [[registry.mirror]]"; !strings.Contains(out.Images[0].Error, want) {
			t.Errorf("mirror key: error %q, want it to point at %q", out.Images[0].Error, want)
		}
	})

	t.Run("verify: unsupported runtime, pointing at CRI-O's policy.json", func(t *testing.T) {
		// An image the node lacks: verify concerns what a run pulls.
		img := harness.PushTestImages(t, secure, []harness.ImageSpec{{Repo: "corp/signed", Tag: "1.0", OwnLayers: 1, LayerSize: 16 << 10}})[0]
		key := writeFile(t, t.TempDir(), "team.pub", testPublicKeyPEM(t))
		cfg := writeFile(t, dir, "verify.yaml", imagesYAML("none", img.Ref)+"verify:\n  keys:\n    - "+strconv.Quote(key)+"\n")
		r := once(t, "--config", cfg, "-o", "json", "--docker-config", creds)
		if r.code != 1 {
			t.Fatalf("want exit 1:\n%s", r)
		}
		out := parseOnce(t, r)
		if st, reason := out.status(img.Ref); st != "failed" || reason != "unsupported runtime" {
			t.Errorf("%s %q, want failed \"unsupported runtime\"\n%s", st, reason, r)
		}
		for _, want := range []string{"needs containerd, and the runtime is " + crioRuntime, "policy.json", "sigstoreSigned"} {
			if !strings.Contains(out.Images[0].Error, want) {
				t.Errorf("error %q, want it to say %q", out.Images[0].Error, want)
			}
		}
		assertAbsent(t, crio.Endpoint, img.Ref)
	})

	t.Run("archive entry: unsupported runtime", func(t *testing.T) {
		archives := t.TempDir()
		ref := "corp.example/offline/tool:1"
		cfg := writeFile(t, dir, "archive.yaml", "sandboxImage: none\narchiveDir: "+archives+"\nimages:\n  - image: "+ref+"\n    archive: tool.tar\n")
		r := once(t, "--config", cfg, "-o", "json")
		if r.code != 1 {
			t.Fatalf("want exit 1:\n%s", r)
		}
		out := parseOnce(t, r)
		if st, reason := out.status(ref); st != "failed" || reason != "unsupported runtime" {
			t.Errorf("%s %q, want failed \"unsupported runtime\"\n%s", st, reason, r)
		}
		if want := "importing archives needs containerd, and the runtime is " + crioRuntime; !strings.Contains(out.Images[0].Error, want) {
			t.Errorf("error %q, want it to say %q", out.Images[0].Error, want)
		}
	})
}

// TestAgentCRIO runs `preloader agent` as a process under the manifests'
// RBAC against a real kube-apiserver and CRI-O: the pause image CRI-O
// reports and an image pulled with a pullSecret from an htpasswd+TLS
// registry; the Node's label, status (naming CRI-O), taint, Event and the
// metrics, as on containerd; an image removed behind its back comes back.
func TestAgentCRIO(t *testing.T) {
	const nodeName = "crio-1"
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	k.Kubectl(t, "apply", "-k", "../manifests")

	open := harness.StartRegistry(t, harness.RegistryOptions{})
	secure := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, TLS: true})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	app := harness.PushTestImages(t, secure, []harness.ImageSpec{{Repo: "corp/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10}})[0]
	crio := harness.StartCRIO(t, harness.CRIOOptions{PauseImage: pause.Ref, Registries: []*harness.Registry{open, secure}})
	rt, err := cri.Connect(ctx, crio.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()

	createNode(t, c, nodeName, nil, func(n *corev1.Node) {
		n.Spec.Taints = []corev1.Taint{{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}}
	})
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: agentNS}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(harness.DockerConfigJSON(secure.Host, testUser, testPassword))}}
	if _, err := c.CoreV1().Secrets(agentNS).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	hash := harness.SetImagesYAML(t, c, agentConfig("  - image: "+app.Ref+"\n    pullSecrets: [regcred]\n"))
	agent := harness.StartAgent(t, harness.AgentOptions{Bin: preloaderBin, Kubeconfig: k.KubeconfigForPodOn(t, agentNS, agentSA, nodeName), Node: nodeName, CRIO: crio})
	node := func() harness.NodeView { return harness.ViewNode(c, nodeName) }

	agent.Eventually(t, time.Minute, "node ready", func() string { return node().Shows(hash, 2, 2) })
	v := node()
	if v.Tainted {
		t.Errorf("ready node keeps the %s taint", nodestatus.TaintNotReady)
	}
	if got := v.Status.Runtime; got == nil || got.Name != "cri-o" || got.Version != rt.RuntimeVersion {
		t.Errorf("status names runtime %+v, want cri-o %s as its CRI says", got, rt.RuntimeVersion)
	}
	assertPresent(t, crio.Endpoint, pause.Ref, app.Ref)
	agent.Eventually(t, 30*time.Second, "ImagesReady Event on the Node", func() string {
		evs := listEvents(t, c, "", "involvedObject.kind=Node,involvedObject.name="+nodeName+",reason="+agentReasonImagesReady)
		return eventWith(evs, corev1.EventTypeNormal, "All 2 images present", hash)
	})
	if code, body := agent.Get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %s", code, body)
	}
	code, body := agent.Get(t, "/metrics")
	for _, want := range []string{"preloader_images_desired 2", "preloader_images_present 2", `preloader_pulls_total{reason="",result="pulled"} 2`} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q (HTTP %d)", want, code)
		}
	}

	// Removed behind the agent's back, through CRI-O: back at the next resync.
	if err := rt.RemoveImage(ctx, app.Ref); err != nil {
		t.Fatal(err)
	}
	agent.Eventually(t, 30*time.Second, "the removed image back", func() string {
		if img, err := rt.ImageStatus(ctx, app.Ref); err != nil || img == nil {
			return fmt.Sprintf("CRI ImageStatus(%s) = %v, %v", app.Ref, img, err)
		}
		return ""
	})
	if log := agent.Log(); !strings.Contains(log, `msg="images gone from the runtime; restoring them"`) {
		t.Errorf("the agent did not say it restored the image:\n%s", agent.Tail(20))
	}
	if err := agent.Stop(15 * time.Second); err != nil {
		t.Error(err)
	}
	assertNoSecret(t, agent.Log())
}
