package e2e

// n: a new node. It registers with a cluster-autoscaler startup taint,
// the agent's --taint-key; the config lists no image but the workloads of
// a namespace, whose images preloader controller lists; the agent brings
// the workload's image of hundreds of MiB, and what a user sees is
// checked: the taint goes within seconds of the image being there, and a
// workload created before the node had it waits unscheduled and starts
// only after the taint went, never failing for the image; the Node
// condition preloader.io/ImagesReady says what the label says, and at
// rest is not written again.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/workloads"
)

const (
	// bigLayerSize is the new-node image's dominant layer, uncompressed;
	// gzip halves it.
	bigLayerSize = 512 << 20
	// liftWithin is how soon after the image is present the taint must go.
	liftWithin = 5 * time.Second
	// observeEvery is how often the test asks the CRI whether the image is
	// there and the API server whether the taint still is.
	observeEvery = 20 * time.Millisecond
	// bigWorkload is the Deployment created before the node has its image.
	bigWorkload = "n-big"
)

// testNewNode boots a node with the taint and the bootstrap hook (the
// pause image), then runs scenario n on it. The large image is built while
// the cluster starts.
func testNewNode(t *testing.T, kind nodeKind) {
	start := time.Now()
	r := newRun(t, kind, false)
	layer := make(chan bigLayer, 1)
	dir := t.TempDir()
	var building sync.WaitGroup
	// Before dir is removed, should the test end first.
	t.Cleanup(building.Wait)
	building.Go(func() {
		s := time.Now()
		l, err := harness.CompressibleLayer(dir, "team/big", bigLayerSize)
		layer <- bigLayer{l, err, time.Since(s)}
	})
	r.kube = harness.StartKube(t)
	r.taintKey = startupTaint
	r.startNode(t, true)
	t.Logf("n: API server and node up %v after the test started", time.Since(start).Round(time.Millisecond))
	big := r.pushBigImage(t, <-layer)
	r.scenarioNewNode(t, big)
	t.Logf("%s: new node in %v", kind, time.Since(start).Round(time.Millisecond))
}

type bigLayer struct {
	layer v1.Layer
	err   error
	took  time.Duration
}

// pushBigImage pushes team/big:1.0: one compressible layer of
// bigLayerSize, then the workload program.
func (r *run) pushBigImage(t *testing.T, l bigLayer) harness.TestImage {
	t.Helper()
	if l.err != nil {
		t.Fatal(l.err)
	}
	start := time.Now()
	spec := r.spec("team/big", "1.0")
	spec.Prebuilt = []v1.Layer{l.layer}
	img := harness.PushTestImages(t, r.pub, []harness.ImageSpec{spec})[0]
	compressed, _ := l.layer.Size()
	t.Logf("n: %s: %d MiB, its dominant layer %d MiB (%d MiB compressed); built in %v, pushed in %v",
		img.Ref, img.Size>>20, bigLayerSize>>20, compressed>>20, l.took.Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond))
	return img
}

