package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// The agent's ConfigMap, as manifests/ names it.
const (
	agentNS = harness.AgentNamespace
	agentCM = harness.AgentConfigMap
	agentSA = harness.AgentServiceAccount
)

// startAgent runs the built binary against the API server (as the
// identity in kubeconfig) and ctrd; see harness.StartAgent.
func startAgent(t *testing.T, kubeconfig, node string, ctrd *harness.Containerd) *harness.Agent {
	t.Helper()
	return harness.StartAgent(t, harness.AgentOptions{Bin: preloaderBin, Kubeconfig: kubeconfig, Node: node, Containerd: ctrd})
}

// listEvents lists core Events in ns ("" for all) matching a field selector.
func listEvents(t *testing.T, c kubernetes.Interface, ns, selector string) []corev1.Event {
	t.Helper()
	l, err := c.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: selector})
	if err != nil {
		t.Fatalf("list events %q: %v", selector, err)
	}
	return l.Items
}

// eventWith returns "" if one of the Events has the type and a message with
// every one of wants, else what the Events say.
func eventWith(evs []corev1.Event, typ string, wants ...string) string {
	var seen []string
next:
	for _, e := range evs {
		seen = append(seen, e.Type+" "+e.Reason+": "+e.Message)
		if e.Type != typ {
			continue
		}
		for _, w := range wants {
			if !strings.Contains(e.Message, w) {
				continue next
			}
		}
		return ""
	}
	return fmt.Sprintf("no %s Event with %q; events: %q", typ, wants, seen)
}

// agentConfig is an images.yaml with quick retries and a short resync, so
// that a removed image comes back within seconds.
func agentConfig(entries ...string) string {
	return "# Images for the agent test.\nsandboxImage: auto\nresync: 3s\nretry: {initialDelay: 200ms, maxDelay: 2s}\nimages:\n" + strings.Join(entries, "")
}

// criImage is the image ID the runtime answers to ImageStatus(ref), as the
// kubelet asks it; "" when absent.
func criImage(t *testing.T, rt *cri.Client, ref string) string {
	t.Helper()
	img, err := rt.ImageStatus(context.Background(), ref)
	if err != nil {
		t.Fatalf("CRI ImageStatus(%s): %v", ref, err)
	}
	if img == nil {
		return ""
	}
	return img.Id
}

// TestAgent runs `preloader agent` as a process, under the ServiceAccount
// and RBAC of manifests/, against a real kube-apiserver and containerd, and
// checks what a user sees: the Node's label, annotation and taint, Events,
// CRI ImageStatus, and the output of `preloader status` and `warm --wait`.
func TestAgent(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testAgent(t, flavor) })
	}
}

