package agent

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/workloads"
)

func TestSplitQualified(t *testing.T) {
	for _, tc := range []struct {
		in, ns, name string
		ok           bool
	}{
		{"regcred", "", "regcred", false},
		{"shop/regcred", "shop", "regcred", true},
	} {
		ns, name, ok := splitQualified(tc.in)
		if ok != tc.ok || (ok && (ns != tc.ns || name != tc.name)) {
			t.Errorf("splitQualified(%q) = %q, %q, %v; want %q, %q, %v", tc.in, ns, name, ok, tc.ns, tc.name, tc.ok)
		}
	}
}

// TestWorkloadPullSecrets: images of workloads.yaml with NAMESPACE/NAME
// pull secrets are pulled with the Secret of that namespace, read by one
// watch per Secret (never a list of the namespace); a Secret the API
// server refuses fails its image with the credentials reason naming what
// to grant; the watches stop when the list no longer names them.
func TestWorkloadPullSecrets(t *testing.T) {
	const (
		password     = "shop-registry-pw"
		shopImage    = "corp.example/shop/web:1.4"
		deniedImage  = "corp.example/shop/admin:2"
		missingImage = "corp.example/shop/cart:3"
	)
	var (
		mu   sync.Mutex
		seen = map[string]*runtimeapi.AuthConfig{}
	)
	setup := func(s *critest.Server) {
		s.Pull = func(_ context.Context, ref string, auth *runtimeapi.AuthConfig) error {
			mu.Lock()
			defer mu.Unlock()
			if auth == nil && ref != appImage {
				return critest.Errorf("failed to authorize: 401 Unauthorized")
			}
			seen[ref] = auth
			return nil
		}
	}
	// The API server lets the agent read shop/regcred and shop/cartcred
	// only, as a Role with resourceNames would, until admincred is granted
	// too.
	var granted struct {
		sync.Mutex
		names map[string]bool
	}
	granted.names = map[string]bool{"regcred": true, "cartcred": true}
	api := func(c *fake.Clientset) {
		deny := func(a k8stesting.Action) (bool, runtime.Object, error) {
			if a.GetNamespace() != "shop" {
				return false, nil, nil
			}
			var fs string
			switch a := a.(type) {
			case k8stesting.ListAction:
				fs = a.GetListRestrictions().Fields.String()
			case k8stesting.WatchAction:
				fs = a.GetWatchRestrictions().Fields.String()
			}
			granted.Lock()
			ok := granted.names[strings.TrimPrefix(fs, "metadata.name=")]
			granted.Unlock()
			if ok {
				return false, nil, nil
			}
			name := strings.TrimPrefix(fs, "metadata.name=")
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, name, nil)
		}
		c.PrependReactor("list", "secrets", deny)
		c.PrependWatchReactor("secrets", func(a k8stesting.Action) (bool, watch.Interface, error) {
			handled, _, err := deny(a)
			return handled, nil, err
		})
	}
	list := workloads.Encode(workloads.List{Images: []workloads.Image{
		{Image: deniedImage, Workloads: []string{"shop/deployment/admin"}, PullSecrets: []string{"shop/admincred"}},
		{Image: missingImage, Workloads: []string{"shop/deployment/cart"}, PullSecrets: []string{"shop/cartcred"}},
		{Image: shopImage, Workloads: []string{"shop/deployment/web"}, PullSecrets: []string{"shop/regcred"}},
	}})
	cm := newConfigMap(testConfig("  - image: " + appImage + "\n"))
	cm.Data[workloads.Key] = list
	regcred := dockerSecret("regcred", "corp.example", "shop-robot", password)
	regcred.Namespace = "shop"
	// A Secret of the same name in the agent's namespace is not the one.
	local := dockerSecret("regcred", "corp.example", "wrong", "wrong")
	admincred := dockerSecret("admincred", "corp.example", "admin", "admin-pw")
	admincred.Namespace = "shop"
	e := startAPI(t, setup, nil, api, newNode(nil), cm, regcred, local, admincred)

	st := e.waitStatus("one pulled with shop/regcred, two failed", func(st nodestatus.Status) bool {
		return st.Total == 4 && st.Present == 2 && len(st.Failed) == 2
	})
	reasons := map[string]string{}
	for _, f := range st.Failed {
		reasons[f.Image] = f.Reason
	}
	if r := reasons[missingImage]; r != "secret shop/cartcred not found" {
		t.Errorf("reason for %s: %q, want the missing Secret named", missingImage, r)
	}
	if r := reasons[deniedImage]; !strings.HasPrefix(r, "secret shop/admincred: forbidden to the agent") || !strings.Contains(r, "workloadPullSecrets: {shop: [admincred]}") {
		t.Errorf("reason for %s: %q, want the refused Secret and the grant", deniedImage, r)
	}
	mu.Lock()
	if a := seen[shopImage]; a == nil || a.Username != "shop-robot" || a.Password != password {
		t.Errorf("auth for %s = %v, want shop/regcred's credentials", shopImage, a)
	}
	if _, ok := seen[deniedImage]; ok {
		t.Errorf("%s pulled although its Secret is refused", deniedImage)
	}
	mu.Unlock()

	// The Secret appears: its watch wakes a sync that pulls the image.
	cartcred := dockerSecret("cartcred", "corp.example", "cart", password)
	cartcred.Namespace = "shop"
	if _, err := e.client.CoreV1().Secrets("shop").Create(context.Background(), cartcred, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus("the cart image present", func(st nodestatus.Status) bool {
		return st.Present == 3 && len(st.Failed) == 1 && st.Failed[0].Image == deniedImage
	})

	// Syncs go on (the refused image is retried on the config's backoff)
	// without a request in shop: the watches serve them, and the refused
	// Secret is asked for again only after deniedRetryMin.
	inShop := func() int {
		n := 0
		for _, a := range e.client.Actions() {
			if a.GetNamespace() == "shop" {
				n++
			}
		}
		return n
	}
	before := inShop()
	e.waitSyncs(20)
	if after := inShop(); after != before {
		t.Errorf("%d requests in shop during 20 syncs, want none", after-before)
	}

	// The grant follows: the refused Secret is asked for again once its
	// retry is due (shortened here), and the image pulled.
	sw := e.agent.creds.elsewhere
	sw.mu.Lock()
	if w := sw.watches["shop/admincred"]; w != nil {
		w.mu.Lock()
		w.retry = 50 * time.Millisecond
		w.mu.Unlock()
	}
	sw.mu.Unlock()
	granted.Lock()
	granted.names["admincred"] = true
	granted.Unlock()
	e.waitStatus("the admin image present once admincred is granted", func(st nodestatus.Status) bool {
		return st.Present == 4 && len(st.Failed) == 0
	})

	// Every read in shop names one Secret; no Get per sync.
	for _, a := range e.client.Actions() {
		if a.GetNamespace() != "shop" {
			continue
		}
		switch a := a.(type) {
		case k8stesting.ListAction:
			if !strings.HasPrefix(a.GetListRestrictions().Fields.String(), "metadata.name=") {
				t.Errorf("list of secrets in shop without a name: %v", a)
			}
		case k8stesting.WatchAction:
			if !strings.HasPrefix(a.GetWatchRestrictions().Fields.String(), "metadata.name=") {
				t.Errorf("watch of secrets in shop without a name: %v", a)
			}
		default:
			if a.GetVerb() != "create" { // the test's own
				t.Errorf("request in shop: %s %s", a.GetVerb(), a.GetResource().Resource)
			}
		}
	}

	// The list no longer names them: the watches stop.
	cm.Data[workloads.Key] = workloads.Encode(workloads.List{})
	if _, err := e.client.CoreV1().ConfigMaps(testNS).Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus("the derived images gone", func(st nodestatus.Status) bool { return st.Total == 1 && st.Ready() })
	eventually(t, "watches stopped", func() (bool, string) {
		w := e.agent.creds.elsewhere
		w.mu.Lock()
		defer w.mu.Unlock()
		var keys []string
		for k := range w.watches {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return len(keys) == 0, strings.Join(keys, ",")
	})

	for _, s := range []string{password, "admin-pw"} {
		if strings.Contains(e.logs.String(), s) {
			t.Errorf("a secret leaked into the agent's log")
		}
		for _, ns := range []string{testNS, metav1.NamespaceDefault} {
			for _, ev := range e.events(ns) {
				if strings.Contains(ev.Message, s) {
					t.Errorf("a secret leaked into Event %q", ev.Message)
				}
			}
		}
	}
}
