package nodestatus

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	metadatafake "k8s.io/client-go/metadata/fake"
	clienttesting "k8s.io/client-go/testing"
)

// nodeMeta is a Node's metadata with the given label and annotation; ""
// leaves either out.
func nodeMeta(name, ready, annotation string) *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
	}
	if ready != "" {
		m.Labels[LabelReady] = ready
	}
	if annotation != "" {
		m.Annotations = map[string]string{AnnotationStatus: annotation}
	}
	return m
}

func TestRead(t *testing.T) {
	complete := `{"v":1,"configHash":"c1","present":2,"total":2,"changed":"2026-12-01T10:00:00Z"}`
	tests := []struct {
		name, label, annotation string
		ready                   string
		status, reporting       bool
		errWants                string // part of Error, "" for none
	}{
		{"valid annotation and label", "true", complete, "true", true, true, ""},
		{"valid annotation, no label", "", `{"configHash":"c1","present":1,"total":2,"missing":["a:1"],"changed":"2026-12-01T10:00:00Z"}`, "false", true, true, ""},
		// The label is what pods select on: it is what the node shows.
		{"label differs from the annotation", "false", complete, "false", true, true, ""},
		{"newer format version", "true", `{"v":7,"configHash":"c1","present":2,"total":2,"pruned":["old:1"],"changed":"2026-12-01T10:00:00Z"}`, "true", true, true, ""},
		{"corrupt annotation", "true", `{"configHash":`, ReadyInvalid, false, true, AnnotationStatus},
		{"no annotation", "", "", ReadyUnknown, false, false, ""},
		{"label without annotation", "true", "", "true", false, false, ""},
	}
	for _, tt := range tests {
		n := Read(&nodeMeta("node-a", tt.label, tt.annotation).ObjectMeta)
		if n.Name != "node-a" || n.Ready != tt.ready || (n.Status != nil) != tt.status || n.Reporting() != tt.reporting {
			t.Errorf("%s: %+v: want ready %q, status %v, reporting %v", tt.name, n, tt.ready, tt.status, tt.reporting)
		}
		if (tt.errWants == "") != (n.Error == "") || !strings.Contains(n.Error, tt.errWants) {
			t.Errorf("%s: Error = %q, want one with %q", tt.name, n.Error, tt.errWants)
		}
	}
	n := Read(&nodeMeta("node-a", "", `{"v":7,"configHash":"c1","present":2,"total":2,"changed":"2026-12-01T10:00:00Z"}`).ObjectMeta)
	if n.Status.Version != 7 || n.Status.ConfigHash != "c1" || !n.Status.Changed.Equal(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("newer format version: status %+v", n.Status)
	}
}

func TestList(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	mc := metadatafake.NewSimpleMetadataClient(scheme,
		nodeMeta("node-c", "", ""),
		nodeMeta("node-a", "true", `{"configHash":"c1","present":1,"total":1,"changed":"2026-12-01T10:00:00Z"}`),
		nodeMeta("node-b", "", "not json"),
	)
	nodes, err := List(context.Background(), mc)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range nodes {
		got = append(got, n.Name+"="+n.Ready)
	}
	if strings.Join(got, " ") != "node-a=true node-b=invalid node-c=unknown" {
		t.Errorf("List = %v, want every node, sorted by name", got)
	}

	mc.PrependReactor("list", "nodes", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(Resource.GroupResource(), "", nil)
	})
	if _, err := List(context.Background(), mc); !apierrors.IsForbidden(err) || !strings.HasPrefix(err.Error(), "list nodes: ") {
		t.Errorf("List when forbidden: %v, want the API error, wrapped", err)
	}
}

func TestVerdict(t *testing.T) {
	ready := &Status{ConfigHash: "c1", Present: 2, Total: 2}
	missing := &Status{ConfigHash: "c1", Present: 1, Total: 2, Missing: []string{"a:1"}}
	refused := &Status{ConfigHash: "c1", Present: 2, Total: 2, Policy: "AlwaysVerify", Refused: 3}
	node := func(name, ready string, st *Status, errMsg string) Node {
		return Node{Name: name, Ready: ready, Status: st, Error: errMsg}
	}
	many := make([]Node, 12)
	for i := range many {
		many[i] = node(string(rune('a'+i)), "false", missing, "")
	}
	tests := []struct {
		name  string
		nodes []Node
		want  string // "" for nil
	}{
		{"all ready", []Node{node("n1", "true", ready, ""), node("n2", "true", ready, "")}, ""},
		{"a node without an agent does not count", []Node{node("n1", "true", ready, ""), node("n2", ReadyUnknown, nil, "")}, ""},
		{"one not ready", []Node{node("n1", "true", ready, ""), node("n2", "false", missing, "")}, "1 of 2 nodes not ready: n2"},
		// The label says, even where the annotation would not.
		{"label false", []Node{node("n1", "false", ready, "")}, "1 of 1 nodes not ready: n1"},
		{"invalid annotation", []Node{node("n1", "true", ready, ""), node("n2", ReadyInvalid, nil, "broken")}, "1 of 2 nodes not ready: n2"},
		{"kubelet refuses", []Node{node("n1", "false", refused, "")}, "1 of 1 nodes not ready: n1 (kubelet policy AlwaysVerify refuses 3 images to pods without credentials)"},
		{"no node reports", []Node{node("n1", ReadyUnknown, nil, "")}, "no node has a preloader.io/status annotation (is the agent running?)"},
		{"no nodes", nil, "no node has a preloader.io/status annotation"},
		{"many not ready", many, "12 of 12 nodes not ready: a, b, c, d, e, f, g, h, i, j and 2 more"},
	}
	for _, tt := range tests {
		err := Verdict(tt.nodes)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v, want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}