func testAgent(t *testing.T, flavor harness.Flavor) {
	const nodeName = "worker-1"
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	start := time.Now()
	k.Kubectl(t, "apply", "-k", "../manifests")

	open := harness.StartRegistry(t, harness.RegistryOptions{})
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	pub := harness.PushTestImages(t, open, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
		{Repo: "team/tool", Tag: "2.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
		{Repo: "team/gpu", Tag: "1.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
		{Repo: "team/warm", Tag: "1.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
	})
	app, tool, gpu, warm := pub[0].Ref, pub[1].Ref, pub[2].Ref, pub[3].Ref
	priv := harness.PushTestImages(t, private, []harness.ImageSpec{
		{Repo: "corp/secret", Tag: "1.0", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "corp/sa", Tag: "1.0", OwnLayers: 1, LayerSize: 32 << 10},
	})
	bySecret, bySA := priv[0].Ref, priv[1].Ref

	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: flavor, SandboxImage: pause.Ref})
	rt, err := cri.Connect(ctx, ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()

	// The node registers as kubelet --register-with-taints would have it,
	// with a taint of someone else's that must stay.
	other := corev1.Taint{Key: "example.com/dedicated", Value: "infra", Effect: corev1.TaintEffectNoSchedule}
	createNode(t, c, nodeName, nil, func(n *corev1.Node) {
		n.Spec.Taints = []corev1.Taint{{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}, other}
	})

	// Not ready at first: the Secret that image names does not exist yet.
	secretEntry := "  - image: " + bySecret + "\n    pullSecrets: [regcred]\n"
	first := agentConfig(
		"  - image: "+app+"\n",
		secretEntry,
		"  - image: "+gpu+"\n    nodeSelector: {gpu: \"true\"}\n",
	)
	hash := harness.SetImagesYAML(t, c, first)

	agent := startAgent(t, k.KubeconfigForPodOn(t, agentNS, agentSA, nodeName), nodeName, ctrd)
	node := func() harness.NodeView { return harness.ViewNode(c, nodeName) }
	nodeEvents := func(reason string) []corev1.Event {
		return listEvents(t, c, "", "involvedObject.kind=Node,involvedObject.name="+nodeName+",reason="+reason)
	}
	var printed []string // command output to check for credentials

	ok := t.Run("ConfigMap drives the preload; a missing Secret keeps the node tainted", func(t *testing.T) {
		// pause (the runtime's sandbox image), app and the private image;
		// the gpu image's nodeSelector does not match.
		agent.Eventually(t, time.Minute, "node status", func() string {
			v := node()
			if why := v.ShowsWithCondition(hash, 2, 3); why != "" {
				return why
			}
			if r := v.FailedReason(bySecret); !strings.Contains(r, "secret kube-preloader/regcred not found") {
				return fmt.Sprintf("reason for %s: %q, want the missing Secret named", bySecret, r)
			}
			return ""
		})
		if v := node(); !v.Tainted {
			t.Errorf("not-ready taint removed from a node that is not ready: %s", v)
		}
		if c := node().Condition; c == nil || c.Status != corev1.ConditionFalse || c.Reason != nodestatus.ReasonImagesFailed || c.Message != "2/3 images present, 1 failed" {
			t.Errorf("condition %s: %+v, want False ImagesFailed \"2/3 images present, 1 failed\"", nodestatus.ConditionImagesReady, c)
		}
		for _, ref := range []string{pause.Ref, app} {
			if criImage(t, rt, ref) == "" {
				t.Errorf("CRI ImageStatus(%s): absent, want present", ref)
			}
		}
		if id := criImage(t, rt, gpu); id != "" {
			t.Errorf("%s pulled although its nodeSelector does not match", gpu)
		}
		agent.Eventually(t, 30*time.Second, "PreloadFailed Event on the Node", func() string {
			return eventWith(nodeEvents(agentReasonPreloadFailed), corev1.EventTypeWarning, bySecret, "regcred")
		})
		if code, body := agent.Get(t, "/readyz"); code != http.StatusOK {
			t.Errorf("/readyz: %d %s", code, body)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("pullSecrets: the Secret appears, the image is pulled, the taint goes", func(t *testing.T) {
		auth := harness.DockerConfigJSON(private.Host, testUser, testPassword)
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: agentNS},
			Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(auth)}}
		if _, err := c.CoreV1().Secrets(agentNS).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		agent.Eventually(t, time.Minute, "node ready", func() string { return node().ShowsWithCondition(hash, 3, 3) })
		v := node()
		if got := v.Status.Runtime; got == nil || got.Name != "containerd" || got.Name != rt.RuntimeName || got.Version != rt.RuntimeVersion {
			t.Errorf("status names runtime %+v, want containerd %s as its CRI says", got, rt.RuntimeVersion)
		}
		if v.Tainted {
			t.Errorf("ready node keeps the %s taint: %v", nodestatus.TaintNotReady, v.Node.Spec.Taints)
		}
		if c := v.Condition; c == nil || c.Status != corev1.ConditionTrue || c.Reason != nodestatus.ReasonImagesPresent || c.Message != "3/3 images present" {
			t.Errorf("condition %s: %+v, want True ImagesPresent \"3/3 images present\"", nodestatus.ConditionImagesReady, c)
		}
		// Other taints stay: ours, and the node.kubernetes.io/not-ready the
		// API server's TaintNodesByCondition gave the new Node.
		kept := false
		for _, tn := range v.Node.Spec.Taints {
			kept = kept || tn == other
		}
		if !kept {
			t.Errorf("taints %v: %v was removed too", v.Node.Spec.Taints, other)
		}
		if criImage(t, rt, bySecret) == "" {
			t.Errorf("CRI ImageStatus(%s): absent", bySecret)
		}
		agent.Eventually(t, 30*time.Second, "ImagesReady Event on the Node", func() string {
			return eventWith(nodeEvents(agentReasonImagesReady), corev1.EventTypeNormal, "All 3 images present", hash)
		})
	})
	if !ok {
		return
	}

	base := []string{"  - image: " + app + "\n", secretEntry, "  - image: " + gpu + "\n    nodeSelector: {gpu: \"true\"}\n"}
	ok = t.Run("an edit that adds an image shows it present in the node's status", func(t *testing.T) {
		base = append(base, "  - image: "+tool+"\n")
		s := time.Now()
		hash = harness.SetImagesYAML(t, c, agentConfig(base...))
		agent.Eventually(t, time.Minute, "status of the new config", func() string { return node().ShowsWithCondition(hash, 4, 4) })
		t.Logf("config edit → node status with the pulled image: %v", time.Since(s).Round(time.Millisecond))
		if criImage(t, rt, tool) == "" {
			t.Errorf("CRI ImageStatus(%s): absent", tool)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("serviceAccount: its imagePullSecrets are used once it exists", func(t *testing.T) {
		base = append(base, "  - image: "+bySA+"\n    serviceAccount: builder\n")
		hash = harness.SetImagesYAML(t, c, agentConfig(base...))
		agent.Eventually(t, time.Minute, "failure for the missing ServiceAccount", func() string {
			v := node()
			if why := v.ShowsWithCondition(hash, 4, 5); why != "" {
				return why
			}
			if r := v.FailedReason(bySA); !strings.Contains(r, "serviceaccount kube-preloader/builder not found") {
				return fmt.Sprintf("reason for %s: %q", bySA, r)
			}
			return ""
		})
		// A legacy .dockercfg Secret, only for the ServiceAccount: the
		// regcred of the other image is not this image's credential.
		auth := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPassword))
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "builder-pull", Namespace: agentNS}, Type: corev1.SecretTypeDockercfg,
			Data: map[string][]byte{corev1.DockerConfigKey: fmt.Appendf(nil, `{"%s":{"auth":%q}}`, private.Host, auth)}}
		if _, err := c.CoreV1().Secrets(agentNS).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "builder", Namespace: agentNS},
			ImagePullSecrets: []corev1.LocalObjectReference{{Name: "builder-pull"}}}
		if _, err := c.CoreV1().ServiceAccounts(agentNS).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		agent.Eventually(t, time.Minute, "image via the ServiceAccount", func() string { return node().ShowsWithCondition(hash, 5, 5) })
		if criImage(t, rt, bySA) == "" {
			t.Errorf("CRI ImageStatus(%s): absent", bySA)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("a malformed edit keeps the last good config and says so in Events", func(t *testing.T) {
		good := hash
		bad := agentConfig(base...) + "concurrency: lots\n"
		badLine := strings.Count(bad, "\n")
		harness.SetImagesYAML(t, c, bad)
		where := fmt.Sprintf("images.yaml:%d", badLine)
		agent.Eventually(t, 30*time.Second, "InvalidConfig Event on the ConfigMap", func() string {
			evs := listEvents(t, c, agentNS, "involvedObject.kind=ConfigMap,involvedObject.name="+agentCM+",reason="+agentReasonInvalidConfig)
			return eventWith(evs, corev1.EventTypeWarning, where, "keeping the last good config "+good)
		})
		agent.Eventually(t, 30*time.Second, "InvalidConfig Event on the Node", func() string {
			return eventWith(nodeEvents(agentReasonInvalidConfig), corev1.EventTypeWarning, agentNS+"/"+agentCM, where)
		})
		if why := node().Shows(good, 5, 5); why != "" {
			t.Errorf("after a malformed edit: %s", why)
		}
		// The last good config is still enforced, not just still shown:
		// an image removed behind the agent's back comes back at resync.
		if err := rt.RemoveImage(ctx, tool); err != nil {
			t.Fatalf("CRI RemoveImage(%s): %v", tool, err)
		}
		agent.Eventually(t, 30*time.Second, tool+" restored under the last good config", func() string {
			if criImage(t, rt, tool) == "" {
				return "absent"
			}
			return ""
		})
		if why := node().Shows(good, 5, 5); why != "" {
			t.Errorf("after the restore: %s", why)
		}
		// Fixed again: applied as any edit.
		base = append(base, "# fixed\n")
		hash = harness.SetImagesYAML(t, c, agentConfig(base...))
		agent.Eventually(t, 30*time.Second, "the fixed config", func() string { return node().ShowsWithCondition(hash, 5, 5) })
	})
	if !ok {
		return
	}

	ok = t.Run("nodeSelector: labelling the Node brings the image", func(t *testing.T) {
		if criImage(t, rt, gpu) != "" {
			t.Fatalf("%s present before the label", gpu)
		}
		patch := `{"metadata":{"labels":{"gpu":"true"}}}`
		if _, err := c.CoreV1().Nodes().Patch(ctx, nodeName, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		agent.Eventually(t, time.Minute, "gpu image on the labelled node", func() string { return node().ShowsWithCondition(hash, 6, 6) })
		if criImage(t, rt, gpu) == "" {
			t.Errorf("CRI ImageStatus(%s): absent", gpu)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("preloader status shows the node", func(t *testing.T) {
		r := preloader(t, time.Minute, nil, "status", "--kubeconfig", k.Kubeconfig)
		printed = append(printed, r.stdout, r.stderr)
		if r.code != 0 {
			t.Fatalf("want exit 0:\n%s", r)
		}
		rows := tableRows(t, r.stdout)
		want := map[string]string{"NODE": nodeName, "READY": "true", "PRESENT": "6/6", "MISSING": "<none>"}
		if len(rows) != 1 {
			t.Fatalf("want one row:\n%s", r.stdout)
		}
		for col, w := range want {
			if rows[0][col] != w {
				t.Errorf("%s = %q, want %q\n%s", col, rows[0][col], w, r.stdout)
			}
		}
		r = preloader(t, time.Minute, nil, "status", "-o", "wide", "--kubeconfig", k.Kubeconfig)
		printed = append(printed, r.stdout, r.stderr)
		if rows := tableRows(t, r.stdout); len(rows) != 1 || rows[0]["CONFIG"] != hash {
			t.Errorf("wide: want CONFIG %s:\n%s", hash, r)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("warm --wait exits 0 once the agent reports the image", func(t *testing.T) {
		if criImage(t, rt, warm) != "" {
			t.Fatalf("%s present before warm", warm)
		}
		s := time.Now()
		r := preloader(t, 2*time.Minute, nil, "warm", "--configmap", agentNS+"/"+agentCM, "--image", warm,
			"--wait", "--timeout", "90s", "--kubeconfig", k.Kubeconfig)
		printed = append(printed, r.stdout, r.stderr)
		if r.code != 0 || !strings.Contains(r.stderr, "1/1 nodes have "+warm) {
			t.Fatalf("want exit 0 with 1/1 nodes:\n%s", r)
		}
		t.Logf("warm --wait took %v", time.Since(s).Round(time.Millisecond))
		if criImage(t, rt, warm) == "" {
			t.Errorf("warm --wait exited 0 but CRI ImageStatus(%s) is absent", warm)
		}
		hash = config.Hash([]byte(cmData(c, agentNS, agentCM)))
		if why := node().Shows(hash, 7, 7); why != "" {
			t.Errorf("after warm: %s", why)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("prune: true removes what the agent brought and the config dropped", func(t *testing.T) {
		before := cmData(c, agentNS, agentCM)
		entry := "  - image: " + warm + "\n"
		if !strings.Contains(before, entry) {
			t.Fatalf("images.yaml does not list %s as warm wrote it:\n%s", warm, before)
		}
		harness.SetImagesYAML(t, c, strings.Replace(before, entry, "", 1)+"prune: true\n")
		agent.Eventually(t, 30*time.Second, "ImagesPruned Event on the Node", func() string {
			return eventWith(nodeEvents(agentReasonImagesPruned), corev1.EventTypeNormal, warm)
		})
		if criImage(t, rt, warm) != "" {
			t.Errorf("%s still present after the agent said it pruned it", warm)
		}
		for _, kept := range []string{app, tool} {
			if criImage(t, rt, kept) == "" {
				t.Errorf("%s, still listed, was removed", kept)
			}
		}
		// Back as it was, for what follows: the agent pulls it again.
		harness.SetImagesYAML(t, c, before)
		agent.Eventually(t, 30*time.Second, "the image back", func() string {
			return node().ShowsWithCondition(hash, 7, 7)
		})
	})
	if !ok {
		return
	}

	ok = t.Run("a deleted ConfigMap keeps the last good config and warns", func(t *testing.T) {
		if err := c.CoreV1().ConfigMaps(agentNS).Delete(ctx, agentCM, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		agent.Eventually(t, 30*time.Second, "ConfigMapMissing Event on the Node", func() string {
			return eventWith(nodeEvents(agentReasonConfigMissing), corev1.EventTypeWarning, "keeping the last good config "+hash)
		})
		if why := node().Shows(hash, 7, 7); why != "" {
			t.Errorf("after the ConfigMap was deleted: %s", why)
		}
		if code, body := agent.Get(t, "/readyz"); code != http.StatusOK {
			t.Errorf("/readyz with the last good config: %d %s", code, body)
		}
	})
	if !ok {
		return
	}

	t.Run("metrics, and a clean stop on SIGTERM", func(t *testing.T) {
		code, body := agent.Get(t, "/metrics")
		for _, want := range []string{"preloader_images_desired 7", "preloader_images_present 7", `preloader_pulls_total{reason="",result="pulled"}`} {
			if code != http.StatusOK || !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %q (HTTP %d)", want, code)
			}
		}
		if err := agent.Stop(15 * time.Second); err != nil {
			t.Error(err)
		}
		if !strings.Contains(agent.Log(), `msg=stopped`) {
			t.Errorf("no \"stopped\" in the agent's log:\n%s", agent.Tail(20))
		}
	})

	// What the agent may not have done, whatever passed above: show a
	// credential anywhere, or hit a wall of its RBAC.
	log := agent.Log()
	n, err := c.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodeJSON, _ := json.Marshal(n)
	evs, _ := json.Marshal(listEvents(t, c, "", ""))
	assertNoSecret(t, append(printed, log, string(nodeJSON), string(evs))...)
	for _, bad := range []string{"forbidden", "Forbidden"} {
		if strings.Contains(log, bad) {
			t.Errorf("the agent met RBAC refusals (%q) under manifests/:\n%s", bad, log)
		}
	}
	t.Logf("%s: agent scenarios took %v (%d log lines)", flavor, time.Since(start).Round(time.Millisecond), strings.Count(log, "\n"))
}

// Event reasons (agent.Reason*), spelled out: the test reads them as users
// do, from `kubectl get events`.
const (
	agentReasonInvalidConfig = "InvalidConfig"
	agentReasonImagesReady   = "ImagesReady"
	agentReasonPreloadFailed = "PreloadFailed"
	agentReasonConfigMissing = "ConfigMapMissing"
	agentReasonImagesPruned  = "ImagesPruned"
)
