package warm

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// Locate reads the Nodes and the ConfigMap once and says where Target's
// images are.
func (w *Waiter) Locate(ctx context.Context) (Report, error) {
	w.acceptImage = map[string]map[string]bool{}
	var r Report
	err := w.watch(ctx, func(cms, nodes []any) (bool, error) {
		r = w.workloadReport(cms, nodes)
		return true, nil
	}, func(context.Context) error { return nil })
	return r, err
}

// waitWorkload waits until every node that will run Target and reports
// has each of its images, under a config that lists it.
func (w *Waiter) waitWorkload(ctx context.Context) error {
	w.acceptImage = map[string]map[string]bool{}
	w.lastProgress, w.reported = "", map[string]string{}
	var r Report
	return w.watch(ctx, func(cms, nodes []any) (bool, error) {
		r = w.workloadReport(cms, nodes)
		w.workloadProgress(r)
		return r.Done(), nil
	}, func(ctx context.Context) error { return w.workloadTimedOut(ctx, r) })
}

// workloadReport is Target's report from the informers' stores. The
// config hashes that list an image are collected as the ConfigMap
// changes: a node may still report an earlier one that listed it too.
func (w *Waiter) workloadReport(cms, nodes []any) Report {
	var cm *corev1.ConfigMap
	for _, o := range cms {
		if c, ok := o.(*corev1.ConfigMap); ok && c.Name == w.Name {
			cm = c
		}
	}
	if cm == nil {
		return w.Target.locate(nil, "", w.acceptImage, metas(nodes))
	}
	hash := workloads.Hash(cm.Data, ConfigKey)
	// An invalid config lists nothing here; the agents keep their last
	// good one, which may list the images: their nodes count as pending.
	cfg, err := workloads.Config(fmt.Sprintf("configmap %s/%s", w.Namespace, w.Name), ConfigKey, cm.Data)
	if err != nil {
		cfg = nil
	}
	if cfg != nil {
		for _, img := range w.Target.Images {
			if !slices.ContainsFunc(cfg.Images, func(c config.Image) bool { return c.Name == img.Norm }) {
				continue
			}
			if w.acceptImage[img.Norm] == nil {
				w.acceptImage[img.Norm] = map[string]bool{}
			}
			w.acceptImage[img.Norm][hash] = true
		}
	}
	return w.Target.locate(cfg, hash, w.acceptImage, metas(nodes))
}

func metas(objs []any) []*metav1.PartialObjectMetadata {
	var out []*metav1.PartialObjectMetadata
	for _, o := range objs {
		if m, ok := o.(*metav1.PartialObjectMetadata); ok {
			out = append(out, m)
		}
	}
	return out
}

// workloadProgress prints each image's line when it changes, and each
// node's failure once.
func (w *Waiter) workloadProgress(r Report) {
	var lines []string
	for _, ir := range r.Images {
		lines = append(lines, ir.summary(w.Namespace, w.Name))
		for _, n := range ir.Nodes {
			key := n.Node + " " + ir.Image.Norm
			if n.State == StateFailed && w.reported[key] != n.Reason {
				w.reported[key] = n.Reason
				fmt.Fprintf(w.Progress, "%s: %s failed: %s\n", n.Node, ir.Image.Ref, n.Reason)
			}
		}
	}
	if s := strings.Join(lines, "\n"); s != w.lastProgress {
		w.lastProgress = s
		fmt.Fprintln(w.Progress, s)
	}
}

// summary is one line of where ir is.
func (ir ImageReport) summary(ns, name string) string {
	switch {
	case !ir.Listed:
		return fmt.Sprintf("%s: not in ConfigMap %s/%s's list yet (preloader controller adds it after the workload changes)", ir.Image.Ref, ns, name)
	case len(ir.Nodes) == 0:
		return fmt.Sprintf("%s: 0/0 nodes that will run the workload report a %s annotation", ir.Image.Ref, nodestatus.AnnotationStatus)
	}
	return fmt.Sprintf("%s: %d/%d nodes have it", ir.Image.Ref, ir.Count(StatePresent), len(ir.Nodes))
}

// Print writes the report: per image, which nodes that will run the
// workload have it, lack it and why, and which have not yet reported the
// config that lists it.
func (r Report) Print(out io.Writer, ns, name string) {
	fmt.Fprintf(out, "%s: %d images, %d nodes will run it (%d with an agent reporting); ConfigMap %s/%s is at config %s\n",
		r.Target.Ref, len(r.Images), r.Reporting+len(r.Silent), r.Reporting, ns, name, r.Config)
	for _, ir := range r.Images {
		fmt.Fprintln(out, ir.summary(ns, name))
		if !ir.Listed {
			continue // every node is waiting for the list
		}
		byState := map[string][]string{}
		for _, n := range ir.Nodes {
			if n.State == StatePresent {
				continue
			}
			entry := n.Node
			if n.State == StateFailed || n.State == StateUnknown {
				entry += " (" + n.Reason + ")"
			}
			byState[n.State] = append(byState[n.State], entry)
		}
		for _, s := range []struct{ state, label string }{
			{StateMissing, "missing"},
			{StateFailed, "failed"},
			{StatePending, "not yet on a config that lists it"},
			{StateExcluded, "not placed by its images.yaml entry"},
			{StateUnknown, "status unreadable"},
		} {
			if names := byState[s.state]; len(names) > 0 {
				fmt.Fprintf(out, "  %s: %s\n", s.label, nodestatus.NameList(names, 20))
			}
		}
	}
	if len(r.Silent) > 0 {
		fmt.Fprintf(out, "nodes that will run it without an agent reporting: %s\n", nodestatus.NameList(r.Silent, 20))
	}
}

func (w *Waiter) workloadTimedOut(ctx context.Context, r Report) error {
	why := ended(ctx)
	var lacking []string
	for _, ir := range r.Images {
		switch {
		case !ir.Listed:
			lacking = append(lacking, ir.Image.Ref+": not in the list")
			continue
		case len(ir.Nodes) == 0:
			lacking = append(lacking, ir.Image.Ref+": no node that will run the workload reports")
			continue
		}
		var nodes []string
		for _, n := range ir.Nodes {
			if n.State != StatePresent {
				reason := n.State
				if n.Reason != "" {
					reason += ": " + n.Reason
				}
				nodes = append(nodes, n.Node+" ("+reason+")")
			}
		}
		if len(nodes) > 0 {
			lacking = append(lacking, fmt.Sprintf("%s: %d of %d nodes lack it: %s", ir.Image.Ref, len(nodes), len(ir.Nodes), nodestatus.NameList(nodes, 20)))
		}
	}
	return fmt.Errorf("%s: %s's images are not on the nodes that will run it: %s", why, w.Target.Ref, strings.Join(lacking, "; "))
}