func (r *run) scenarioNewNode(t *testing.T, big harness.TestImage) {
	t.Helper()
	n := r.node
	key := r.taintKey
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if taints := getNode(t, n).Spec.Taints; len(taints) != 1 || taints[0].Key != key {
		t.Fatalf("node %s registered with taints %v, want only %s", n.Name, taints, key)
	}
	obs := startNewNodeObservers(ctx, t, n, big.Ref, key)

	// The workload comes first, as it does when a node pool scales up for
	// it: no toleration, the image never pulled by the kubelet.
	d := deployment(n, bigWorkload, big.Ref, corev1.PullNever, 2)
	if _, err := n.Client.AppsV1().Deployments("default").Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range waitDeploymentPods(t, n, bigWorkload, 2, time.Minute) {
		msg := waitPodEvent(t, n, "default", p.Name, "FailedScheduling", time.Minute)
		if !strings.Contains(msg, "untolerated taint") {
			t.Fatalf("%s: FailedScheduling is not about a taint: %s", p.Name, msg)
		}
		if p := getPod(t, n, "default", p.Name); p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
			t.Fatalf("%s: want Pending and unscheduled: %s", p.Name, harness.DescribePod(p))
		}
	}
	if r.imagePresent(t, big.Ref) {
		t.Fatalf("%s present before the agent was installed", big.Ref)
	}
	before := "Pending 2/2, FailedScheduling: untolerated startup taint; image absent"

	// No image in images.yaml: the workloads of the Deployment's
	// namespace, whose images preloader controller, installed with the
	// agent, lists.
	r.entries = nil
	r.workloads = []string{"default"}
	applied := r.deployAgent(t)
	t.Cleanup(func() {
		if t.Failed() {
			r.logController(t)
		}
	})

	obs.waitFor(t, obs.lifted, 5*time.Minute, "the "+key+" taint still there")
	obs.waitFor(t, obs.present, time.Minute, "the taint gone, but the CRI still without "+big.Ref)
	waitDeploymentRolledOut(t, n, bigWorkload, big.Ref, 3*time.Minute)
	toRunning := time.Since(applied)
	// At rest from here on: one resync more, which must not write the
	// condition again.
	restFrom := time.Now()
	r.waitResync(t)
	resynced := r.lastSync(t)
	cancel()
	lift, present, states, listed := obs.wait(t)
	// The Node as it is now, should the watch have delivered nothing at
	// rest.
	states = append(states, stateOf(getNode(t, n), time.Now()))
	if lift.lastTainted.IsZero() {
		t.Fatalf("no Get of the node showed the %s taint", key)
	}

	// Present: the earlier of the runtime's own record of the reference
	// (containerd's CreatedAt, exact) and the CRI's first answer to the
	// test's polls (what the kubelet asks); the later of the two lags the
	// other by the CRI's view of the store or one poll.
	created := imageCreatedAt(t, n, big.Ref)
	present.at = present.criSeen
	if !created.IsZero() && created.Before(present.at) {
		present.at = created
	}
	delay := lift.seen.Sub(present.at)
	t.Logf("n: image record created %s, CRI first answered %s (last absent %s); taint last seen %s, gone in the watch %s: lifted %v after present",
		stamp(created), stamp(present.criSeen), stamp(present.lastAbsent), stamp(lift.lastTainted), stamp(lift.seen), delay.Round(time.Millisecond))
	if delay > liftWithin {
		t.Errorf("the %s taint went %v after %s was present, want within %v", key, delay.Round(time.Millisecond), big.Ref, liftWithin)
	}
	// The taint must not go before the image: it went by lift.seen, and
	// the image was still absent when the poll at lastAbsent was sent.
	if lift.seen.Before(present.lastAbsent) {
		t.Errorf("the %s taint was gone at %s, while the CRI still had no %s at %s", key, stamp(lift.seen), big.Ref, stamp(present.lastAbsent))
	}
	// The image came from the controller's list: images.yaml names none.
	if listed.IsZero() {
		t.Errorf("the ConfigMap's %s never listed %s", workloads.Key, big.Ref)
	}
	r.checkWorkloadsListed(t, big.Ref)

	cond := checkConditionTracksLabel(t, states, restFrom, resynced)

	// Each workload pod: bound, scheduled and started after the taint went
	// (lift.lastTainted is a lower bound of that moment, so a pod that
	// legitimately followed the lift can never fail these), and never
	// refused its image.
	started := r.checkAfterLift(t, obs, lift.lastTainted)
	t.Logf("n: the controller listed the image %v after apply -k; the agent had it %v after apply -k; the taint went %v after it; the containers started %s after a poll last saw the taint; %s",
		listed.Sub(applied).Round(time.Millisecond), present.at.Sub(applied).Round(time.Millisecond), delay.Round(time.Millisecond), started, cond)
	after := fmt.Sprintf("Running 2/2 (Never); listed %.1fs, %d MiB there %.0fs after apply -k, lifted %.1fs later",
		listed.Sub(applied).Seconds(), big.Size>>20, present.at.Sub(applied).Seconds(), delay.Seconds())
	verdicts.add(verdict{
		scenario:  r.row("n new node, startup taint, image from workloads, condition (Deployment first)"),
		before:    before,
		after:     after,
		toRunning: toRunning,
	})
}

