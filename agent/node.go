package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"

	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload"
)

// nodeView is the part of a Node the agent owns.
type nodeView struct {
	ready   string // the preloader.io/ready label, "" when absent
	status  string // the preloader.io/status annotation
	tainted bool   // has the taint the agent removes, whatever its effect
	// cond is the preloader.io/ImagesReady condition without its times;
	// zero when absent.
	cond nodestatus.Condition
}

// viewOf is what n shows of ours; taintKey is the taint the agent
// removes.
func viewOf(n *corev1.Node, taintKey string) nodeView {
	v := nodeView{ready: n.Labels[nodestatus.LabelReady], status: n.Annotations[nodestatus.AnnotationStatus]}
	for _, t := range n.Spec.Taints {
		if t.Key == taintKey {
			v.tainted = true
		}
	}
	if c, ok := nodestatus.ConditionFrom(n.Status.Conditions); ok {
		v.cond = nodestatus.Condition{Status: c.Status, Reason: c.Reason, Message: c.Message}
	}
	return v
}

// pendingWrite is the view our writes produce, and when. A write of both
// the Node and its status is two requests: via is the view between them,
// whose echo is ours too.
type pendingWrite struct {
	view nodeView
	via  *nodeView
	// cond says the write ends with the condition: a Node that shows it
	// shows our last request, even when someone changed the rest between
	// our two requests.
	cond bool
	at   time.Time
	// seen is set by the node handler when the informer delivers our write:
	// its store, updated before handlers run, holds it or something newer.
	seen atomic.Bool
}

// delivers says whether a Node that shows v holds our write, or
// something newer.
func (p *pendingWrite) delivers(v nodeView) bool {
	return v == p.view || p.cond && v.cond == p.view.cond
}

// pendingTTL bounds how long the sync loop trusts its own last write over
// the informer: long past any watch delay, short enough that a lost
// event cannot hide a change for long.
const pendingTTL = 30 * time.Second

// nodeChanged decides whether a Node update calls for a sync: a label that
// nodeSelectors may use changed, or someone else changed what we own. The
// echo of our own write is neither.
func (a *Agent) nodeChanged(old, cur *corev1.Node) bool {
	v := viewOf(cur, a.taintKey)
	if p := a.pending.Load(); p != nil {
		if p.delivers(v) {
			p.seen.Store(true)
		}
		if v == p.view || p.via != nil && v == *p.via {
			return !labelsEqual(old.Labels, cur.Labels)
		}
	}
	return !labelsEqual(old.Labels, cur.Labels) || v != viewOf(old, a.taintKey)
}

// labelsEqual compares labels other than our own, which a nodeSelector
// has no business using.
func labelsEqual(a, b map[string]string) bool {
	a, b = maps.Clone(a), maps.Clone(b)
	delete(a, nodestatus.LabelReady)
	delete(b, nodestatus.LabelReady)
	return maps.Equal(a, b)
}

// currentNode returns our Node from the informer, nil if it does not exist.
func (a *Agent) currentNode() *corev1.Node {
	obj, exists, err := a.nodes.GetStore().GetByKey(a.opts.NodeName)
	if err != nil || !exists {
		return nil
	}
	n, _ := obj.(*corev1.Node)
	return n
}

// ownView returns our Node and what it shows of ours: the informer's copy,
// unless our last write is younger than pendingTTL and the informer has
// not delivered it yet. Only the sync loop calls it (or, while the loop
// waits for a run, the run's progress in its stead), and only it clears
// pending, so a write cannot be forgotten between reading and comparing.
func (a *Agent) ownView() (*corev1.Node, nodeView) {
	p := a.pending.Load()
	seen := p != nil && p.seen.Load() // before reading the store, see pendingWrite.seen
	n := a.currentNode()
	if n == nil {
		return nil, nodeView{}
	}
	v := viewOf(n, a.taintKey)
	switch {
	case p == nil:
	case seen || p.delivers(v) || time.Since(p.at) >= pendingTTL:
		a.pending.CompareAndSwap(p, nil)
	default:
		return n, p.view
	}
	return n, v
}

