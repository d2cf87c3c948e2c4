package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestKubeHarness proves the API server harness: admin access, service
// account tokens under RBAC, and an outage with Stop/Start.
func TestKubeHarness(t *testing.T) {
	k := harness.StartKube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "harness"}}
	if _, err := k.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", k.KubeconfigFor(t, "harness", "nobody"))
	if err != nil {
		t.Fatal(err)
	}
	sa := kubernetes.NewForConfigOrDie(cfg)
	_, err = sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("service account without RBAC lists nodes: err=%v, want Forbidden", err)
	}

	k.Stop()
	if _, err := k.Client.CoreV1().Namespaces().Get(ctx, "harness", metav1.GetOptions{}); err == nil {
		t.Fatal("API server answers after Stop")
	}
	k.Start()
	t.Logf("restart took %v", k.StartupTime)
	if _, err := k.Client.CoreV1().Namespaces().Get(ctx, "harness", metav1.GetOptions{}); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

// TestManifests applies manifests/ to a real API server (server-side dry
// run, then for real) and proves the agent's ServiceAccount can do what the
// agent does and nothing more.
func TestManifests(t *testing.T) {
	k := harness.StartKube(t)
	ctx := context.Background()
	c := k.Client
	// Server-side dry run validates namespaced objects against an existing
	// namespace only.
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-preloader"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out := k.Kubectl(t, "apply", "-k", "../manifests", "--dry-run=server")
	t.Logf("dry run:\n%s", out)
	for _, want := range []string{"daemonset.apps/preloader", "configmap/preloader-config", "role.rbac.authorization.k8s.io/preloader",
		"clusterrole.rbac.authorization.k8s.io/kube-preloader", "serviceaccount/preloader",
		"validatingadmissionpolicy.admissionregistration.k8s.io/kube-preloader-node-restriction",
		"validatingadmissionpolicybinding.admissionregistration.k8s.io/kube-preloader-node-restriction",
		"role.rbac.authorization.k8s.io/kube-preloader-node-events", "clusterrole.rbac.authorization.k8s.io/kube-preloader-status",
		"role.rbac.authorization.k8s.io/preloader-warm"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %s", want)
		}
	}
	k.Kubectl(t, "apply", "-k", "../manifests")

	ds, err := c.AppsV1().DaemonSets("kube-preloader").Get(ctx, "preloader", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := ds.Spec.Template.Spec
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists || pod.Tolerations[0].Key != "" {
		t.Errorf("tolerations %v: want one operator: Exists", pod.Tolerations)
	}
	sc := pod.Containers[0].SecurityContext
	if !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation || len(sc.Capabilities.Drop) != 1 || len(sc.Capabilities.Add) != 0 {
		t.Errorf("container securityContext %+v", sc)
	}

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}
	if _, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().ConfigMaps("kube-preloader").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "other"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "elsewhere"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	agent := clientFor(t, k.KubeconfigForPodOn(t, "kube-preloader", "preloader", "node-1"))
	cms := agent.CoreV1().ConfigMaps("kube-preloader")
	own := metav1.ListOptions{FieldSelector: "metadata.name=preloader-config"}
	watchOwn := own
	watchOwn.Watch = true

	allowed := map[string]func() error{
		"get own ConfigMap":                    func() error { _, err := cms.Get(ctx, "preloader-config", metav1.GetOptions{}); return err },
		"list own ConfigMap by field selector": func() error { _, err := cms.List(ctx, own); return err },
		"watch own ConfigMap by field selector": func() error {
			w, err := cms.Watch(ctx, watchOwn)
			if err == nil {
				w.Stop()
			}
			return err
		},
		"list Secrets here": func() error {
			_, err := agent.CoreV1().Secrets("kube-preloader").List(ctx, metav1.ListOptions{})
			return err
		},
		"get ServiceAccount here": func() error {
			_, err := agent.CoreV1().ServiceAccounts("kube-preloader").Get(ctx, "preloader", metav1.GetOptions{})
			return err
		},
		"list own Node by selector": func() error {
			_, err := agent.CoreV1().Nodes().List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=node-1"})
			return err
		},
		"patch Node condition (status)": func() error {
			_, err := agent.CoreV1().Nodes().Patch(ctx, "node-1", types.StrategicMergePatchType, []byte(imagesReady("preloader.io/ImagesReady")), metav1.PatchOptions{}, "status")
			return err
		},
		"patch Node label": func() error {
			_, err := agent.CoreV1().Nodes().Patch(ctx, "node-1", types.MergePatchType, []byte(`{"metadata":{"labels":{"preloader.io/ready":"true"}}}`), metav1.PatchOptions{})
			return err
		},
		"create Event on Node (default ns)": func() error {
			_, err := agent.CoreV1().Events("default").Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{GenerateName: "node-1."},
				InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "node-1"}, Reason: "Test", Message: "m", Type: "Normal"}, metav1.CreateOptions{})
			return err
		},
		"create Event on ConfigMap": func() error {
			_, err := agent.CoreV1().Events("kube-preloader").Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{GenerateName: "cfg."},
				InvolvedObject: corev1.ObjectReference{Kind: "ConfigMap", Namespace: "kube-preloader", Name: "preloader-config"}, Reason: "Test", Message: "m", Type: "Warning"}, metav1.CreateOptions{})
			return err
		},
	}
	denied := map[string]func() error{
		"create Event elsewhere": func() error {
			_, err := agent.CoreV1().Events("elsewhere").Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{GenerateName: "x."},
				InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "elsewhere", Name: "x"}, Reason: "Test", Message: "m", Type: "Normal"}, metav1.CreateOptions{})
			return err
		},
		"create events.k8s.io Event": func() error {
			_, err := agent.EventsV1().Events("kube-preloader").Create(ctx, &eventsv1.Event{ObjectMeta: metav1.ObjectMeta{GenerateName: "cfg-"},
				EventTime: metav1.NowMicro(), ReportingController: "preloader.io/agent", ReportingInstance: "node-1", Action: "Load", Reason: "Test", Type: "Normal",
				Regarding: corev1.ObjectReference{Kind: "ConfigMap", Namespace: "kube-preloader", Name: "preloader-config"}}, metav1.CreateOptions{})
			return err
		},
		"list all ConfigMaps": func() error { _, err := cms.List(ctx, metav1.ListOptions{}); return err },
		"get other ConfigMap": func() error { _, err := cms.Get(ctx, "other", metav1.GetOptions{}); return err },
		"update own ConfigMap": func() error {
			_, err := cms.Update(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "preloader-config"}}, metav1.UpdateOptions{})
			return err
		},
		"list Secrets elsewhere": func() error {
			_, err := agent.CoreV1().Secrets("elsewhere").List(ctx, metav1.ListOptions{})
			return err
		},
		"create Secret here": func() error {
			_, err := agent.CoreV1().Secrets("kube-preloader").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		},
		"update Node": func() error { _, err := agent.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); return err },
		"delete Node": func() error { return agent.CoreV1().Nodes().Delete(ctx, "node-1", metav1.DeleteOptions{}) },
		"list Pods":   func() error { _, err := agent.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err },
		"update Node status (PUT)": func() error {
			_, err := agent.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
			return err
		},
	}
	for name, f := range allowed {
		if err := f(); err != nil {
			t.Errorf("agent must be able to %s: %v", name, err)
		}
	}
	for name, f := range denied {
		if err := f(); !apierrors.IsForbidden(err) {
			t.Errorf("agent must not %s: got %v, want Forbidden", name, err)
		}
	}
	t.Run("node restriction", func(t *testing.T) { nodeRestriction(t, k) })
	t.Run("node restriction, taintKey", func(t *testing.T) { nodeRestrictionTaintKey(t, k) })
}
