package agent

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// TestPendingWriteInterleaved: someone changes the Node between the
// agent's Node patch and its status patch. The status patch's echo then
// shows neither of the views the agent expects, but it holds our last
// request, so the write counts as delivered and the agent goes by the
// informer (and restores what was changed) instead of trusting its own
// view for pendingTTL.
func TestPendingWriteInterleaved(t *testing.T) {
	a := &Agent{taintKey: nodestatus.TaintNotReady}
	node := func(ready, status string, tainted bool, cond corev1.ConditionStatus) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{}, Annotations: map[string]string{}}}
		if ready != "" {
			n.Labels[nodestatus.LabelReady] = ready
		}
		if status != "" {
			n.Annotations[nodestatus.AnnotationStatus] = status
		}
		if tainted {
			n.Spec.Taints = []corev1.Taint{{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}}
		}
		if cond != "" {
			n.Status.Conditions = []corev1.NodeCondition{{Type: nodestatus.ConditionImagesReady, Status: cond, Reason: "R", Message: "m"}}
		}
		return n
	}
	before := node("", "", true, "")
	w := nodeWrite{meta: true, ready: "true", annotation: "s", removeTaint: true}
	c := nodestatus.Condition{Status: corev1.ConditionTrue, Reason: "R", Message: "m"}
	w.cond = &c
	v := viewOf(before, a.taintKey)
	p := &pendingWrite{view: w.after(v), cond: true}
	metaOnly := w
	metaOnly.cond = nil
	via := metaOnly.after(v)
	p.via = &via
	a.pending.Store(p)

	afterMeta := node("true", "s", false, "")
	if a.nodeChanged(before, afterMeta) || p.seen.Load() {
		t.Fatalf("the echo of the Node patch: changed or seen")
	}
	edited := node("", "", true, "") // someone removes our label and annotation and taints it again
	if !a.nodeChanged(afterMeta, edited) {
		t.Fatalf("someone's edit did not call for a sync")
	}
	afterStatus := node("", "", true, corev1.ConditionTrue)
	a.nodeChanged(edited, afterStatus)
	if !p.seen.Load() {
		t.Errorf("the status patch's echo, after someone's edit, does not deliver the write")
	}
}
