package workloads

import (
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"

	"github.com/kube-preloader/kube-preloader/preload/config"
)

// Images are the images a workload's pods need, normalized as images.yaml
// entries are: init containers, containers and image volumes. A reference
// that does not parse is left out; the API server would not have taken it
// for a container, and the pod could not start with it either.
func Images(w Workload) []string {
	if w.Template == nil {
		return nil
	}
	spec := &w.Template.Spec
	var refs []string
	for _, c := range spec.InitContainers {
		refs = append(refs, c.Image)
	}
	for _, c := range spec.Containers {
		refs = append(refs, c.Image)
	}
	for _, v := range spec.Volumes {
		if v.Image != nil {
			refs = append(refs, v.Image.Reference)
		}
	}
	var out []string
	for _, r := range refs {
		if name, err := config.NormalizeRef(r); err == nil && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

// Placement is where a workload's pods may run, as node selector terms
// (ORed, as in required node affinity): the pod template's nodeSelector
// joined to each term of its required node affinity, which is exactly what
// the kubelet admits a pod by. Nil means every node. What the scheduler
// weighs beyond that (preferred affinity, pod affinity, topology spread,
// taints, resources) is not evaluated: the image goes to every node the
// required placement allows.
func Placement(w Workload) []corev1.NodeSelectorTerm {
	if w.Template == nil {
		return nil
	}
	spec := &w.Template.Spec
	var selector []corev1.NodeSelectorRequirement
	for _, k := range sortedKeys(spec.NodeSelector) {
		selector = append(selector, corev1.NodeSelectorRequirement{Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{spec.NodeSelector[k]}})
	}
	var required []corev1.NodeSelectorTerm
	if a := spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		required = a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	}
	switch {
	case len(required) == 0 && len(selector) == 0:
		return nil
	case len(required) == 0:
		return []corev1.NodeSelectorTerm{{MatchExpressions: selector}}
	}
	terms := make([]corev1.NodeSelectorTerm, 0, len(required))
	for _, t := range required {
		t = *t.DeepCopy()
		t.MatchExpressions = append(t.MatchExpressions, selector...)
		terms = append(terms, t)
	}
	return terms
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

// Matches says whether node is within terms (ORed, as Placement returns
// them; none: every node), matched as the kubelet matches a pod's required
// node affinity when it admits the pod. An unknown node matches only no
// terms; terms that do not parse match no node, as they place no pod.
func Matches(terms []corev1.NodeSelectorTerm, node *corev1.Node) bool {
	if len(terms) == 0 {
		return true
	}
	if node == nil {
		return false
	}
	sel, err := nodeaffinity.NewNodeSelector(&corev1.NodeSelector{NodeSelectorTerms: terms})
	return err == nil && sel.Match(node)
}
