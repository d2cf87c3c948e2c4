package agent

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/kubeapi"
)

// The tokens credential providers with tokenAttributes receive come from a
// real API server, as the agent's ServiceAccount with the RBAC rule the
// docs give (create serviceaccounts/token, resourceNames: the image's
// ServiceAccount): valid for the image's ServiceAccount and the provider's
// audience, 10 minutes, reused until 80% of their life; any other
// ServiceAccount is refused, and no error shows a token.
func TestSATokensAPIServer(t *testing.T) {
	k := harness.StartKube(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const ns, audience = "preloader", "registry.example"
	admin := k.Client
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	accounts := map[string]*corev1.ServiceAccount{}
	for _, sa := range []*corev1.ServiceAccount{
		{ObjectMeta: metav1.ObjectMeta{Name: "app", Annotations: map[string]string{"registry.example/role": "puller"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "other"}},
	} {
		got, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		accounts[got.Name] = got
		if err := indexer.Add(got); err != nil {
			t.Fatal(err)
		}
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "tokens"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}, ResourceNames: []string{"app"}},
	}}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "tokens"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "tokens"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "kube-preloader", Namespace: ns}}}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client, err := kubeapi.NewForConfig(k.ConfigFor(t, ns, "kube-preloader"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tokens := &saTokens{client: client, namespace: ns, serviceAccounts: corelisters.NewServiceAccountLister(indexer), now: func() time.Time { return now }}

	uid, annotations, err := tokens.ServiceAccount(ctx, "app")
	if err != nil || uid != string(accounts["app"].UID) || annotations["registry.example/role"] != "puller" {
		t.Fatalf("ServiceAccount(app) = %q, %v, %v; want UID %s and its annotation", uid, annotations, err, accounts["app"].UID)
	}
	tok, err := tokens.Token(ctx, "app", uid, audience)
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	review, err := admin.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: tok, Audiences: []string{audience}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st := review.Status; !st.Authenticated || st.User.Username != "system:serviceaccount:"+ns+":app" || strings.Join(st.Audiences, ",") != audience {
		t.Errorf("TokenReview = %+v, want app's token for %s", st, audience)
	}
	if life := tokenSeconds(t, tok); life != 600 {
		t.Errorf("token lives %d s, want 600", life)
	}

	if again, err := tokens.Token(ctx, "app", uid, audience); err != nil || again != tok {
		t.Errorf("second Token within its life: new token (%v), want the same", err)
	}
	now = now.Add(9 * time.Minute)
	if renewed, err := tokens.Token(ctx, "app", uid, audience); err != nil || renewed == tok {
		t.Errorf("Token after 80%% of its life: same token (%v), want a new one", err)
	}

	for _, tc := range []struct{ name, uid, want string }{
		{"other", string(accounts["other"].UID), "forbidden"},
		{"app", "0b5d3c1e-0000-4000-8000-000000000000", "does not match the UID of the service account"},
	} {
		_, err := tokens.Token(ctx, tc.name, tc.uid, "another.example")
		if err == nil || !strings.Contains(err.Error(), "TokenRequest for serviceaccount "+ns+"/"+tc.name) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Token(%s, uid %s) = %v, want an error naming the ServiceAccount, with %q", tc.name, tc.uid, err, tc.want)
			continue
		}
		t.Logf("Token(%s, uid %s): %v", tc.name, tc.uid, err)
		if strings.Contains(err.Error(), tok) {
			t.Errorf("error shows a token")
		}
	}
}

// tokenSeconds is a JWT's exp - iat.
func tokenSeconds(t *testing.T, jwt string) int64 {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("token is not a JWT (%d parts)", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct{ Exp, Iat int64 }
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return claims.Exp - claims.Iat
}
