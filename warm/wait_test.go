package warm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/kube-preloader/kube-preloader/kubeapi/clientset"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload/config"
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
	return &nodestatus.Status{ConfigHash: config.Hash([]byte(data)), Total: 2, Present: 2 - len(missing) - len(failed), Missing: missing, Failed: failed}
}

func TestEvaluate(t *testing.T) {
	oldHash := config.Hash([]byte(without))
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
		w := &Waiter{Image: mustParse(t, tt.image), accept: map[string]bool{config.Hash([]byte(with)): true}}
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
	w := &Waiter{Image: mustParse(t, newImage), accept: map[string]bool{config.Hash([]byte(with)): true}}
	states := w.evaluate([]any{node("n2", reports(with, nil)), node("n1", nil), broken})
	if len(states) != 2 || states[0].name != "n0" || states[0].have || !strings.HasPrefix(states[0].reason, nodestatus.AnnotationStatus+" annotation: ") ||
		states[1] != (nodeState{name: "n2", have: true}) {
		t.Errorf("evaluate: %+v, want n0 without the image for its annotation, then n2", states)
	}
}

// lockedBuffer is Wait's progress, read by the test while Wait writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const testNS, testCM = "kube-preloader", "preloader-config"

// waitCluster is a fake API server with the agent's ConfigMap listing the
// image at resourceVersion 100, and a Waiter on it.
type waitCluster struct {
	t        *testing.T
	cs       *fake.Clientset
	mc       *metadatafake.FakeMetadataClient
	progress *lockedBuffer
	done     chan error
}

func newWaitCluster(t *testing.T, nodes ...*metav1.PartialObjectMetadata) *waitCluster {
	t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: testCM, ResourceVersion: "100"}, Data: map[string]string{ConfigKey: with}}
	scheme := runtime.NewScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	objs := make([]runtime.Object, len(nodes))
	for i, n := range nodes {
		objs[i] = n
	}
	return &waitCluster{t: t, cs: fake.NewClientset(cm), mc: metadatafake.NewSimpleMetadataClient(scheme, objs...), progress: &lockedBuffer{}, done: make(chan error, 1)}
}

// start runs Wait for newImage, just added, for at most timeout.
func (c *waitCluster) start(timeout time.Duration) *waitCluster {
	w := &Waiter{Client: clientset.New(c.cs), Metadata: c.mc, Namespace: testNS, Name: testCM, Image: mustParse(c.t, newImage),
		Edit: Edit{Data: with, Hash: config.Hash([]byte(with)), ResourceVersion: "100", Added: true}, Progress: c.progress}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	c.t.Cleanup(cancel)
	go func() { c.done <- w.Wait(ctx) }()
	return c
}

func startWait(t *testing.T, timeout time.Duration, nodes ...*metav1.PartialObjectMetadata) *waitCluster {
	t.Helper()
	return newWaitCluster(t, nodes...).start(timeout)
}