// checkWorkloadsListed: the ConfigMap's images.yaml lists no image, and
// the key the controller owns lists ref as the image of the Deployment.
func (r *run) checkWorkloadsListed(t *testing.T, ref string) {
	t.Helper()
	cm, err := r.node.Client.CoreV1().ConfigMaps(agentNamespace).Get(context.Background(), agentConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("images.yaml", []byte(cm.Data["images.yaml"]))
	if err != nil || len(cfg.Images) != 0 || len(cfg.Workloads) != 1 {
		t.Errorf("images.yaml: %v, want no image and one workloads entry:\n%s", err, cm.Data["images.yaml"])
	}
	l, err := workloads.Decode(workloads.Key, cm.Data[workloads.Key])
	want := "default/deployment/" + bigWorkload
	if err != nil || len(l.Images) != 1 || l.Images[0].Image != ref || !slices.Equal(l.Images[0].Workloads, []string{want}) {
		t.Errorf("%s: %v, want %s of %s alone:\n%s", workloads.Key, err, ref, want, cm.Data[workloads.Key])
	}
}

// logController logs the controller's pods and their logs.
func (r *run) logController(t *testing.T) {
	t.Helper()
	pods, err := r.node.Client.CoreV1().Pods(agentNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + controllerDeployment})
	if err != nil {
		t.Logf("controller pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		logs, err := r.node.PodLogs(agentNamespace, p.Name, "controller")
		t.Logf("controller %s (%s) log (%v):\n%s", p.Name, harness.DescribePod(&p), err, tailLines(logs, 40))
	}
}

// nodeState is one state of the Node as its watch delivered it.
type nodeState struct {
	at    time.Time
	rv    string
	label string // preloader.io/ready, "" when absent
	cond  *corev1.NodeCondition
}

func (s nodeState) String() string {
	c := "none"
	if s.cond != nil {
		c = fmt.Sprintf("%s %s %q (heartbeat %s, transition %s)", s.cond.Status, s.cond.Reason, s.cond.Message,
			s.cond.LastHeartbeatTime.UTC().Format(time.TimeOnly), s.cond.LastTransitionTime.UTC().Format(time.TimeOnly))
	}
	return fmt.Sprintf("%s rv %s: label %q, condition %s", stamp(s.at), s.rv, s.label, c)
}

// agrees says whether the state's condition says what its label says.
// With no label yet, the agent has not written it: no condition, or a
// False one (the agent's before it has a config), is what a user may see.
func (s nodeState) agrees() bool {
	switch s.label {
	case "":
		return s.cond == nil || s.cond.Status == corev1.ConditionFalse
	case "true":
		return s.cond != nil && s.cond.Status == corev1.ConditionTrue
	default:
		return s.cond != nil && s.cond.Status == corev1.ConditionFalse
	}
}

// condSplitWithin bounds how long the condition may lag the label: the
// agent writes the label with the Node and the condition with its status,
// two requests, so a watch may deliver the Node between them.
const condSplitWithin = time.Second

// checkConditionTracksLabel checks every state the Node's watch delivered:
// the condition preloader.io/ImagesReady is False while the label is
// "false" and True with "true", but for the moment between the agent's
// two requests of one write (the label changed, the condition not yet,
// the next state with the same label agreeing within condSplitWithin).
// Before any verdict the agent writes no label: the condition is then
// absent or False. At rest, from restFrom on, across a resync (the agent's last sync at resynced, Unix seconds),
// the condition stayed True and did not change, its lastHeartbeatTime
// included. It returns a summary.
func checkConditionTracksLabel(t *testing.T, states []nodeState, restFrom time.Time, resynced float64) string {
	t.Helper()
	var (
		splits   int
		maxSplit time.Duration
		split    *nodeState
		reasons  []string
		rest     *nodeState
	)
	for i, s := range states {
		if s.cond != nil && !slices.Contains(reasons, s.cond.Reason) {
			reasons = append(reasons, s.cond.Reason)
		}
		if !s.at.After(restFrom) {
			rest = &states[i]
		}
		switch {
		case s.agrees() && split != nil:
			if s.label != split.label {
				t.Errorf("the label went from %q to %q while the condition disagreed: %s, then %s", split.label, s.label, split, s)
			}
			d := s.at.Sub(split.at)
			if d > condSplitWithin {
				t.Errorf("the condition disagreed with the label for %v, want within %v: %s, then %s", d.Round(time.Millisecond), condSplitWithin, split, s)
			}
			splits++
			maxSplit = max(maxSplit, d)
			split = nil
		case s.agrees():
		case split == nil:
			split = &states[i]
		case s.label != split.label:
			t.Errorf("the label went from %q to %q while the condition disagreed: %s, then %s", split.label, s.label, split, s)
		}
	}
	if split != nil {
		t.Errorf("the last state of the Node has a condition that disagrees with its label: %s", states[len(states)-1])
	}
	if rest == nil || rest.label != "true" || rest.cond == nil || rest.cond.Status != corev1.ConditionTrue || rest.cond.Reason != nodestatus.ReasonImagesPresent {
		t.Fatalf("at rest the Node shows %v, want the label \"true\" and the condition True %s", rest, nodestatus.ReasonImagesPresent)
	}
	atRest := 0
	for _, s := range states {
		if s.at.After(restFrom) {
			atRest++
			if !sameCondition(s.cond, rest.cond) {
				t.Errorf("at rest the condition changed: %s, then %s", rest, s)
			}
		}
	}
	resyncAt := time.Unix(0, int64(resynced*1e9))
	if resyncAt.Before(restFrom) {
		t.Errorf("the agent's last sync at %s is before %s: no resync at rest", stamp(resyncAt), stamp(restFrom))
	}
	return fmt.Sprintf("the condition followed the label in %d Node states (reasons %s; %d split between the agent's two requests, at most %v); at rest unchanged (heartbeat %s) across a resync at %s and %d Node states",
		len(states), strings.Join(reasons, ", "), splits, maxSplit.Round(time.Millisecond), rest.cond.LastHeartbeatTime.UTC().Format(time.TimeOnly), stamp(resyncAt), atRest)
}

func sameCondition(a, b *corev1.NodeCondition) bool {
	return a != nil && b != nil && a.Type == b.Type && a.Status == b.Status && a.Reason == b.Reason && a.Message == b.Message &&
		a.LastHeartbeatTime.Equal(&b.LastHeartbeatTime) && a.LastTransitionTime.Equal(&b.LastTransitionTime)
}

// checkAfterLift checks every pod of the workload against the lift's
// lower bound and returns how long after it the containers started.
func (r *run) checkAfterLift(t *testing.T, obs *newNodeObservers, liftFloor time.Time) string {
	t.Helper()
	n := r.node
	ctx := context.Background()
	pods, err := n.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + bigWorkload})
	if err != nil {
		t.Fatal(err)
	}
	rs := runtimeapi.NewRuntimeServiceClient(n.Containerd.Conn(t))
	floorSecond := liftFloor.Truncate(time.Second)
	var starts []string
	for _, p := range pods.Items {
		seen := obs.pod(p.Name)
		if reasons := seen.reasons; len(reasons) > 0 {
			t.Errorf("%s: the kubelet reported %v while the pod waited", p.Name, reasons)
		}
		for _, e := range n.PodEvents("default", p.Name) {
			if strings.HasPrefix(e, "ErrImageNeverPull") || strings.HasPrefix(e, "Failed:") {
				t.Errorf("%s: Event %s", p.Name, e)
			}
		}
		if seen.bound.IsZero() || seen.bound.Before(liftFloor) {
			t.Errorf("%s: bound to the node at %s, the taint still there at %s", p.Name, stamp(seen.bound), stamp(liftFloor))
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && (c.Status != corev1.ConditionTrue || c.LastTransitionTime.Time.Before(floorSecond)) {
				t.Errorf("%s: PodScheduled %s at %s, the taint still there at %s", p.Name, c.Status, c.LastTransitionTime.UTC().Format(time.RFC3339), stamp(liftFloor))
			}
		}
		if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Running == nil {
			t.Errorf("%s: not running: %s", p.Name, harness.DescribePod(&p))
			continue
		}
		cs := p.Status.ContainerStatuses[0]
		if cs.RestartCount != 0 || cs.State.Running.StartedAt.Time.Before(floorSecond) {
			t.Errorf("%s: container started %s (restarts %d), the taint still there at %s", p.Name, cs.State.Running.StartedAt.UTC().Format(time.RFC3339), cs.RestartCount, stamp(liftFloor))
		}
		// The runtime's start time, to the nanosecond.
		_, id, _ := strings.Cut(cs.ContainerID, "://")
		st, err := rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Errorf("%s: CRI ContainerStatus %s: %v", p.Name, id, err)
			continue
		}
		at := time.Unix(0, st.Status.StartedAt)
		if at.Before(liftFloor) {
			t.Errorf("%s: container started at %s, the taint still there at %s", p.Name, stamp(at), stamp(liftFloor))
		}
		starts = append(starts, fmt.Sprintf("%.1fs", at.Sub(liftFloor).Seconds()))
	}
	if len(pods.Items) != 2 {
		t.Errorf("want the workload's 2 pods, got %d", len(pods.Items))
	}
	slices.Sort(starts)
	return strings.Join(starts, ", ")
}

