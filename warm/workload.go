package warm

import (
	"context"
	"fmt"
	"slices"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// Target is one workload's images and where its pods may run, for
// `warm --workload`.
type Target struct {
	Ref    workloads.Ref
	Images []Image
	// Placement is the workload's required placement; nil: every node.
	Placement []corev1.NodeSelectorTerm
	w         workloads.Workload
}

// NotCoveredError is a workload that no selection of the config covers,
// or one that starts no more pods: the user's to fix, by a selection or
// by warming its images with --image.
type NotCoveredError struct{ Err error }

func (e *NotCoveredError) Error() string { return e.Err.Error() }
func (e *NotCoveredError) Unwrap() error { return e.Err }

// TargetOf is the Target of a workload object (a Deployment,
// StatefulSet, DaemonSet, Job or CronJob).
func TargetOf(obj any) (Target, error) {
	w, ok := workloads.Of(obj)
	if !ok {
		return Target{}, fmt.Errorf("%T is not a workload kind the preloader covers", obj)
	}
	t := Target{Ref: w.Ref, Placement: workloads.Placement(w), w: w}
	for _, name := range workloads.Images(w) {
		t.Images = append(t.Images, Image{Ref: name, Norm: name})
	}
	return t, nil
}

// Covered says why the config's workloads section does not preload t's
// images, nil if it does.
func (t Target) Covered(cfg *config.Config, where string) error {
	switch {
	case t.w.Done:
		return &NotCoveredError{fmt.Errorf("%s has ended: it starts no more pods, and its images are not preloaded", t.Ref)}
	case t.w.Owned:
		return &NotCoveredError{fmt.Errorf("%s belongs to a CronJob: warm the CronJob (%s/cronjob/NAME), whose template covers it", t.Ref, t.Ref.Namespace)}
	case !workloads.Selected(cfg.Workloads, t.w):
		return &NotCoveredError{fmt.Errorf("%s is not covered by the workloads section of %s: add a selection for namespace %s and its labels (docs/operations/workloads.md), or warm its images with --image", t.Ref, where, t.Ref.Namespace)}
	case len(t.Images) == 0:
		return &NotCoveredError{fmt.Errorf("%s names no image", t.Ref)}
	}
	return nil
}

// runsOn says whether the workload's pods may run on node, as the kubelet
// admits them.
func (t Target) runsOn(node *corev1.Node) bool {
	return workloads.Matches(t.Placement, node)
}

// Where a node stands with one image.
const (
	StatePresent  = "present"
	StateMissing  = "missing"
	StateFailed   = "failed"
	StatePending  = "pending"  // the node has not reported a config listing the image yet
	StateExcluded = "excluded" // images.yaml's own entry does not place it on the node
	StateUnknown  = "unknown"  // the node's status does not decode
)

// NodeImage is one node's state of one image.
type NodeImage struct {
	Node, State, Reason string
}

// ImageReport is where one of the workload's images is.
type ImageReport struct {
	Image Image
	// Listed: the ConfigMap's current config lists it (images.yaml or the
	// controller's workloads.yaml).
	Listed bool
	Nodes  []NodeImage // the matching nodes that report, by name
}

// Report is where the workload's images are on the nodes that will run it.
type Report struct {
	Target Target
	Config string // the ConfigMap's current config hash
	// Silent are matching nodes without a status annotation: no agent
	// reports there.
	Silent []string
	// Reporting counts the matching nodes whose agent reports.
	Reporting int
	Images    []ImageReport
}

// Done says whether every matching node that reports has every image.
func (r Report) Done() bool {
	if len(r.Images) == 0 {
		return false
	}
	for _, ir := range r.Images {
		if !ir.Listed || len(ir.Nodes) == 0 {
			return false
		}
		for _, n := range ir.Nodes {
			if n.State != StatePresent {
				return false
			}
		}
	}
	return true
}

// Count is how many of ir's nodes are in state.
func (ir ImageReport) Count(state string) int {
	n := 0
	for _, ni := range ir.Nodes {
		if ni.State == state {
			n++
		}
	}
	return n
}

// locate decides the report: cfg is the ConfigMap's current config with
// hash; accept holds, per image, the config hashes seen listing it (a node
// that reports one of them reports on the image); nodes are the Nodes'
// metadata.
func (t Target) locate(cfg *config.Config, hash string, accept map[string]map[string]bool, nodes []*metav1.PartialObjectMetadata) Report {
	r := Report{Target: t, Config: hash}
	type matching struct {
		status nodestatus.Node
		plan   []config.Image
	}
	var ms []matching
	sorted := slices.Clone(nodes)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, m := range sorted {
		node := &corev1.Node{ObjectMeta: *m.ObjectMeta.DeepCopy()}
		if !t.runsOn(node) {
			continue
		}
		st := nodestatus.Read(&m.ObjectMeta)
		if !st.Reporting() {
			r.Silent = append(r.Silent, m.Name)
			continue
		}
		var plan []config.Image
		if cfg != nil {
			plan, _ = preload.Plan(cfg, node, preload.Sandbox{})
		}
		ms = append(ms, matching{st, plan})
	}
	r.Reporting = len(ms)
	for _, img := range t.Images {
		ir := ImageReport{Image: img, Listed: cfg != nil && slices.ContainsFunc(cfg.Images, func(c config.Image) bool { return c.Name == img.Norm })}
		for _, m := range ms {
			ir.Nodes = append(ir.Nodes, imageOn(img, ir.Listed, accept[img.Norm], m.status, m.plan))
		}
		r.Images = append(r.Images, ir)
	}
	return r
}

// imageOn is where one node stands with img.
func imageOn(img Image, listed bool, accepted map[string]bool, n nodestatus.Node, plan []config.Image) NodeImage {
	ni := NodeImage{Node: n.Name}
	st := n.Status
	switch {
	case st == nil:
		ni.State, ni.Reason = StateUnknown, n.Error
		return ni
	case !accepted[st.ConfigHash]:
		ni.State, ni.Reason = StatePending, fmt.Sprintf("reports config %s, not yet one that lists the image", st.ConfigHash)
		return ni
	case listed && !slices.ContainsFunc(plan, func(c config.Image) bool { return c.Name == img.Norm }):
		ni.State, ni.Reason = StateExcluded, "the images.yaml entry of the image does not place it on this node"
		return ni
	}
	for _, f := range st.Failed {
		if sameImage(f.Image, img.Norm) {
			ni.State, ni.Reason = StateFailed, f.Reason
			return ni
		}
	}
	for _, mi := range st.Missing {
		if sameImage(mi, img.Norm) {
			ni.State = StateMissing
			return ni
		}
	}
	ni.State = StatePresent
	return ni
}

// GetWorkload reads the workload ref names.
func GetWorkload(ctx context.Context, api kubeapi.Workloads, ref workloads.Ref) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	opts := metav1.GetOptions{}
	var (
		obj any
		err error
	)
	switch ref.Kind {
	case workloads.KindDeployment:
		obj, err = api.Deployments(ref.Namespace).Get(ctx, ref.Name, opts)
	case workloads.KindStatefulSet:
		obj, err = api.StatefulSets(ref.Namespace).Get(ctx, ref.Name, opts)
	case workloads.KindDaemonSet:
		obj, err = api.DaemonSets(ref.Namespace).Get(ctx, ref.Name, opts)
	case workloads.KindJob:
		obj, err = api.Jobs(ref.Namespace).Get(ctx, ref.Name, opts)
	case workloads.KindCronJob:
		obj, err = api.CronJobs(ref.Namespace).Get(ctx, ref.Name, opts)
	default:
		return nil, fmt.Errorf("workload %s: kind %q is not covered", ref, ref.Kind)
	}
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", ref, err)
	}
	return obj, nil
}

// Resolve reads the ConfigMap ns/name and the workload ref, and returns
// the workload's Target once the ConfigMap's config covers it: a
// NotCoveredError if it does not, a ConfigError if the config does not
// parse.
func Resolve(ctx context.Context, api interface {
	kubeapi.Interface
	kubeapi.Workloads
}, ns, name string, ref workloads.Ref) (Target, error) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	cm, err := api.ConfigMaps(ns).Get(rctx, name, metav1.GetOptions{})
	cancel()
	if err != nil {
		return Target{}, fmt.Errorf("ConfigMap %s/%s: %w", ns, name, err)
	}
	where := fmt.Sprintf("configmap %s/%s", ns, name)
	cfg, err := workloads.Config(where, ConfigKey, cm.Data)
	if err != nil {
		return Target{}, &ConfigError{err}
	}
	obj, err := GetWorkload(ctx, api, ref)
	if err != nil {
		return Target{}, err
	}
	t, err := TargetOf(obj)
	if err != nil {
		return Target{}, err
	}
	if err := t.Covered(cfg, where); err != nil {
		return Target{}, err
	}
	return t, nil
}