// buildStatus summarises a run's results: the images of the config that
// apply here and, as in `preloader once`, the other images of the archives
// imported.
func buildStatus(hash string, results []preload.Result) nodestatus.Status {
	st := nodestatus.Status{ConfigHash: hash}
	for _, r := range results {
		switch {
		case r.Status == preload.StatusSkipped:
			continue
		case r.Present():
			st.Present++
		case r.Reason == failure.Canceled:
			// Not attempted to the end: missing, but nothing failed.
			st.Missing = append(st.Missing, r.Image)
		default:
			st.Failed = append(st.Failed, nodestatus.FailedImage{Image: r.Image, Reason: r.Reason.String()})
		}
		st.Total++
	}
	return st
}

// runtime is the container runtime the agent reaches, for its status.
func (a *Agent) runtime() *nodestatus.Runtime {
	f := a.opts.Store.Facts()
	return &nodestatus.Runtime{Name: f.Name, Version: f.Version}
}

// sameStatus compares statuses as the annotation shows them (where an
// empty list and none are the same), ignoring when they changed and the
// pulls in flight, which are progress, not a change; Encode stamps the
// format version on both.
func sameStatus(a, b nodestatus.Status) bool {
	a.Changed, b.Changed = time.Time{}, time.Time{}
	a.Pulling, b.Pulling = nil, nil
	return nodestatus.Encode(a) == nodestatus.Encode(b)
}

// nodeWrite is what a sync has to change on the Node: its metadata and
// taint (meta), its condition (cond), or both.
type nodeWrite struct {
	meta        bool
	status      nodestatus.Status
	annotation  string
	ready       string
	removeTaint bool
	wasReady    bool // the Node said ready before
	// cond, when not nil, is the condition to write; transition says its
	// status differs from the one the Node shows.
	cond       *nodestatus.Condition
	transition bool
}

// planWrite compares st with what the Node shows and returns the write
// that makes the Node show st, or false when it already does. Changed
// keeps its time unless the rest of the status differs, so that it says
// when something last happened, not when the agent last looked. A Node
// that still shows pulls in flight is written even when nothing else
// differs: a sync's status has none, and a node at rest must not show
// progress that ended. The condition is written only when its status,
// reason or message differ: it has no heartbeat.
func planWrite(v nodeView, st nodestatus.Status, now time.Time) (nodeWrite, bool) {
	prev, err := nodestatus.Decode(v.status)
	same := err == nil && sameStatus(prev, st)
	if same {
		st.Changed = prev.Changed
	} else {
		st.Changed = now.UTC().Truncate(time.Second)
	}
	w := nodeWrite{
		status:      st,
		annotation:  nodestatus.Encode(st),
		ready:       strconv.FormatBool(st.Ready()),
		removeTaint: st.Ready() && v.tainted,
		wasReady:    v.ready == "true",
	}
	w.meta = !same || len(prev.Pulling) > 0 || w.ready != v.ready || w.removeTaint
	w.setCond(v, nodestatus.ConditionOf(st))
	return w, w.meta || w.cond != nil
}

// setCond has w write c unless the Node shows it already.
func (w *nodeWrite) setCond(v nodeView, c nodestatus.Condition) {
	if c != v.cond {
		w.cond, w.transition = &c, c.Status != v.cond.Status
	}
}

// after is the view of the Node once w is written over v.
func (w nodeWrite) after(v nodeView) nodeView {
	if w.meta {
		v.ready, v.status, v.tainted = w.ready, w.annotation, v.tainted && !w.removeTaint
	}
	if w.cond != nil {
		v.cond = *w.cond
	}
	return v
}

