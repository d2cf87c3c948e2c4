package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// setWorkloadsYAML writes the ConfigMap key the controller owns, as the
// controller would, and returns the config hash the agents will report.
func setWorkloadsYAML(t *testing.T, c kubernetes.Interface, l workloads.List) string {
	t.Helper()
	cms := c.CoreV1().ConfigMaps(agentNS)
	var hash string
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		cm, err := cms.Get(context.Background(), agentCM, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[workloads.Key] = workloads.Encode(l)
		updated, err := cms.Update(context.Background(), cm, metav1.UpdateOptions{})
		if err == nil {
			hash = workloads.Hash(updated.Data, "images.yaml")
		}
		return err
	})
	if err != nil {
		t.Fatalf("write %s: %v", workloads.Key, err)
	}
	return hash
}

// chartObjectsIn is what the chart renders with args into namespace ns.
func chartObjectsIn(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out := harness.MustHelm(t, "", append([]string{"template", "kube-preloader", chartDir, "-n", agentNS}, args...)...)
	var docs []string
	for _, d := range strings.Split(out, "\n---\n") {
		if strings.Contains(d, "\n  namespace: "+ns+"\n") {
			docs = append(docs, d)
		}
	}
	return strings.Join(docs, "\n---\n")
}

// TestWorkloadPullSecrets runs the agent under manifests/' RBAC with the
// chart's workloadPullSecrets grant of shop/regcred, against a real
// kube-apiserver, an authenticating registry and containerd: the image
// whose workloads.yaml entry names shop/regcred is pulled with it; the one
// naming shop/other, not granted, fails with the credentials reason naming
// the Secret and the grant, and the API server refuses the agent that
// Secret and the list of shop's Secrets.
func TestWorkloadPullSecrets(t *testing.T) {
	const nodeName = "worker-1"
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	k.Kubectl(t, "apply", "-k", "../manifests")
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	grant := chartObjectsIn(t, "shop", "--set", "workloadPullSecrets.shop={regcred}")
	if !strings.Contains(grant, "kind: Role\n") || !strings.Contains(grant, "kind: RoleBinding\n") {
		t.Fatalf("the chart renders no Role and RoleBinding in shop for workloadPullSecrets:\n%s", grant)
	}
	kubectlStdin(t, k, grant, "apply", "-f", "-")

	open := harness.StartRegistry(t, harness.RegistryOptions{})
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	priv := harness.PushTestImages(t, private, []harness.ImageSpec{
		{Repo: "shop/web", Tag: "1.4", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "shop/admin", Tag: "2.0", OwnLayers: 1, LayerSize: 32 << 10},
	})
	web, admin := priv[0].Ref, priv[1].Ref
	auth := harness.DockerConfigJSON(private.Host, testUser, testPassword)
	for _, name := range []string{"regcred", "other"} {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
			Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(auth)}}
		if _, err := c.CoreV1().Secrets("shop").Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})
	rt, err := cri.Connect(ctx, ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	createNode(t, c, nodeName, nil, nil)
	harness.SetImagesYAML(t, c, strings.Replace(agentConfig(), "images:\n", "images: []\n", 1))
	hash := setWorkloadsYAML(t, c, workloads.List{Images: []workloads.Image{
		{Image: admin, Workloads: []string{"shop/deployment/admin"}, PullSecrets: []string{"shop/other"}},
		{Image: web, Workloads: []string{"shop/deployment/web"}, PullSecrets: []string{"shop/regcred"}},
	}})

	agentKubeconfig := k.KubeconfigForPodOn(t, agentNS, agentSA, nodeName)
	agent := startAgent(t, agentKubeconfig, nodeName, ctrd)
	node := func() harness.NodeView { return harness.ViewNode(c, nodeName) }

	// pause, web; admin fails.
	agent.Eventually(t, time.Minute, "web pulled with shop/regcred, admin refused", func() string {
		v := node()
		if why := v.Shows(hash, 2, 3); why != "" {
			return why
		}
		r := v.FailedReason(admin)
		if !strings.HasPrefix(r, "secret shop/other: forbidden to the agent") || !strings.Contains(r, "workloadPullSecrets: {shop: [other]}") {
			return fmt.Sprintf("reason for %s: %q, want the refused Secret and the grant named", admin, r)
		}
		return ""
	})
	if criImage(t, rt, web) == "" {
		t.Errorf("CRI ImageStatus(%s): absent, want pulled with shop/regcred", web)
	}
	if criImage(t, rt, admin) != "" {
		t.Errorf("CRI ImageStatus(%s): present, want not pulled", admin)
	}

	// What the grant allows the agent's identity, as the API server decides.
	cfg, err := clientcmd.BuildConfigFromFlags("", agentKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	as := kubernetes.NewForConfigOrDie(cfg)
	if _, err := as.CoreV1().Secrets("shop").Get(ctx, "regcred", metav1.GetOptions{}); err != nil {
		t.Errorf("agent get shop/regcred: %v, want allowed by the grant", err)
	}
	for what, do := range map[string]func() error{
		"get shop/other": func() error {
			_, err := as.CoreV1().Secrets("shop").Get(ctx, "other", metav1.GetOptions{})
			return err
		},
		"list shop's Secrets": func() error {
			_, err := as.CoreV1().Secrets("shop").List(ctx, metav1.ListOptions{})
			return err
		},
		"list shop/other by name": func() error {
			_, err := as.CoreV1().Secrets("shop").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=other"})
			return err
		},
	} {
		if err := do(); err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("agent %s: %v, want RBAC's refusal", what, err)
		}
	}

	// The grant of shop/other follows: the agent tries the refused Secret
	// again and pulls.
	kubectlStdin(t, k, chartObjectsIn(t, "shop", "--set", "workloadPullSecrets.shop={regcred,other}"), "apply", "-f", "-")
	agent.Eventually(t, 2*time.Minute, "admin pulled once shop/other is granted", func() string { return node().Shows(hash, 3, 3) })

	// The Secrets' content is in none of what the agent shows.
	var shown []string
	for _, e := range listEvents(t, c, "", "") {
		shown = append(shown, e.Message)
	}
	shown = append(shown, node().String(), agent.Log())
	harness.AssertNoSecret(t, testUser, testPassword, shown...)
}
