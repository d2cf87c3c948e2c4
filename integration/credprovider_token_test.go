package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestAgentCredentialProviderToken: the agent, under manifests/ and the
// Role rule the docs give (create serviceaccounts/token, resourceNames:
// builder), gives a provider with tokenAttributes a token of the
// ServiceAccount an image names, valid for the provider's audience, with
// the annotations it asks for; the plugin's credentials pull the image
// from a registry with auth into containerd. An image naming a
// ServiceAccount outside resourceNames fails with reason credentials. No
// token in the agent's log, Events or status.
func TestAgentCredentialProviderToken(t *testing.T) {
	const (
		nodeName = "worker-1"
		audience = "registry.example"
		annKey   = "registry.example/role"
	)
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	k.Kubectl(t, "apply", "-k", "../manifests")
	for _, name := range []string{"builder", "other"} {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: agentNS, Annotations: map[string]string{annKey: "puller-" + name}}}
		if _, err := c.CoreV1().ServiceAccounts(agentNS).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	allowTokenRequests(t, c, "builder")

	open := harness.StartRegistry(t, harness.RegistryOptions{})
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	priv := harness.PushTestImages(t, private, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1", OwnLayers: 1, LayerSize: 16 << 10},
		{Repo: "team/other", Tag: "1", OwnLayers: 1, LayerSize: 16 << 10},
	})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})
	rt, err := cri.Connect(ctx, ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()

	dir, bin, runs := t.TempDir(), t.TempDir(), t.TempDir()
	buildTestPlugin(t, filepath.Join(bin, "sa-login"))
	providers := writeFile(t, dir, "providers.yaml", fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: sa-login
    matchImages: [%q]
    defaultCacheDuration: 1h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    tokenAttributes:
      serviceAccountTokenAudience: %s
      requireServiceAccount: true
      requiredServiceAccountAnnotationKeys: [%s]
      cacheType: ServiceAccount
    env:
      - {name: PLUGIN_USER, value: %s}
      - {name: PLUGIN_PASS, value: %s}
      - {name: PLUGIN_RUNS, value: %s}
`, private.Host, audience, annKey, testUser, testPassword, runs))

	createNode(t, c, nodeName, nil, nil)
	hash := harness.SetImagesYAML(t, c, agentConfig(
		"  - image: "+priv[0].Ref+"\n    serviceAccount: builder\n",
		"  - image: "+priv[1].Ref+"\n    serviceAccount: other\n",
	))
	agent := harness.StartAgent(t, harness.AgentOptions{Bin: preloaderBin, Kubeconfig: k.KubeconfigForPodOn(t, agentNS, agentSA, nodeName),
		Node: nodeName, Containerd: ctrd,
		Args: []string{"--image-credential-provider-config", providers, "--image-credential-provider-bin-dir", bin}})
	node := func() harness.NodeView { return harness.ViewNode(c, nodeName) }
	agent.Eventually(t, time.Minute, "node status", func() string {
		v := node()
		if why := v.Shows(hash, 2, 3); why != "" {
			return why
		}
		want := "credential provider sa-login: no service account token: token of serviceaccount other for audience \"" + audience + "\": TokenRequest for serviceaccount " + agentNS + "/other: "
		if r := node().FailedReason(priv[1].Ref); !strings.HasPrefix(r, want) || !strings.Contains(r, "forbidden") {
			return fmt.Sprintf("reason for %s: %q, want %q… forbidden", priv[1].Ref, r, want)
		}
		return ""
	})
	if criImage(t, rt, priv[0].Ref) == "" {
		t.Errorf("CRI ImageStatus(%s): absent, want pulled with the plugin's credentials", priv[0].Ref)
	}

	// What the plugin received: the token of builder for the audience.
	entries, err := os.ReadDir(runs)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("plugin ran %d times, want once (for builder's image)", len(entries))
	}
	data, err := os.ReadFile(filepath.Join(runs, entries[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	var req struct {
		Image       string            `json:"image"`
		Token       string            `json:"serviceAccountToken"`
		Annotations map[string]string `json:"serviceAccountAnnotations"`
	}
	if err := json.Unmarshal(data, &req); err != nil {
		t.Fatal(err)
	}
	if want := private.Host + "/team/app"; req.Image != want || fmt.Sprint(req.Annotations) != fmt.Sprint(map[string]string{annKey: "puller-builder"}) {
		t.Errorf("plugin got image %q, annotations %v; want %s and builder's annotation", req.Image, req.Annotations, want)
	}
	review, err := c.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: req.Token, Audiences: []string{audience}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st := review.Status; !st.Authenticated || st.User.Username != "system:serviceaccount:"+agentNS+":builder" {
		t.Errorf("the plugin's token: %+v, want builder's for %s", st, audience)
	}

	var shown []string
	for _, ev := range listEvents(t, c, "", "") {
		shown = append(shown, ev.Message)
	}
	shown = append(shown, agent.Log(), node().String())
	for _, s := range shown {
		if strings.Contains(s, req.Token) || strings.Contains(s, testPassword) {
			t.Errorf("a token or the password shows: %.200s", s)
		}
	}
}

// allowTokenRequests gives the agent's ServiceAccount the Role rule the
// docs give for token providers: create serviceaccounts/token, only for
// the ServiceAccounts named.
func allowTokenRequests(t *testing.T, c kubernetes.Interface, serviceAccounts ...string) {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "preloader-sa-tokens", Namespace: agentNS}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}, ResourceNames: serviceAccounts},
	}}
	if _, err := c.RbacV1().Roles(agentNS).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "preloader-sa-tokens", Namespace: agentNS},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "preloader-sa-tokens"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: agentSA, Namespace: agentNS}}}
	if _, err := c.RbacV1().RoleBindings(agentNS).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