// waitFor waits until Wait has printed want.
func (c *waitCluster) waitFor(want string) {
	c.t.Helper()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(c.progress.String(), want) {
		select {
		case err := <-c.done:
			c.t.Fatalf("Wait ended (%v) before printing %q:\n%s", err, want, c.progress)
		case <-deadline:
			c.t.Fatalf("Wait did not print %q:\n%s", want, c.progress)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (c *waitCluster) setNode(name string, st *nodestatus.Status) {
	c.t.Helper()
	if err := c.mc.Tracker().Update(nodestatus.Resource, node(name, st), ""); err != nil {
		c.t.Fatal(err)
	}
}

func (c *waitCluster) setConfig(rv, data string) {
	c.t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: testCM, ResourceVersion: rv}, Data: map[string]string{ConfigKey: data}}
	if _, err := c.cs.CoreV1().ConfigMaps(testNS).Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *waitCluster) result() error {
	c.t.Helper()
	select {
	case err := <-c.done:
		return err
	case <-time.After(10 * time.Second):
		c.t.Fatalf("Wait did not end:\n%s", c.progress)
		return nil
	}
}

// Nodes come to have the image one by one, one after a failure; a node
// without an agent is not waited for.
func TestWaitUntilEveryNodeHasTheImage(t *testing.T) {
	c := startWait(t, time.Minute, node("n1", reports(without, nil)), node("n2", reports(without, nil)), node("n3", nil))
	c.waitFor("0/2 nodes have " + newImage)
	c.setNode("n1", reports(with, nil))
	c.waitFor("1/2 nodes have " + newImage)
	c.setNode("n2", reports(with, nil, nodestatus.FailedImage{Image: newImage, Reason: "registry unavailable"}))
	c.waitFor("n2: " + newImage + " failed: registry unavailable")
	c.setNode("n2", reports(with, nil))
	if err := c.result(); err != nil {
		t.Fatalf("Wait: %v\n%s", err, c.progress)
	}
	want := "0/2 nodes have " + newImage + "\n1/2 nodes have " + newImage + "\nn2: " + newImage + " failed: registry unavailable\n2/2 nodes have " + newImage + "\n"
	if got := c.progress.String(); got != want {
		t.Errorf("progress:\n%s\nwant each line once:\n%s", got, want)
	}
}

// Every node had the image before warm: Wait ends on the informers' first
// lists, with no event after them.
func TestWaitForNodesThatHaveTheImageAlready(t *testing.T) {
	c := startWait(t, time.Minute, node("n1", reports(with, nil)), node("n2", reports(with, nil)))
	if err := c.result(); err != nil || c.progress.String() != "2/2 nodes have "+newImage+"\n" {
		t.Fatalf("Wait: %v\n%s", err, c.progress)
	}
}

// Someone edits the ConfigMap while warm waits: a node that reports the
// later config counts while that config still lists the image.
func TestWaitAcceptsALaterConfigThatListsTheImage(t *testing.T) {
	c := startWait(t, time.Minute, node("n1", reports(without, nil)))
	c.waitFor("0/1 nodes have")
	later := with + "concurrency: 3\n"
	c.setConfig("101", later)
	c.setNode("n1", reports(later, nil))
	if err := c.result(); err != nil {
		t.Fatalf("Wait: %v\n%s", err, c.progress)
	}
}

func TestWaitEndsWhenTheImageIsRemoved(t *testing.T) {
	c := startWait(t, time.Minute, node("n1", reports(without, nil)))
	c.waitFor("0/1 nodes have")
	c.setConfig("101", without)
	err := c.result()
	var ue *UnreachableError
	if err == nil || errors.As(err, &ue) || err.Error() != newImage+" was removed from kube-preloader/preloader-config while waiting" {
		t.Fatalf("Wait: %v, want the removal", err)
	}
}

func TestWaitTimesOut(t *testing.T) {
	t.Run("a node lacks the image", func(t *testing.T) {
		c := startWait(t, 300*time.Millisecond, node("n1", reports(with, nil)), node("n2", reports(with, []string{newImage})), node("n3", nil))
		err := c.result()
		var ue *UnreachableError
		if err == nil || errors.As(err, &ue) || err.Error() != "timed out: 1 of 2 nodes do not have "+newImage+": n2 (missing)" {
			t.Fatalf("Wait: %v, want n2 named", err)
		}
	})
	t.Run("no node reports", func(t *testing.T) {
		c := startWait(t, 300*time.Millisecond, node("n1", nil))
		err := c.result()
		if err == nil || err.Error() != "timed out: no node has a preloader.io/status annotation (is the agent running?)" {
			t.Fatalf("Wait: %v", err)
		}
		if want := "0/0 nodes have " + newImage + " (no node has a preloader.io/status annotation yet)\n"; c.progress.String() != want {
			t.Errorf("progress %q, want %q", c.progress, want)
		}
	})
	t.Run("nodes cannot be read", func(t *testing.T) {
		c := newWaitCluster(t, node("n1", reports(with, nil)))
		c.mc.PrependReactor("list", "nodes", func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(nodestatus.Resource.GroupResource(), "", errors.New("RBAC"))
		})
		err := c.start(300 * time.Millisecond).result()
		var ue *UnreachableError
		if !errors.As(err, &ue) || err.Error() != "timed out before Nodes and ConfigMap kube-preloader/preloader-config could be read" {
			t.Fatalf("Wait: %v, want an UnreachableError", err)
		}
	})
}
