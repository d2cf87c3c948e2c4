package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload"
)

// configMapKey is the ConfigMap key the agent reads its config from.
const configMapKey = "images.yaml"

// warmFieldManager names warm's writes in managedFields.
const warmFieldManager = "preloader-warm"

// warmBackoff is generous because every concurrent editor of the ConfigMap
// can make one attempt conflict.
var warmBackoff = wait.Backoff{Steps: 12, Duration: 10 * time.Millisecond, Factor: 2, Jitter: 0.5, Cap: 2 * time.Second}

func runWarm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("warm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configMap  = fs.String("configmap", "", "the agent's ConfigMap, NAMESPACE/NAME")
		image      = fs.String("image", "", "image to add to the ConfigMap's "+configMapKey)
		waitFlag   = fs.Bool("wait", false, "wait until every node running the agent reports the image present")
		timeout    = fs.Duration("timeout", 10*time.Minute, "bound for the whole command; with --wait, nodes still without the image then make exit 1 (0: no bound)")
		kubeconfig = fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	)
	if err := fs.Parse(args); err != nil {
		return &exitError{code: exitInvalid, err: errors.New("")}
	}
	if fs.NArg() > 0 {
		return usageError("warm: unexpected arguments %q", fs.Args())
	}
	ns, name, ok := strings.Cut(*configMap, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return usageError("warm: --configmap must be NAMESPACE/NAME, not %q", *configMap)
	}
	if *image == "" {
		return usageError("warm: --image is required")
	}
	norm, err := preload.NormalizeRef(*image)
	if err != nil {
		return usageError("warm: --image %q: %v", *image, err)
	}
	if *timeout < 0 {
		return usageError("warm: --timeout must not be negative")
	}
	cfg, err := loadClusterConfig(*kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}

	data, rv, added, err := warmAdd(ctx, cs, ns, name, *image, norm)
	if err != nil {
		return err
	}
	hash := preload.ConfigHash([]byte(data))
	if added {
		fmt.Fprintf(stdout, "added %s to %s/%s %s (config %s)\n", *image, ns, name, configMapKey, hash)
	} else {
		fmt.Fprintf(stdout, "%s is already in %s/%s %s (config %s)\n", *image, ns, name, configMapKey, hash)
	}
	if !*waitFlag {
		return nil
	}
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	w := &warmWaiter{cs: cs, mc: mc, ns: ns, name: name, image: *image, norm: norm, stderr: stderr,
		accept: map[string]bool{hash: true}, listedAt: rv, reported: map[string]string{}}
	return w.run(ctx)
}

// warmAdd appends the image to the ConfigMap's images.yaml, re-reading and
// retrying when someone else changed the ConfigMap in between, so no edit
// is lost. It returns the images.yaml that lists the image and the
// ConfigMap's resourceVersion then.
func warmAdd(ctx context.Context, cs kubernetes.Interface, ns, name, ref, norm string) (data, rv string, added bool, err error) {
	cms := cs.CoreV1().ConfigMaps(ns)
	err = retry.RetryOnConflict(warmBackoff, func() error {
		rctx, cancel := context.WithTimeout(ctx, kubeRequestTimeout)
		defer cancel()
		cm, err := cms.Get(rctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		old := cm.Data[configMapKey]
		out, changed, err := addImageYAML(old, ref, norm)
		if err != nil {
			return &exitError{code: exitInvalid, err: fmt.Errorf("ConfigMap %s/%s key %s: %w", ns, name, configMapKey, err)}
		}
		if !changed {
			data, rv, added = old, cm.ResourceVersion, false
			return nil
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[configMapKey] = out
		// Update carries the resourceVersion we read: a concurrent edit
		// makes it fail with Conflict, and we start over from a fresh Get.
		updated, err := cms.Update(rctx, cm, metav1.UpdateOptions{FieldManager: warmFieldManager})
		if err != nil {
			return err
		}
		data, rv, added = updated.Data[configMapKey], updated.ResourceVersion, true
		return nil
	})
	var ee *exitError
	switch {
	case err == nil:
		return data, rv, added, nil
	case errors.As(err, &ee):
		return "", "", false, err
	default:
		return "", "", false, kubeAPIError(fmt.Sprintf("ConfigMap %s/%s", ns, name), err)
	}
}

// addImageYAML returns images.yaml with an entry {image: ref} appended to
// the images list, or changed=false when an entry already names the image
// (compared normalized). It edits the YAML node tree, so comments, key
// order, flow/quote styles and every other entry stay as they were; the
// re-encoding indents by two spaces and drops blank lines.
func addImageYAML(data, ref, norm string) (string, bool, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(data), &doc); err != nil {
		return "", false, err
	}
	if doc.Kind == 0 {
		doc = yaml.Node{Kind: yaml.DocumentNode, HeadComment: doc.HeadComment}
	}
	if doc.Kind != yaml.DocumentNode {
		return "", false, fmt.Errorf("not a YAML document")
	}
	if len(doc.Content) == 0 {
		doc.Content = []*yaml.Node{{Kind: yaml.MappingNode, Tag: "!!map"}}
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		*root = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", HeadComment: root.HeadComment, LineComment: root.LineComment, FootComment: root.FootComment}
	}
	if root.Kind != yaml.MappingNode {
		return "", false, fmt.Errorf("line %d: the config must be a mapping with an images list", root.Line)
	}
	var images *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "images" {
			images = root.Content[i+1]
			break
		}
	}
	if images == nil {
		images = &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		key := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "images"}
		root.Content = append([]*yaml.Node{key, images}, root.Content...)
	}
	if images.Kind == yaml.ScalarNode && images.Tag == "!!null" {
		*images = yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", LineComment: images.LineComment}
	}
	if images.Kind != yaml.SequenceNode {
		return "", false, fmt.Errorf("line %d: images must be a list", images.Line)
	}
	for _, item := range images.Content {
		if entryNames(item, norm) {
			return data, false, nil
		}
	}
	entry := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: images.Style & yaml.FlowStyle, Content: []*yaml.Node{
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: "image"},
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: ref},
	}}
	images.Content = append(images.Content, entry)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return "", false, err
	}
	if err := enc.Close(); err != nil {
		return "", false, err
	}
	return buf.String(), true, nil
}

