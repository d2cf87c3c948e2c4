package warm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/cache"

	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// Waiter watches Nodes' status annotations (and the ConfigMap, which others
// may edit meanwhile) until every node running the agent reports the image
// present under a config that lists it.
type Waiter struct {
	Client          kubeapi.Interface  // for the ConfigMap
	Metadata        metadata.Interface // for the Nodes
	Namespace, Name string             // the ConfigMap's
	Image           Image
	Edit            Edit      // what Add returned
	Progress        io.Writer // where counts and nodes' failures are printed
	// Target, if set, is a workload whose images to wait for instead of
	// Image; Edit is then unused.
	Target *Target

	accept  map[string]bool // config hashes that list the image
	removed bool            // a later config no longer lists it
	// lastProgress is the count line last printed, reported the failure
	// reason last printed for each node: each is printed when it changes.
	lastProgress string
	reported     map[string]string
	// acceptImage is, per image of Target, the config hashes that list it.
	acceptImage map[string]map[string]bool
}

// UnreachableError is Wait ending before it could read the Nodes and the
// ConfigMap: the API server could not be used, where Wait's other errors
// say that nodes do not have the image, or will not.
type UnreachableError struct{ Err error }

func (e *UnreachableError) Error() string { return e.Err.Error() }
func (e *UnreachableError) Unwrap() error { return e.Err }

// nodeState is where one node stands with the image.
type nodeState struct {
	name   string
	have   bool
	reason string // why not, for the timeout message
	failed string // the agent's failure reason, if any
}

// Wait returns nil once every node that reports has the image, and an
// error when ctx ends first or someone takes the image out of the config.
// With Target set, it waits instead for the workload's images on the
// nodes that will run it (WaitWorkload).
func (w *Waiter) Wait(ctx context.Context) error {
	if w.Target != nil {
		return w.waitWorkload(ctx)
	}
	w.accept = map[string]bool{w.Edit.Hash: true}
	w.removed, w.lastProgress, w.reported = false, "", map[string]string{}
	var states []nodeState
	return w.watch(ctx, func(cms, nodes []any) (bool, error) {
		w.observeConfig(cms)
		if w.removed {
			return false, fmt.Errorf("%s was removed from %s/%s while waiting", w.Image.Ref, w.Namespace, w.Name)
		}
		states = w.evaluate(nodes)
		return w.progress(states), nil
	}, func(ctx context.Context) error { return w.timedOut(ctx, states) })
}

// watch runs the informers and calls step with what they hold, at first
// and after every change, until it is done or fails; when ctx ends first,
// timedOut says what was still lacking.
func (w *Waiter) watch(ctx context.Context, step func(cms, nodes []any) (bool, error), timedOut func(context.Context) error) error {
	changed := make(chan struct{}, 1)
	nodes, cms, err := w.informers(changed)
	if err != nil {
		return err
	}
	ictx, stop := context.WithCancel(context.Background())
	defer stop()
	go nodes.RunWithContext(ictx)
	go cms.RunWithContext(ictx)
	if err := w.synced(ctx, nodes, cms); err != nil {
		return err
	}
	for {
		done, err := step(cms.GetStore().List(), nodes.GetStore().List())
		if done || err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return timedOut(ctx)
		}
	}
}

// synced waits for the informers' first lists. Their events do not tell:
// the last one can reach the handler before its informer counts as synced,
// and nothing need follow it.
func (w *Waiter) synced(ctx context.Context, informers ...cache.SharedIndexInformer) error {
	for _, inf := range informers {
		select {
		case <-inf.HasSyncedChecker().Done():
		case <-ctx.Done():
			return &UnreachableError{fmt.Errorf("%s before Nodes and ConfigMap %s/%s could be read", ended(ctx), w.Namespace, w.Name)}
		}
	}
	return nil
}

// informers watch the Nodes' metadata and the one ConfigMap; every event
// signals changed, where a pending signal covers the next ones too.
func (w *Waiter) informers(changed chan<- struct{}) (nodes, cms cache.SharedIndexInformer, err error) {
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	nodes = kubeapi.NewInformer(w.Metadata, w.Metadata.Resource(nodestatus.Resource), &metav1.PartialObjectMetadata{}, nil)
	cms = kubeapi.NewInformer(w.Client, w.Client.ConfigMaps(w.Namespace), &corev1.ConfigMap{}, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", w.Name).String()
	})
	for _, inf := range []cache.SharedIndexInformer{nodes, cms} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, nil, err
		}
	}
	return nodes, cms, nil
}

