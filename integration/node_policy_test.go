package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// nodeWrite is one write the refusal table tries as the agent.
type nodeWrite struct {
	name  string
	as    string // "n1": a token bound to a pod on n1; "unbound": no node claim
	allow bool
	// why is what a refusal must say: the policy's message, or "RBAC".
	why string
	do  func(ctx context.Context, c kubernetes.Interface) error
}

// rbac is a refusal table row's why for a write RBAC refuses.
const rbac = "RBAC"

// nodeWrites are the agent's kinds of writes for the refusal table.
type nodeWrites struct {
	t *testing.T
}

// merge is a JSON merge patch of the Node, as the agent's own.
func (nodeWrites) merge(node, patch string) func(context.Context, kubernetes.Interface) error {
	return func(ctx context.Context, c kubernetes.Interface) error {
		_, err := c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		return err
	}
}

// status is a patch of the Node's status subresource, sent as is: not
// kubectl, which reads first.
func (nodeWrites) status(node string, pt types.PatchType, patch string) func(context.Context, kubernetes.Interface) error {
	return func(ctx context.Context, c kubernetes.Interface) error {
		_, err := c.CoreV1().Nodes().Patch(ctx, node, pt, []byte(patch), metav1.PatchOptions{}, "status")
		return err
	}
}

// taints sets the Node's taints whole, as the agent's own patch does.
func (w nodeWrites) taints(node string, ts ...corev1.Taint) func(context.Context, kubernetes.Interface) error {
	b, err := json.Marshal(map[string]any{"spec": map[string]any{"taints": ts}})
	if err != nil {
		w.t.Fatal(err)
	}
	return w.merge(node, string(b))
}

// imagesReady is a strategic merge patch of status that sets a condition
// of type typ, as the agent's own does for preloader.io/ImagesReady.
func imagesReady(typ string) string {
	return `{"status":{"conditions":[{"type":"` + typ + `","status":"True","reason":"ImagesPresent","message":"2/2 images present",` +
		`"lastHeartbeatTime":"2026-12-01T10:00:00Z","lastTransitionTime":"2026-12-01T10:00:00Z"}]}}`
}

// resetNodes makes n1 and n2 as a table row expects them: labels,
// annotations and taints of others and ours, and the status a kubelet
// would have written.
func resetNodes(t *testing.T, k *harness.Kube, taints []corev1.Taint) {
	t.Helper()
	ctx := context.Background()
	nodes := k.Client.CoreV1().Nodes()
	for _, name := range []string{"n1", "n2"} {
		n, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			n, err = nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
		n.Labels = map[string]string{"kubernetes.io/hostname": name, nodestatus.LabelReady: "false"}
		n.Annotations = map[string]string{"example.com/owner": "infra"}
		n.Spec.Taints = taints
		n.Spec.Unschedulable = false
		n.Finalizers = nil
		if n, err = nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		at := metav1.NewTime(time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC))
		n.Status = corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: at, LastTransitionTime: at},
				{Type: nodestatus.ConditionImagesReady, Status: corev1.ConditionFalse, Reason: nodestatus.ReasonImagesMissing, Message: "1/2 images present, 1 missing", LastHeartbeatTime: at, LastTransitionTime: at},
			},
			Capacity:    corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4")},
			Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4")},
		}
		if _, err := nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// nodeRestriction is the refusal table of docs/operations/security.md: with manifests/ applied