// imageCreatedAt is when containerd created its record of ref; zero if
// it has none.
func imageCreatedAt(t *testing.T, n *harness.Node, ref string) time.Time {
	t.Helper()
	cc, err := client.New(n.Containerd.Path(n.Containerd.Address), client.WithDefaultNamespace("k8s.io"))
	if err != nil {
		t.Fatalf("containerd client: %v", err)
	}
	defer cc.Close()
	img, err := cc.ImageService().Get(context.Background(), ref)
	if err != nil {
		t.Errorf("containerd image record %s: %v", ref, err)
		return time.Time{}
	}
	return img.CreatedAt
}

func stamp(at time.Time) string {
	if at.IsZero() {
		return "never"
	}
	return at.UTC().Format("15:04:05.000")
}

// newNodeObservers watch the scenario from the outside: the Node's taint
// and every state of its label and condition (a watch, and polls for the
// last moment the taint was still there), the ConfigMap's list of the
// workloads' images, the CRI's answer for the image, and the workload's
// pods.
type newNodeObservers struct {
	wg      sync.WaitGroup
	lifted  chan struct{}
	present chan struct{}

	mu   sync.Mutex
	lift liftSeen
	img  presentSeen
	pods map[string]podSeen
	// states are the Node's, as its watch delivered them; listed is when
	// the ConfigMap's watch first delivered the image in the controller's
	// key.
	states []nodeState
	listed time.Time
	errs   []error
}

