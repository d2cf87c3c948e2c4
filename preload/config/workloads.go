package config

import (
	"fmt"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Workload selects workloads whose images the agents preload as if they
// were listed: `preloader controller` derives them into the ConfigMap.
type Workload struct {
	// Namespaces the selection covers; empty: every namespace.
	Namespaces []string
	// Selector matches the workloads' own labels (not their pods').
	Selector labels.Selector
	// UsePullSecrets copies the workloads' imagePullSecrets (and their
	// ServiceAccounts') into the derived list, for the agents to read in
	// the workloads' namespaces. Off by default: a preloaded image is
	// usable by every pod of the node unless the kubelet verifies
	// credentials.
	UsePullSecrets bool
	Line           int
}

// Covers says whether the selection covers a workload in namespace ns with
// the given labels.
func (w Workload) Covers(ns string, l map[string]string) bool {
	if len(w.Namespaces) > 0 && !slices.Contains(w.Namespaces, ns) {
		return false
	}
	return w.Selector.Matches(labels.Set(l))
}

const maxWorkloads = 100

// workloads reads workloads: [{namespaces, selector, usePullSecrets}].
func (p *parser) workloads(n *yaml.Node, path string) []Workload {
	if n.Kind != yaml.SequenceNode {
		p.typeError(n, path, "a list")
		return nil
	}
	if len(n.Content) > maxWorkloads {
		p.errorf(n, path, "%d entries, more than the limit of %d", len(n.Content), maxWorkloads)
		return nil
	}
	var out []Workload
	for i, item := range n.Content {
		path := fmt.Sprintf("%s[%d]", path, i)
		w := Workload{Line: item.Line, Selector: labels.Everything()}
		before := p.count()
		p.fields(deref(item), path, setters{
			"namespaces":     func(v *yaml.Node, path string) { w.Namespaces = p.namespaces(v, path) },
			"selector":       func(v *yaml.Node, path string) { p.labelSelector(v, path, &w.Selector) },
			"usePullSecrets": func(v *yaml.Node, path string) { p.boolean(v, path, &w.UsePullSecrets) },
		})
		if p.count() == before {
			out = append(out, w)
		}
	}
	return out
}

func (p *parser) namespaces(n *yaml.Node, path string) []string {
	if n.Kind != yaml.SequenceNode {
		p.typeError(n, path, "a list of namespace names")
		return nil
	}
	var names []string
	for i, item := range n.Content {
		path := fmt.Sprintf("%s[%d]", path, i)
		s, ok := p.str(deref(item), path)
		if !ok {
			continue
		}
		if errs := validation.IsDNS1123Label(s); len(errs) > 0 {
			p.errorf(item, path, "invalid namespace name %s: %s", quote(s), strings.Join(errs, "; "))
			continue
		}
		names = append(names, s)
	}
	return names
}

// labelSelector takes a selector as kubectl's -l takes it
// ("app.kubernetes.io/part-of=shop,tier in (web,api)").
func (p *parser) labelSelector(n *yaml.Node, path string, dst *labels.Selector) {
	s, ok := p.str(n, path)
	if !ok {
		return
	}
	sel, err := labels.Parse(s)
	if err != nil {
		p.errorf(n, path, "invalid label selector %s: %v", quote(s), err)
		return
	}
	*dst = sel
}