// entryNames reports whether an images entry is the image norm.
func entryNames(item *yaml.Node, norm string) bool {
	var v string
	switch item.Kind {
	case yaml.ScalarNode:
		v = item.Value
	case yaml.MappingNode:
		for i := 0; i+1 < len(item.Content); i += 2 {
			if item.Content[i].Value == "image" {
				v = item.Content[i+1].Value
			}
		}
	}
	if v == "" {
		return false
	}
	n, err := preload.NormalizeRef(v)
	return err == nil && n == norm
}

// listsImage reports whether images.yaml has an entry for the image.
func listsImage(data, norm string) bool {
	var doc struct {
		Images []yaml.Node `yaml:"images"`
	}
	if err := yaml.Unmarshal([]byte(data), &doc); err != nil {
		return false
	}
	for i := range doc.Images {
		if entryNames(&doc.Images[i], norm) {
			return true
		}
	}
	return false
}

// warmWaiter watches Nodes' status annotations (and the ConfigMap, which
// others may edit meanwhile) until every node running the agent reports the
// image present under a config that lists it.
type warmWaiter struct {
	cs          kubernetes.Interface
	mc          metadata.Interface
	ns, name    string
	image, norm string
	stderr      io.Writer
	accept      map[string]bool // config hashes that list the image
	removed     bool            // a later config no longer lists it
	// listedAt is the ConfigMap's resourceVersion that lists the image:
	// the informer's first list may still hand out an older one, which
	// is not a removal.
	listedAt     string
	lastProgress string
	reported     map[string]string // node → failure reason last printed
}

// nodeWarmState is where one node stands with the image.
type nodeWarmState struct {
	name   string
	have   bool
	reason string // why not, for the timeout message
	failed string // the agent's failure reason, if any
}

func (w *warmWaiter) run(ctx context.Context) error {
	changed := make(chan struct{}, 1)
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
	nodes := metadatainformer.NewFilteredMetadataInformer(w.mc, nodesResource, "", 0, cache.Indexers{}, nil).Informer()
	cmLW := cache.NewListWatchFromClient(w.cs.CoreV1().RESTClient(), "configmaps", w.ns, fields.OneTermEqualSelector("metadata.name", w.name))
	cms := cache.NewSharedIndexInformer(cmLW, &corev1.ConfigMap{}, 0, cache.Indexers{})
	for _, inf := range []cache.SharedIndexInformer{nodes, cms} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return err
		}
	}
	ictx, stop := context.WithCancel(context.Background())
	defer stop()
	go nodes.RunWithContext(ictx)
	go cms.RunWithContext(ictx)

	var states []nodeWarmState
	for {
		if nodes.HasSynced() && cms.HasSynced() {
			w.observeConfig(cms.GetStore().List())
			if w.removed {
				return &exitError{code: exitMissing, err: fmt.Errorf("%s was removed from %s/%s while waiting", w.image, w.ns, w.name)}
			}
			states = w.evaluate(nodes.GetStore().List())
			if w.progress(states) {
				return nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return w.timedOut(ctx, states, nodes.HasSynced() && cms.HasSynced())
		}
	}
}