type liftSeen struct {
	// seen is when the Node's watch delivered it without the taint;
	// lastTainted when the last Get that still showed it was sent. The
	// taint went between the two.
	seen, lastTainted time.Time
}

type presentSeen struct {
	// criSeen is when the CRI first answered for the image, lastAbsent
	// when the last poll that found nothing was sent; at is what the test
	// takes as the moment the image was present.
	criSeen, lastAbsent, at time.Time
}

type podSeen struct {
	// bound is when the pod's watch first showed it on a node.
	bound time.Time
	// reasons are the waiting reasons other than ContainerCreating.
	reasons []string
}

func startNewNodeObservers(ctx context.Context, t *testing.T, n *harness.Node, ref, key string) *newNodeObservers {
	t.Helper()
	o := &newNodeObservers{lifted: make(chan struct{}), present: make(chan struct{}), pods: map[string]podSeen{}}
	is := runtimeapi.NewImageServiceClient(n.Containerd.Conn(t))
	node := getNode(t, n)
	o.states = []nodeState{stateOf(node, time.Now())}
	nodes := retryWatch(ctx, t, node.ResourceVersion, func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
		opts.FieldSelector = "metadata.name=" + n.Name
		return n.Client.CoreV1().Nodes().Watch(ctx, opts)
	})
	podList, err := n.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + bigWorkload})
	if err != nil {
		t.Fatal(err)
	}
	pods := retryWatch(ctx, t, podList.ResourceVersion, func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
		opts.LabelSelector = "app=" + bigWorkload
		return n.Client.CoreV1().Pods("default").Watch(ctx, opts)
	})
	// The ConfigMap does not exist yet, nor its namespace: its watch
	// starts from the list's resourceVersion all the same.
	cms, err := n.Client.CoreV1().ConfigMaps(agentNamespace).List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + agentConfigMap})
	if err != nil {
		t.Fatal(err)
	}
	configMaps := retryWatch(ctx, t, cms.ResourceVersion, func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
		opts.FieldSelector = "metadata.name=" + agentConfigMap
		return n.Client.CoreV1().ConfigMaps(agentNamespace).Watch(ctx, opts)
	})
	o.wg.Add(5)
	// The lift: the first event of the Node without the taint; and every
	// state of the Node's label and condition, to the end.
	go o.watch(ctx, "node", nodes, func(obj runtime.Object, now time.Time) bool {
		node, ok := obj.(*corev1.Node)
		if !ok {
			return false
		}
		o.states = append(o.states, stateOf(node, now))
		if o.lift.seen.IsZero() && !hasTaint(node, key) {
			o.lift.seen = now
			close(o.lifted)
		}
		return false
	})
	go o.watch(ctx, "configmap", configMaps, func(obj runtime.Object, now time.Time) bool {
		cm, ok := obj.(*corev1.ConfigMap)
		if ok && strings.Contains(cm.Data[workloads.Key], ref) {
			o.listed = now
			return true
		}
		return false
	})
	// The lift's lower bound: the taint cannot have gone before a Get that
	// still showed it was sent.
	go o.poll(ctx, "get node", func(ctx context.Context, sent time.Time) (bool, error) {
		node, err := n.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil || !hasTaint(node, key) {
			return true, err
		}
		o.locked(func() { o.lift.lastTainted = sent })
		return false, nil
	})
	go o.poll(ctx, "CRI ImageStatus "+ref, func(ctx context.Context, sent time.Time) (bool, error) {
		resp, err := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		switch {
		case err != nil:
			return true, err
		case resp.Image != nil:
			now := time.Now()
			o.locked(func() { o.img.criSeen = now })
			close(o.present)
			return true, nil
		}
		o.locked(func() { o.img.lastAbsent = sent })
		return false, nil
	})
	// When each pod of the workload was first seen bound, and every
	// waiting reason it showed.
	go o.watch(ctx, "pods", pods, func(obj runtime.Object, now time.Time) bool {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return false
		}
		s := o.pods[p.Name]
		if p.Spec.NodeName != "" && s.bound.IsZero() {
			s.bound = now
		}
		if w := harness.WaitingReason(p); w != "" && w != "ContainerCreating" && !slices.Contains(s.reasons, w) {
			s.reasons = append(s.reasons, w)
		}
		o.pods[p.Name] = s
		return false
	})
	return o
}

