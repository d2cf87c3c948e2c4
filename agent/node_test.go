package agent

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// The condition is written when its status, reason or message differ
// from what the Node shows, and only then: no heartbeat; its transition
// time moves only with its status.
func TestPlanWriteCondition(t *testing.T) {
	changed := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	now := changed.Add(time.Hour)
	ready := nodestatus.Status{ConfigHash: "c1", Present: 2, Total: 2, Changed: changed}
	missing := nodestatus.Status{ConfigHash: "c1", Present: 1, Total: 2, Missing: []string{"b:1"}, Changed: changed}
	failed := nodestatus.Status{ConfigHash: "c1", Present: 1, Total: 2, Failed: []nodestatus.FailedImage{{Image: "b:1", Reason: "registry error"}}, Changed: changed}
	shows := func(st nodestatus.Status, cond nodestatus.Condition) nodeView {
		return nodeView{ready: strconv.FormatBool(st.Ready()), status: nodestatus.Encode(st), cond: cond}
	}
	for _, tt := range []struct {
		name           string
		v              nodeView
		st             nodestatus.Status
		meta, cond     bool
		transition     bool
		status, reason string
	}{
		{"at rest, ready", shows(ready, nodestatus.ConditionOf(ready)), ready, false, false, false, "", ""},
		{"at rest, failing", shows(failed, nodestatus.ConditionOf(failed)), failed, false, false, false, "", ""},
		{"new Node: label, annotation and condition", nodeView{}, missing, true, true, true, "False", nodestatus.ReasonImagesMissing},
		{"becomes ready", shows(missing, nodestatus.ConditionOf(missing)), ready, true, true, true, "True", nodestatus.ReasonImagesPresent},
		{"missing to failed: reason and message, no transition", shows(missing, nodestatus.ConditionOf(missing)), failed, true, true, false, "False", nodestatus.ReasonImagesFailed},
		{"agent upgraded: the Node shows all but the condition", shows(ready, nodestatus.Condition{}), ready, false, true, true, "True", nodestatus.ReasonImagesPresent},
		{"someone edited the condition", shows(ready, nodestatus.Condition{Status: corev1.ConditionFalse, Reason: "Edited"}), ready, false, true, true, "True", nodestatus.ReasonImagesPresent},
		{"config changed, same counts: annotation only", shows(ready, nodestatus.ConditionOf(ready)), nodestatus.Status{ConfigHash: "c2", Present: 2, Total: 2}, true, false, false, "", ""},
		{"after no config: the condition moves on", shows(nodestatus.Status{}, nodestatus.Unconfigured("ns/cm", false)), ready, true, true, true, "True", nodestatus.ReasonImagesPresent},
	} {
		w, needed := planWrite(tt.v, tt.st, now)
		if w.meta != tt.meta || (w.cond != nil) != tt.cond || needed != (tt.meta || tt.cond) {
			t.Errorf("%s: meta %v, condition %v, needed %v; want %v, %v", tt.name, w.meta, w.cond, needed, tt.meta, tt.cond)
			continue
		}
		if w.cond == nil {
			continue
		}
		if string(w.cond.Status) != tt.status || w.cond.Reason != tt.reason || w.transition != tt.transition {
			t.Errorf("%s: condition %+v transition %v, want %s %s transition %v", tt.name, *w.cond, w.transition, tt.status, tt.reason, tt.transition)
		}
		if after := w.after(tt.v); after.cond != *w.cond || (w.meta && after.status != w.annotation) {
			t.Errorf("%s: view after the write %+v", tt.name, after)
		}
	}
}

// The patch merges one condition by type; lastTransitionTime is in it
// only on a transition, so that otherwise the Node's stays.
func TestConditionPatch(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 500, time.UTC)
	c := nodestatus.Condition{Status: corev1.ConditionTrue, Reason: nodestatus.ReasonImagesPresent, Message: "2/2 images present"}
	for _, transition := range []bool{true, false} {
		b, err := json.Marshal(conditionPatch(c, transition, now))
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			Status struct {
				Conditions []map[string]any `json:"conditions"`
			} `json:"status"`
		}
		if err := json.Unmarshal(b, &p); err != nil || len(p.Status.Conditions) != 1 {
			t.Fatalf("patch %s: %v", b, err)
		}
		got := p.Status.Conditions[0]
		if got["type"] != nodestatus.ConditionImagesReady || got["status"] != "True" || got["reason"] != c.Reason || got["message"] != c.Message ||
			got["lastHeartbeatTime"] != "2026-12-01T10:00:00Z" {
			t.Errorf("transition %v: patch %s", transition, b)
		}
		if _, ok := got["lastTransitionTime"]; ok != transition {
			t.Errorf("transition %v: patch %s, lastTransitionTime present: %v", transition, b, ok)
		}
		if strings.Contains(string(b), "metadata") || strings.Contains(string(b), "spec") {
			t.Errorf("a status patch with more than status: %s", b)
		}
	}
}

// The echoes of the agent's own write, the Node's and then its status's,
// wake no sync; anyone else's change of what the agent owns does.
func TestNodeChangedIgnoresOwnEchoes(t *testing.T) {
	a := &Agent{taintKey: nodestatus.TaintNotReady}
	node := func(ready string, cond *nodestatus.Condition, taints ...corev1.Taint) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"pool": "a"}}, Spec: corev1.NodeSpec{Taints: taints}}
		if ready != "" {
			n.Labels[nodestatus.LabelReady] = ready
		}
		if cond != nil {
			n.Status.Conditions = []corev1.NodeCondition{{Type: "Ready", Status: corev1.ConditionTrue},
				{Type: nodestatus.ConditionImagesReady, Status: cond.Status, Reason: cond.Reason, Message: cond.Message}}
		}
		return n
	}
	taint := corev1.Taint{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}
	notReady := nodestatus.ConditionOf(nodestatus.Status{Total: 1})
	ready := nodestatus.ConditionOf(nodestatus.Status{Present: 1, Total: 1})
	before := node("false", &notReady, taint)

	v := viewOf(before, a.taintKey)
	w := nodeWrite{meta: true, ready: "true", annotation: v.status, removeTaint: true, cond: &ready, transition: true}
	p := &pendingWrite{view: w.after(v), at: time.Now()}
	metaOnly := w
	metaOnly.cond = nil
	via := metaOnly.after(v)
	p.via = &via
	a.pending.Store(p)

	between := node("true", &notReady)
	after := node("true", &ready)
	if a.nodeChanged(before, between) {
		t.Error("the echo of the Node patch wakes a sync")
	}
	if p.seen.Load() {
		t.Error("the echo of the Node patch counts as the whole write seen")
	}
	if a.nodeChanged(between, after) {
		t.Error("the echo of the status patch wakes a sync")
	}
	if !p.seen.Load() {
		t.Error("the echo of the status patch is not recorded as seen")
	}
	edited := node("true", &nodestatus.Condition{Status: corev1.ConditionFalse, Reason: "Edited"})
	if !a.nodeChanged(after, edited) {
		t.Error("someone else's edit of the condition wakes no sync")
	}
	a.pending.Store(nil)
	kubelet := after.DeepCopy()
	kubelet.Status.Conditions[0].LastHeartbeatTime = metav1.Now()
	if a.nodeChanged(after, kubelet) {
		t.Error("the kubelet's own status update wakes a sync")
	}
}