// observeConfig accepts the hash of the current images.yaml while it still
// lists the image: a node that reports under a later config also counts.
func (w *warmWaiter) observeConfig(objs []any) {
	for _, o := range objs {
		cm, ok := o.(*corev1.ConfigMap)
		if !ok || cm.Name != w.name {
			continue
		}
		if c, err := resourceversion.CompareResourceVersion(cm.ResourceVersion, w.listedAt); err == nil && c < 0 {
			continue // older than our edit: the watch will bring it
		}
		data, ok := cm.Data[configMapKey]
		if !ok {
			continue
		}
		h := preload.ConfigHash([]byte(data))
		if w.accept[h] {
			continue
		}
		if listsImage(data, w.norm) {
			w.accept[h] = true
		} else if _, _, err := addImageYAML(data, w.image, w.norm); err == nil {
			// Valid YAML without the image: someone took it out.
			w.removed = true
		}
	}
}

// evaluate decides, for every node that has a status annotation, whether
// it has the image.
func (w *warmWaiter) evaluate(objs []any) []nodeWarmState {
	var states []nodeWarmState
	for _, o := range objs {
		m, ok := o.(*metav1.PartialObjectMetadata)
		if !ok {
			continue
		}
		v := decodeNodeStatus(&m.ObjectMeta)
		if !v.reporting() {
			continue
		}
		s := nodeWarmState{name: v.Name}
		switch st := v.Status; {
		case st == nil:
			s.reason = v.Error
		case !w.accept[st.ConfigHash]:
			s.reason = fmt.Sprintf("reports config %s, not yet the one with the image", st.ConfigHash)
		default:
			s.have, s.reason = true, ""
			for _, f := range st.Failed {
				if sameImage(f.Image, w.norm) {
					s.have, s.failed, s.reason = false, f.Reason, "failed: "+f.Reason
				}
			}
			for _, mi := range st.Missing {
				if s.have && sameImage(mi, w.norm) {
					s.have, s.reason = false, "missing"
				}
			}
		}
		states = append(states, s)
	}
	sort.Slice(states, func(i, j int) bool { return states[i].name < states[j].name })
	return states
}

func sameImage(s, norm string) bool {
	if s == norm {
		return true
	}
	n, err := preload.NormalizeRef(s)
	return err == nil && n == norm
}

// progress prints a line when the count changes or a node reports a new
// failure, and says whether every node has the image.
func (w *warmWaiter) progress(states []nodeWarmState) bool {
	have := 0
	for _, s := range states {
		if s.have {
			have++
		}
		if s.failed != "" && w.reported[s.name] != s.failed {
			w.reported[s.name] = s.failed
			fmt.Fprintf(w.stderr, "%s: %s failed: %s\n", s.name, w.image, s.failed)
		}
	}
	line := fmt.Sprintf("%d/%d nodes have %s", have, len(states), w.image)
	if len(states) == 0 {
		line = fmt.Sprintf("0/0 nodes have %s (no node has a %s annotation yet)", w.image, nodestatus.AnnotationStatus)
	}
	if line != w.lastProgress {
		w.lastProgress = line
		fmt.Fprintln(w.stderr, line)
	}
	return len(states) > 0 && have == len(states)
}

func (w *warmWaiter) timedOut(ctx context.Context, states []nodeWarmState, synced bool) error {
	why := "timed out"
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		why = "interrupted"
	}
	if !synced {
		return &exitError{code: exitUnreachable, err: fmt.Errorf("%s before Nodes and ConfigMap %s/%s could be read", why, w.ns, w.name)}
	}
	if len(states) == 0 {
		return &exitError{code: exitMissing, err: fmt.Errorf("%s: no node has a %s annotation (is the agent running?)", why, nodestatus.AnnotationStatus)}
	}
	var lacking []string
	for _, s := range states {
		if !s.have {
			lacking = append(lacking, s.name+" ("+s.reason+")")
		}
	}
	return &exitError{code: exitMissing, err: fmt.Errorf("%s: %d of %d nodes do not have %s: %s",
		why, len(lacking), len(states), w.image, nameList(lacking, 20))}
}