func stateOf(node *corev1.Node, at time.Time) nodeState {
	s := nodeState{at: at, rv: node.ResourceVersion, label: node.Labels[nodestatus.LabelReady]}
	if c, ok := nodestatus.ConditionFrom(node.Status.Conditions); ok {
		s.cond = &c
	}
	return s
}

// retryWatch watches from rv on, watching again from the last event
// where the API server ends a watch.
func retryWatch(ctx context.Context, t *testing.T, rv string, f cache.WatchFuncWithContext) watch.Interface {
	t.Helper()
	w, err := watchtools.NewRetryWatcherWithContext(ctx, rv, &cache.ListWatch{WatchFuncWithContext: f})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (o *newNodeObservers) locked(f func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f()
}

func (o *newNodeObservers) fail(err error) {
	o.locked(func() { o.errs = append(o.errs, err) })
}

// watch hands each object of w, with when it arrived, to seen, under the
// observers' lock, until seen says it is done or ctx ends.
func (o *newNodeObservers) watch(ctx context.Context, what string, w watch.Interface, seen func(obj runtime.Object, now time.Time) (done bool)) {
	defer o.wg.Done()
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.ResultChan():
			now := time.Now()
			switch {
			case !ok:
				o.fail(fmt.Errorf("%s: the watch ended early", what))
				return
			case ev.Type == watch.Error:
				o.fail(fmt.Errorf("%s: watch: %v", what, ev.Object))
				continue
			}
			var done bool
			o.locked(func() { done = seen(ev.Object, now) })
			if done {
				return
			}
		}
	}
}

// poll calls ask every observeEvery, with when it was called, until it
// says it is done or ctx ends.
func (o *newNodeObservers) poll(ctx context.Context, what string, ask func(ctx context.Context, sent time.Time) (done bool, err error)) {
	defer o.wg.Done()
	tick := time.NewTicker(observeEvery)
	defer tick.Stop()
	for {
		sent := time.Now()
		done, err := ask(ctx, sent)
		if err != nil && ctx.Err() == nil {
			o.fail(fmt.Errorf("%s: %w", what, err))
		}
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// waitFor waits until done is closed, failing the test with what, and
// what went wrong in the observers, after timeout.
func (o *newNodeObservers) waitFor(t *testing.T, done <-chan struct{}, timeout time.Duration, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(timeout):
		o.mu.Lock()
		defer o.mu.Unlock()
		t.Fatalf("%s after %v (observers: %v)", what, timeout, o.errs)
	}
}

// wait waits for the observers to end (cancel their context first),
// fails the test with what went wrong in them and returns what they saw:
// a poll in flight at the lift may still move lastTainted.
func (o *newNodeObservers) wait(t *testing.T) (liftSeen, presentSeen, []nodeState, time.Time) {
	t.Helper()
	o.wg.Wait()
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, err := range o.errs {
		t.Error(err)
	}
	return o.lift, o.img, o.states, o.listed
}

func (o *newNodeObservers) pod(name string) podSeen {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.pods[name]
}
