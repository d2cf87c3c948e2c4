package warm

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload"
)

const (
	newImage = "corp.example/team/new:2.0"
	without  = "images:\n  - image: corp.example/team/app:1.0\n"
	with     = without + "  - image: " + newImage + "\n"
)

// The informer's first list can hand out the ConfigMap from before warm's
// own edit: that is not someone removing the image; a newer version
// without it is.
func TestWarmIgnoresConfigMapOlderThanItsEdit(t *testing.T) {
	cm := func(rv, data string) any {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "preloader-config", ResourceVersion: rv}, Data: map[string]string{ConfigKey: data}}
	}
	tests := []struct {
		name    string
		objs    []any
		removed bool
	}{
		{"stale list from before the edit", []any{cm("99", without)}, false},
		{"the edit itself", []any{cm("100", with)}, false},
		{"a later edit that took it out", []any{cm("101", without)}, true},
	}
	for _, tt := range tests {
		w := &Waiter{Name: "preloader-config", Image: Image{Ref: newImage, Norm: newImage}, Edit: Edit{ResourceVersion: "100"}, accept: map[string]bool{}}
		w.observeConfig(tt.objs)
		if w.removed != tt.removed {
			t.Errorf("%s: removed = %v, want %v", tt.name, w.removed, tt.removed)
		}
	}
}

// node is a Node's metadata as the agent leaves it: the ready label and the
// status annotation, or neither when st is nil.
func node(name string, st *nodestatus.Status) *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}, ObjectMeta: metav1.ObjectMeta{Name: name}}
	if st != nil {
		m.Labels = map[string]string{nodestatus.LabelReady: fmt.Sprint(st.Ready())}
		m.Annotations = map[string]string{nodestatus.AnnotationStatus: nodestatus.Encode(*st)}
	}
	return m
}

// reports is the status of a node whose agent synced config data.
func reports(data string, missing []string, failed ...nodestatus.FailedImage) *nodestatus.Status {
	return &nodestatus.Status{ConfigHash: preload.ConfigHash([]byte(data)), Total: 2, Present: 2 - len(missing) - len(failed), Missing: missing, Failed: failed}
}

func TestEvaluate(t *testing.T) {
	oldHash := preload.ConfigHash([]byte(without))
	tests := []struct {
		name, image  string
		st           *nodestatus.Status
		have         bool
		reason, fail string
	}{
		{"has it", newImage, reports(with, nil), true, "", ""},
		{"still on the config before", newImage, reports(without, nil), false, "reports config " + oldHash + ", not yet the one with the image", ""},
		{"missing", newImage, reports(with, []string{newImage}), false, "missing", ""},
		{"failed", newImage, reports(with, nil, nodestatus.FailedImage{Image: newImage, Reason: "registry unavailable"}), false, "failed: registry unavailable", "registry unavailable"},
		{"another image missing", newImage, reports(with, []string{"corp.example/team/app:1.0"}), true, "", ""},
		// The agent names images normalized, the user need not have.
		{"missing, named normalized", "nginx:1", reports(with, []string{"docker.io/library/nginx:1"}), false, "missing", ""},
		{"failed, named normalized", "nginx:1", reports(with, nil, nodestatus.FailedImage{Image: "docker.io/library/nginx:1", Reason: "denied"}), false, "failed: denied", "denied"},
	}
	for _, tt := range tests {
		w := &Waiter{Image: mustParse(t, tt.image), accept: map[string]bool{preload.ConfigHash([]byte(with)): true}}
		states := w.evaluate([]any{node("n1", tt.st)})
		want := nodeState{name: "n1", have: tt.have, reason: tt.reason, failed: tt.fail}
		if len(states) != 1 || states[0] != want {
			t.Errorf("%s: %+v, want %+v", tt.name, states, want)
		}
	}
}

// Only nodes with an agent count, one that cannot be read among them, in
// the order of their names.
func TestEvaluateCountsReportingNodes(t *testing.T) {
	broken := node("n0", nil)
	broken.Annotations = map[string]string{nodestatus.AnnotationStatus: "{not json"}
	w := &Waiter{Image: mustParse(t, newImage), accept: map[string]bool{preload.ConfigHash([]byte(with)): true}}
	states := w.evaluate([]any{node("n2", reports(with, nil)), node("n1", nil), broken})
	if len(states) != 2 || states[0].name != "n0" || states[0].have || !strings.HasPrefix(states[0].reason, nodestatus.AnnotationStatus+" annotation: ") ||
		states[1] != (nodeState{name: "n2", have: true}) {
		t.Errorf("evaluate: %+v, want n0 without the image for its annotation, then n2", states)
	}
}