// (RBAC and node-policy.yaml) on a real kube-apiserver, the agent's
// ServiceAccount with a token bound to a pod on node n1 may write n1's
// preloader.io label, annotation, condition and taint removal, and nothing
// else of any Node; a token with no node claim may write no Node. It
// prints the table and fails on any row that went the other way or was
// refused for another reason than the one it names.
func nodeRestriction(t *testing.T, k *harness.Kube) {
	notReady := corev1.Taint{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}
	other := corev1.Taint{Key: "example.com/dedicated", Value: "infra", Effect: corev1.TaintEffectNoSchedule}
	nw := nodeWrites{t}
	merge, taints, viaStatus := nw.merge, nw.taints, nw.status
	const (
		msgClaim      = "this token has no node claim"
		msgOther      = "may not write Node"
		msgLabel      = "may change only the Node label preloader.io/ready"
		msgValue      = `preloader.io/ready is "true" or "false"`
		msgAnnotation = "may change only the Node annotation preloader.io/status"
		msgTaint      = "may only remove the Node taint preloader.io/not-ready"
		msgSpec       = "may not change the Node's spec"
		msgFinalizers = "may not change the Node's finalizers"
		msgStatusMeta = "may not change the Node's labels, annotations or taints through its status"
		msgCondition  = "may change only the Node condition preloader.io/ImagesReady"
		msgStatus     = "may change nothing of the Node's status but its condition preloader.io/ImagesReady"
	)
	smp := types.StrategicMergePatchType
	ready := `{"metadata":{"labels":{"preloader.io/ready":"true"}}}`
	status := `{"metadata":{"annotations":{"preloader.io/status":"{\"configHash\":\"x\"}"}}}`
	writes := []nodeWrite{
		{name: "set own label preloader.io/ready=true", as: "n1", allow: true, do: merge("n1", ready)},
		{name: "set own annotation preloader.io/status", as: "n1", allow: true, do: merge("n1", status)},
		{name: "remove own taint preloader.io/not-ready", as: "n1", allow: true, do: taints("n1", other)},
		{name: "the agent's patch: label, annotation and taint at once", as: "n1", allow: true,
			do: merge("n1", `{"metadata":{"labels":{"preloader.io/ready":"true"},"annotations":{"preloader.io/status":"{}"}},"spec":{"taints":[{"key":"example.com/dedicated","value":"infra","effect":"NoSchedule"}]}}`)},

		{name: "label another Node (n2) preloader.io/ready", as: "n1", why: msgOther, do: merge("n2", ready)},
		{name: "annotate another Node (n2)", as: "n1", why: msgOther, do: merge("n2", status)},
		{name: "remove another Node's (n2) preloader.io/not-ready taint", as: "n1", why: msgOther, do: taints("n2", other)},
		{name: "cordon another Node (n2)", as: "n1", why: msgOther, do: merge("n2", `{"spec":{"unschedulable":true}}`)},
		{name: "own Node: add label node-role.kubernetes.io/control-plane", as: "n1", why: msgLabel,
			do: merge("n1", `{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}`)},
		{name: "own Node: change label kubernetes.io/hostname", as: "n1", why: msgLabel, do: merge("n1", `{"metadata":{"labels":{"kubernetes.io/hostname":"elsewhere"}}}`)},
		{name: "own Node: remove label kubernetes.io/hostname", as: "n1", why: msgLabel, do: merge("n1", `{"metadata":{"labels":{"kubernetes.io/hostname":null}}}`)},
		{name: "own Node: remove label preloader.io/ready", as: "n1", why: msgLabel, do: merge("n1", `{"metadata":{"labels":{"preloader.io/ready":null}}}`)},
		{name: "own Node: label preloader.io/ready=maybe", as: "n1", why: msgValue, do: merge("n1", `{"metadata":{"labels":{"preloader.io/ready":"maybe"}}}`)},
		{name: "own Node: add another annotation", as: "n1", why: msgAnnotation, do: merge("n1", `{"metadata":{"annotations":{"example.com/x":"y"}}}`)},
		{name: "own Node: change another annotation", as: "n1", why: msgAnnotation, do: merge("n1", `{"metadata":{"annotations":{"example.com/owner":"me"}}}`)},
		{name: "own Node: remove another taint", as: "n1", why: msgTaint, do: taints("n1", notReady)},
		{name: "own Node: add a taint", as: "n1", why: msgTaint, do: taints("n1", notReady, other, corev1.Taint{Key: "example.com/evict", Effect: corev1.TaintEffectNoExecute})},
		{name: "own Node: add a second preloader.io/not-ready taint", as: "n1", why: msgTaint,
			do: taints("n1", notReady, other, corev1.Taint{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoExecute})},
		{name: "own Node: cordon (spec.unschedulable)", as: "n1", why: msgSpec, do: merge("n1", `{"spec":{"unschedulable":true}}`)},
		{name: "own Node: set spec.providerID", as: "n1", why: msgSpec, do: merge("n1", `{"spec":{"providerID":"fake://n1"}}`)},
		{name: "own Node: set spec.podCIDR", as: "n1", why: msgSpec, do: merge("n1", `{"spec":{"podCIDR":"10.0.0.0/24","podCIDRs":["10.0.0.0/24"]}}`)},
		{name: "own Node: add a finalizer", as: "n1", why: msgFinalizers, do: merge("n1", `{"metadata":{"finalizers":["example.com/keep"]}}`)},
		{name: "set own condition preloader.io/ImagesReady (status, strategic merge)", as: "n1", allow: true, do: viaStatus("n1", smp, imagesReady(nodestatus.ConditionImagesReady))},
		{name: "another Node's (n2) condition preloader.io/ImagesReady", as: "n1", why: msgOther, do: viaStatus("n2", smp, imagesReady(nodestatus.ConditionImagesReady))},
		{name: "own Node via status: condition Ready", as: "n1", why: msgCondition, do: viaStatus("n1", smp, imagesReady(string(corev1.NodeReady)))},
		{name: "own Node via status: a new condition example.com/Other", as: "n1", why: msgCondition, do: viaStatus("n1", smp, imagesReady("example.com/Other"))},
		{name: "own Node via status: all conditions replaced (merge patch)", as: "n1", why: msgCondition,
			do: viaStatus("n1", types.MergePatchType, `{"status":{"conditions":[{"type":"Ready","status":"False"}]}}`)},
		{name: "own Node via status: capacity", as: "n1", why: msgStatus, do: viaStatus("n1", smp, `{"status":{"capacity":{"cpu":"64"}}}`)},
		{name: "own Node via status: allocatable, with the condition", as: "n1", why: msgStatus,
			do: viaStatus("n1", smp, `{"status":{"allocatable":{"cpu":"64"},"conditions":[{"type":"preloader.io/ImagesReady","status":"True"}]}}`)},
		{name: "own Node via status: addresses", as: "n1", why: msgStatus, do: viaStatus("n1", smp, `{"status":{"addresses":[{"type":"InternalIP","address":"10.9.9.9"}]}}`)},
		{name: "own Node via status: nodeInfo", as: "n1", why: msgStatus, do: viaStatus("n1", smp, `{"status":{"nodeInfo":{"kubeletVersion":"v9.9.9"}}}`)},
		{name: "own Node via status: images", as: "n1", why: msgStatus, do: viaStatus("n1", smp, `{"status":{"images":[{"names":["x:1"],"sizeBytes":1}]}}`)},
		{name: "own Node via status: label node-role.kubernetes.io/control-plane", as: "n1", why: msgStatusMeta,
			do: viaStatus("n1", smp, `{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}`)},
		{name: "own Node via status: label preloader.io/ready", as: "n1", why: msgStatusMeta, do: viaStatus("n1", smp, ready)},
		{name: "own Node via status: annotation", as: "n1", why: msgStatusMeta, do: viaStatus("n1", smp, `{"metadata":{"annotations":{"example.com/x":"y"}}}`)},
		{name: "own Node via status: a finalizer", as: "n1", why: msgFinalizers, do: viaStatus("n1", smp, `{"metadata":{"finalizers":["example.com/keep"]}}`)},
		{name: "update own Node's status (PUT)", as: "n1", why: rbac, do: func(ctx context.Context, c kubernetes.Interface) error {
			n, err := k.Client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
			if err == nil {
				_, err = c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			}
			return err
		}},
		{name: "update own Node (PUT, unchanged)", as: "n1", why: rbac, do: func(ctx context.Context, c kubernetes.Interface) error {
			n, err := k.Client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
			if err == nil {
				_, err = c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
			}
			return err
		}},
		{name: "delete own Node", as: "n1", why: rbac, do: func(ctx context.Context, c kubernetes.Interface) error {
			return c.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{})
		}},
		{name: "create a Node", as: "n1", why: rbac, do: func(ctx context.Context, c kubernetes.Interface) error {
			_, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n3"}}, metav1.CreateOptions{})
			return err
		}},
		{name: "no node claim: label a Node preloader.io/ready", as: "unbound", why: msgClaim, do: merge("n1", ready)},
		{name: "no node claim: remove a preloader.io/not-ready taint", as: "unbound", why: msgClaim, do: taints("n1", other)},
		{name: "no node claim: set condition preloader.io/ImagesReady", as: "unbound", why: msgClaim, do: viaStatus("n1", smp, imagesReady(nodestatus.ConditionImagesReady))},
	}
	runNodeWrites(t, k, writes, []corev1.Taint{notReady, other})
}

