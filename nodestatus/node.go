package nodestatus

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/metadata"
)

// Resource is the Nodes, for the metadata client and informers.
var Resource = corev1.SchemeGroupVersion.WithResource("nodes")

// Node is what one Node object shows of its preload status; its JSON is a
// node of `preloader status -o json`.
type Node struct {
	Name string `json:"name"`
	// Ready is the preloader.io/ready label, or, without it, what the
	// status annotation says; ReadyUnknown for a node without the
	// annotation (no agent reports there) and ReadyInvalid for an
	// annotation that does not decode.
	Ready  string  `json:"ready"`
	Status *Status `json:"status,omitempty"`
	// Error is why the annotation does not decode.
	Error string `json:"error,omitempty"`
}

// Node.Ready besides the label's "true" and "false".
const (
	ReadyUnknown = "unknown"
	ReadyInvalid = "invalid"
)

// Reporting says whether an agent reports on this node.
func (n Node) Reporting() bool { return n.Status != nil || n.Error != "" }

// Read is what a Node's label and annotation say. An annotation that does
// not decode makes the node ReadyInvalid whatever its label says: what the
// label sums up can no longer be read.
func Read(m *metav1.ObjectMeta) Node {
	n := Node{Name: m.Name, Ready: ReadyUnknown}
	if raw, ok := m.Annotations[AnnotationStatus]; ok {
		st, err := Decode(raw)
		if err != nil {
			n.Error, n.Ready = err.Error(), ReadyInvalid
			return n
		}
		n.Status, n.Ready = &st, fmt.Sprint(st.Ready())
	}
	if l, ok := m.Labels[LabelReady]; ok {
		n.Ready = l
	}
	return n
}

// List reads every Node's label and annotation, sorted by name, with one
// metadata-only List: no specs or statuses, so it stays small with
// thousands of nodes.
func List(ctx context.Context, mc metadata.Interface) ([]Node, error) {
	list, err := mc.Resource(Resource).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	nodes := make([]Node, 0, len(list.Items))
	for i := range list.Items {
		nodes = append(nodes, Read(&list.Items[i].ObjectMeta))
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	return nodes, nil
}

// Verdict is nil when every node an agent reports on is ready, else an
// error naming the nodes that are not (with the kubelet's refusals, the
// one reason the table does not show at a glance), or saying that no node
// reports at all.
func Verdict(nodes []Node) error {
	var notReady []string
	reporting := 0
	for _, n := range nodes {
		if !n.Reporting() {
			continue
		}
		reporting++
		if n.Ready != "true" {
			notReady = append(notReady, notReadyName(n))
		}
	}
	if reporting == 0 {
		return fmt.Errorf("no node has a %s annotation (is the agent running?)", AnnotationStatus)
	}
	if len(notReady) > 0 {
		return fmt.Errorf("%d of %d nodes not ready: %s", len(notReady), reporting, NameList(notReady, 10))
	}
	return nil
}

func notReadyName(n Node) string {
	if st := n.Status; st != nil && st.Refused > 0 {
		return fmt.Sprintf("%s (kubelet policy %s refuses %d images to pods without credentials)", n.Name, st.Policy, st.Refused)
	}
	return n.Name
}

// NameList joins node names for a message: the first max of them and a
// count of the rest.
func NameList(names []string, max int) string {
	if len(names) <= max {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:max], ", "), len(names)-max)
}