// observeConfig accepts the hash of the current images.yaml while it still
// lists the image: a node that reports under a later config also counts.
func (w *Waiter) observeConfig(objs []any) {
	for _, o := range objs {
		cm, ok := o.(*corev1.ConfigMap)
		if !ok || cm.Name != w.Name {
			continue
		}
		// The informer's first list may still hand out the ConfigMap from
		// before Add's edit, which is not a removal.
		if c, err := resourceversion.CompareResourceVersion(cm.ResourceVersion, w.Edit.ResourceVersion); err == nil && c < 0 {
			continue // older than our edit: the watch will bring it
		}
		data, ok := cm.Data[ConfigKey]
		if !ok {
			continue
		}
		h := workloads.Hash(cm.Data, ConfigKey)
		if w.accept[h] {
			continue
		}
		if Lists(data, w.Image) {
			w.accept[h] = true
		} else if _, _, err := AddImage(data, w.Image); err == nil {
			// Valid YAML without the image: someone took it out.
			w.removed = true
		}
	}
}

// evaluate decides, for every node that has a status annotation, whether
// it has the image.
func (w *Waiter) evaluate(objs []any) []nodeState {
	var states []nodeState
	for _, o := range objs {
		m, ok := o.(*metav1.PartialObjectMetadata)
		if !ok {
			continue
		}
		if n := nodestatus.Read(&m.ObjectMeta); n.Reporting() {
			states = append(states, w.nodeState(n))
		}
	}
	sort.Slice(states, func(i, j int) bool { return states[i].name < states[j].name })
	return states
}

func (w *Waiter) nodeState(n nodestatus.Node) nodeState {
	s := nodeState{name: n.Name}
	switch st := n.Status; {
	case st == nil:
		s.reason = n.Error
	case !w.accept[st.ConfigHash]:
		s.reason = fmt.Sprintf("reports config %s, not yet the one with the image", st.ConfigHash)
	default:
		s.have = true
		for _, f := range st.Failed {
			if sameImage(f.Image, w.Image.Norm) {
				s.have, s.failed, s.reason = false, f.Reason, "failed: "+f.Reason
			}
		}
		for _, mi := range st.Missing {
			if s.have && sameImage(mi, w.Image.Norm) {
				s.have, s.reason = false, "missing"
			}
		}
	}
	return s
}

// progress prints a line when the count changes or a node reports a new
// failure, and says whether every node has the image.
func (w *Waiter) progress(states []nodeState) bool {
	have := 0
	for _, s := range states {
		if s.have {
			have++
		}
		if s.failed != "" && w.reported[s.name] != s.failed {
			w.reported[s.name] = s.failed
			fmt.Fprintf(w.Progress, "%s: %s failed: %s\n", s.name, w.Image.Ref, s.failed)
		}
	}
	line := fmt.Sprintf("%d/%d nodes have %s", have, len(states), w.Image.Ref)
	if len(states) == 0 {
		line = fmt.Sprintf("0/0 nodes have %s (no node has a %s annotation yet)", w.Image.Ref, nodestatus.AnnotationStatus)
	}
	if line != w.lastProgress {
		w.lastProgress = line
		fmt.Fprintln(w.Progress, line)
	}
	return len(states) > 0 && have == len(states)
}

// ended says how ctx ended: its deadline (warm's --timeout), or a cancel
// (a signal).
func ended(ctx context.Context) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return "timed out"
	}
	return "interrupted"
}

func (w *Waiter) timedOut(ctx context.Context, states []nodeState) error {
	why := ended(ctx)
	if len(states) == 0 {
		return fmt.Errorf("%s: no node has a %s annotation (is the agent running?)", why, nodestatus.AnnotationStatus)
	}
	var lacking []string
	for _, s := range states {
		if !s.have {
			lacking = append(lacking, s.name+" ("+s.reason+")")
		}
	}
	return fmt.Errorf("%s: %d of %d nodes do not have %s: %s", why, len(lacking), len(states), w.Image.Ref, nodestatus.NameList(lacking, 20))
}