// nodeRestrictionTaintKey is the refusal table's rows for a taint key of
// the user's: with the chart's node policy rendered with another taintKey,
// the agent may remove that taint, and preloader.io/not-ready is then a
// taint like any other.
func nodeRestrictionTaintKey(t *testing.T, k *harness.Kube) {
	const key = "startup-taint.cluster-autoscaler.kubernetes.io/preloader"
	applyNodePolicy(t, k, key)

	startup := corev1.Taint{Key: key, Value: "true", Effect: corev1.TaintEffectNoSchedule}
	notReady := corev1.Taint{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}
	other := corev1.Taint{Key: "example.com/dedicated", Value: "infra", Effect: corev1.TaintEffectNoSchedule}
	taints := []corev1.Taint{startup, notReady, other}
	nw := nodeWrites{t}
	removeStartup := nw.taints("n1", notReady, other)
	// The API server compiles a changed policy asynchronously: wait until
	// the new key is allowed before judging the rows.
	agent := clientFor(t, k.KubeconfigForPodOn(t, harness.AgentNamespace, harness.AgentServiceAccount, "n1"))
	deadline := time.Now().Add(30 * time.Second)
	for {
		resetNodes(t, k, taints)
		err := removeStartup(context.Background(), agent)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the policy rendered with taintKey %s still refuses its removal: %v", key, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	msgTaint := "may only remove the Node taint " + key
	runNodeWrites(t, k, []nodeWrite{
		{name: "taintKey " + key + ": remove own taint " + key, as: "n1", allow: true, do: removeStartup},
		{name: "taintKey " + key + ": remove own taint preloader.io/not-ready", as: "n1", why: msgTaint, do: nw.taints("n1", startup, other)},
		{name: "taintKey " + key + ": remove both", as: "n1", why: msgTaint, do: nw.taints("n1", other)},
		{name: "taintKey " + key + ": remove another Node's (n2) " + key, as: "n1", why: "may not write Node", do: nw.taints("n2", notReady, other)},
	}, taints)
}

// applyNodePolicy applies the chart's node policy rendered with taintKey
// key over the one manifests/ holds, as `helm upgrade --set taintKey=KEY`
// would. The API server takes a changed policy into account a moment
// later.
func applyNodePolicy(t *testing.T, k *harness.Kube, key string) {
	t.Helper()
	policy := harness.MustHelm(t, "", "template", "kube-preloader", chartDir, "-n", harness.AgentNamespace,
		"--set", "taintKey="+key, "--show-only", "templates/node-policy.yaml")
	kubectlStdin(t, k, policy, "apply", "-f", "-")
}

// runNodeWrites tries each write on Nodes reset to taints, prints the
// table and fails on any row that went the other way or was refused for
// another reason than the one it names.
func runNodeWrites(t *testing.T, k *harness.Kube, writes []nodeWrite, taints []corev1.Taint) {
	t.Helper()
	ctx := context.Background()
	clients := map[string]kubernetes.Interface{
		"n1":      clientFor(t, k.KubeconfigForPodOn(t, harness.AgentNamespace, harness.AgentServiceAccount, "n1")),
		"unbound": clientFor(t, k.KubeconfigFor(t, harness.AgentNamespace, harness.AgentServiceAccount)),
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WRITE\tTOKEN\tWANT\tGOT")
	for _, w := range writes {
		resetNodes(t, k, taints)
		err := w.do(ctx, clients[w.as])
		got := "allowed"
		if err != nil {
			got = "refused: " + refusal(err)
		}
		want := "allowed"
		if !w.allow {
			want = "refused (" + w.why + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", w.name, w.as, want, got)
		switch {
		case w.allow && err != nil:
			t.Errorf("%s: refused, want allowed: %v", w.name, err)
		case !w.allow && err == nil:
			t.Errorf("%s: allowed, want refused (%s)", w.name, w.why)
		case !w.allow && !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err):
			t.Errorf("%s: %v, want Forbidden", w.name, err)
		case !w.allow && w.why == rbac && !strings.Contains(err.Error(), "cannot "):
			t.Errorf("%s: %v, want RBAC's refusal", w.name, err)
		case !w.allow && w.why != rbac && !strings.Contains(err.Error(), w.why):
			t.Errorf("%s: %v, want the policy's message %q", w.name, err, w.why)
		}
	}
	tw.Flush()
}

// refusal is what a refusal says, without the API server's preamble.
func refusal(err error) string {
	msg := err.Error()
	for _, sep := range []string{"denied request: ", "is forbidden: "} {
		if _, rest, ok := strings.Cut(msg, sep); ok {
			return rest
		}
	}
	return msg
}

func clientFor(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

// TestNodePolicyCoversNodeFields keeps manifests/node-policy.yaml whole as
// the Node type grows: every field of NodeSpec, NodeStatus and ObjectMeta
// is either compared by the policy, one of the four it lets the agent
// change, or one the API server sets itself.
func TestNodePolicyCoversNodeFields(t *testing.T) {
	policy, err := os.ReadFile("../manifests/base/node-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	serverSet := map[string]bool{"name": true, "generateName": true, "namespace": true, "selfLink": true, "uid": true,
		"resourceVersion": true, "generation": true, "creationTimestamp": true, "deletionTimestamp": true,
		"deletionGracePeriodSeconds": true, "managedFields": true}
	check := func(typ reflect.Type, prefix string, handled map[string]bool) {
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" || handled[name] || serverSet[name] {
				continue
			}
			if !strings.Contains(string(policy), prefix+".?"+name) {
				t.Errorf("node-policy.yaml does not compare %s.%s (a field of %s): a change of it would pass", prefix, name, typ)
			}
		}
	}
	check(reflect.TypeFor[corev1.NodeSpec](), "spec", map[string]bool{"taints": true})
	check(reflect.TypeFor[corev1.NodeStatus](), "status", map[string]bool{"conditions": true})
	check(reflect.TypeFor[metav1.ObjectMeta](), "metadata", map[string]bool{"labels": true, "annotations": true})
}