// writeNode applies w over v, what ownView says node shows: one patch of
// the Node for label, annotation and, when ready, the node without its
// not-ready taint, then one of its status for the condition. Taints are a
// list that a merge patch replaces whole, so that part carries the
// resourceVersion it was computed from and is redone from a fresh read on
// conflict; the label and annotation are map keys and need no
// precondition, and conditions merge by type.
func (a *Agent) writeNode(ctx context.Context, node *corev1.Node, v nodeView, w nodeWrite) error {
	nodes := a.opts.Client.Nodes()
	// Expected before the first request: the watch may deliver the echo
	// before the response arrives.
	p := &pendingWrite{view: w.after(v), cond: w.cond != nil, at: time.Now()}
	if w.meta && w.cond != nil {
		metaOnly := w
		metaOnly.cond = nil
		via := metaOnly.after(v)
		p.via = &via
	}
	a.pending.Store(p)
	fail := func(what string, err error) error {
		a.pending.CompareAndSwap(p, nil)
		return fmt.Errorf("patch node %s%s: %w", node.Name, what, err)
	}
	if w.meta {
		fresh := false
		err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
			if fresh {
				n, err := nodes.Get(ctx, node.Name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				node = n
			}
			fresh = true
			body, err := json.Marshal(a.patchFor(node, w))
			if err != nil {
				return err
			}
			_, err = nodes.Patch(ctx, node.Name, types.MergePatchType, body, metav1.PatchOptions{FieldManager: "preloader"})
			return err
		})
		if err != nil {
			return fail("", err)
		}
	}
	if w.cond != nil {
		body, err := json.Marshal(conditionPatch(*w.cond, w.transition, time.Now()))
		if err == nil {
			_, err = nodes.Patch(ctx, node.Name, types.StrategicMergePatchType, body, metav1.PatchOptions{FieldManager: "preloader"}, "status")
		}
		if err != nil {
			return fail(" status", err)
		}
	}
	a.lastWriteAt.Store(time.Now().UnixNano())
	return nil
}

func (a *Agent) patchFor(node *corev1.Node, w nodeWrite) map[string]any {
	meta := map[string]any{
		"annotations": map[string]string{nodestatus.AnnotationStatus: w.annotation},
	}
	if w.ready != "" { // a progress write on a Node without the label leaves it absent
		meta["labels"] = map[string]string{nodestatus.LabelReady: w.ready}
	}
	patch := map[string]any{"metadata": meta}
	if !w.removeTaint {
		return patch
	}
	var kept []corev1.Taint
	for _, t := range node.Spec.Taints {
		if t.Key != a.taintKey {
			kept = append(kept, t)
		}
	}
	if len(kept) == len(node.Spec.Taints) {
		return patch // gone already
	}
	meta["resourceVersion"] = node.ResourceVersion
	patch["spec"] = map[string]any{"taints": kept} // nil: null, which deletes the field
	return patch
}

// conditionPatch is the strategic merge patch of the Node's status that
// sets the condition c, merged by type so that the kubelet's conditions
// stay as they are. lastHeartbeatTime is the time of this write (there is
// no other); lastTransitionTime moves only with a transition of the
// status, and is otherwise left as the Node has it.
func conditionPatch(c nodestatus.Condition, transition bool, now time.Time) map[string]any {
	at := metav1.NewTime(now.UTC().Truncate(time.Second))
	cond := map[string]any{
		"type":              nodestatus.ConditionImagesReady,
		"status":            c.Status,
		"reason":            c.Reason,
		"message":           c.Message,
		"lastHeartbeatTime": at,
	}
	if transition {
		cond["lastTransitionTime"] = at
	}
	return map[string]any{"status": map[string]any{"conditions": []any{cond}}}
}

// nodeEvent records an Event on our Node, by its UID when the informer
// knows it, else by its name as the kubelet does (`kubectl describe node`
// finds both).
func (a *Agent) nodeEvent(eventType, reason, msg string) {
	obj := &corev1.ObjectReference{Kind: "Node", Name: a.opts.NodeName, UID: types.UID(a.opts.NodeName)}
	if n := a.currentNode(); n != nil {
		obj.UID = n.UID
	}
	a.recorder.Event(obj, eventType, reason, eventMessage(msg))
}

// eventMessage keeps a message within the 1 KiB an Event note may hold.
func eventMessage(msg string) string {
	const limit = 1024
	if len(msg) <= limit {
		return msg
	}
	cut := limit - len("…")
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "…"
}
