package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/kubeapi/clientset"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

const (
	testNS   = "preloader"
	testCM   = "images"
	testNode = "node-1"
	appImage = "corp.example/team/app:1.4"
	gpuImage = "corp.example/team/cuda:12"
)

// testConfig is images.yaml with short retry delays, so that tests run
// many backoff rounds in well under a second; start shortens the resync
// below the config's one-second minimum.
func testConfig(images string) string {
	return "images:\n" + images + `sandboxImage: none
pullTimeout: 5s
retry: {initialDelay: 10ms, maxDelay: 40ms}
`
}

// testResync is the resync of every test agent.
const testResync = 50 * time.Millisecond

type testEnv struct {
	t       *testing.T
	client  *fake.Clientset
	runtime *critest.Server
	agent   *Agent
	logs    *syncBuffer
	cancel  context.CancelFunc
	done    chan error

	mu      sync.Mutex
	history []syncSnapshot // one per finished sync
}

// syncSnapshot is the counters at the end of one sync, taken by the sync
// loop itself so that no sync is running while they are read.
type syncSnapshot struct {
	syncs                          int64
	listImages, imageStatus, pulls int
	writes                         int
}

func newNode(labels map[string]string, taints ...corev1.Taint) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: testNode, UID: "uid-" + testNode, Labels: labels},
		Spec:       corev1.NodeSpec{Taints: taints},
	}
}

func newConfigMap(data string) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: testCM},
		Data:       map[string]string{ConfigKey: data},
	}
}

// start runs an agent against a fake API server holding objs and an
// in-process CRI runtime; setup may adjust the runtime before it runs.
func start(t *testing.T, setup func(*critest.Server), objs ...runtime.Object) *testEnv {
	t.Helper()
	return startWith(t, setup, nil, objs...)
}

// startWith is start with the agent's Options adjusted by opts.
func startWith(t *testing.T, setup func(*critest.Server), opts func(*Options), objs ...runtime.Object) *testEnv {
	t.Helper()
	return startAPI(t, setup, opts, nil, objs...)
}

// startAPI is startWith with the fake API server adjusted by api (its
// reactors) before the agent starts.
func startAPI(t *testing.T, setup func(*critest.Server), opts func(*Options), api func(*fake.Clientset), objs ...runtime.Object) *testEnv {
	t.Helper()
	e := &testEnv{t: t, client: fake.NewClientset(objs...), runtime: critest.Start(t), logs: &syncBuffer{}, done: make(chan error, 1)}
	if api != nil {
		api(e.client)
	}
	if setup != nil {
		setup(e.runtime)
	}
	rt, err := cri.Connect(context.Background(), e.runtime.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	o := Options{
		Client:    clientset.New(e.client),
		Store:     noderuntime.CRIOnly(rt),
		Namespace: testNS,
		ConfigMap: testCM,
		NodeName:  testNode,
		Log:       slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if opts != nil {
		opts(&o)
	}
	e.agent, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	e.agent.testResync = testResync
	e.agent.rollout.LeaseDuration = 3 * time.Second
	e.agent.onSynced = func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.history = append(e.history, syncSnapshot{
			syncs:       e.agent.syncs.Load(),
			listImages:  e.runtime.Calls("ListImages"),
			imageStatus: e.runtime.Calls("ImageStatus"),
			pulls:       e.runtime.Calls("PullImage"),
			writes:      len(writes(e.client.Actions())),
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- e.agent.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-e.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return within 5s of cancel")
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", e.logs.String())
		}
	})
	return e
}

// writes are the create, update and patch actions, events included.
func writes(actions []k8stesting.Action) []k8stesting.Action {
	var out []k8stesting.Action
	for _, a := range actions {
		switch a.GetVerb() {
		case "create", "update", "patch":
			out = append(out, a)
		}
	}
	return out
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last: %s", what, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *testEnv) node() *corev1.Node {
	e.t.Helper()
	n, err := e.client.CoreV1().Nodes().Get(context.Background(), testNode, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// condition is the Node's preloader.io/ImagesReady condition; zero when
// it has none.
func (e *testEnv) condition() corev1.NodeCondition {
	e.t.Helper()
	c, _ := nodestatus.ConditionFrom(e.node().Status.Conditions)
	return c
}

// nodeWrites counts the writes of the Node itself and of its status.
func nodeWrites(actions []k8stesting.Action) (meta, status int) {
	for _, a := range writes(actions) {
		switch {
		case a.GetResource().Resource != "nodes":
		case a.GetSubresource() == "status":
			status++
		default:
			meta++
		}
	}
	return meta, status
}

func (e *testEnv) status() nodestatus.Status {
	e.t.Helper()
	var st nodestatus.Status
	if raw := e.node().Annotations[nodestatus.AnnotationStatus]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			e.t.Fatalf("status annotation %q: %v", raw, err)
		}
	}
	return st
}

// waitStatus waits until the Node's status annotation satisfies cond.
func (e *testEnv) waitStatus(what string, cond func(nodestatus.Status) bool) nodestatus.Status {
	e.t.Helper()
	var st nodestatus.Status
	eventually(e.t, what, func() (bool, string) {
		st = e.status()
		return cond(st), fmt.Sprintf("%+v", st)
	})
	return st
}

func (e *testEnv) events(ns string) []corev1.Event {
	e.t.Helper()
	list, err := e.client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return list.Items
}

// waitEvent waits for an Event with the reason on the object of the kind
// and returns its message.
func (e *testEnv) waitEvent(ns, kind, reason, contains string) string {
	e.t.Helper()
	var msg string
	eventually(e.t, fmt.Sprintf("%s event %s on %s containing %q", ns, reason, kind, contains), func() (bool, string) {
		var seen []string
		for _, ev := range e.events(ns) {
			seen = append(seen, ev.Reason+": "+ev.Message)
			if ev.InvolvedObject.Kind == kind && ev.Reason == reason && strings.Contains(ev.Message, contains) {
				msg = ev.Message
				return true, ""
			}
		}
		return false, strings.Join(seen, " | ")
	})
	return msg
}

// waitSyncs waits until n more syncs have finished and returns their
// snapshots; the first is taken after the call, so whatever happened before
// it is in all of them.
func (e *testEnv) waitSyncs(n int) []syncSnapshot {
	e.t.Helper()
	e.mu.Lock()
	from := len(e.history)
	e.mu.Unlock()
	eventually(e.t, fmt.Sprintf("%d syncs", n), func() (bool, string) {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.history) >= from+n, fmt.Sprint(len(e.history) - from)
	})
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]syncSnapshot(nil), e.history[from:from+n]...)
}

// wakeAndWait wakes the agent and waits for the sync that follows.
func (e *testEnv) wakeAndWait() {
	e.t.Helper()
	e.mu.Lock()
	from := len(e.history)
	e.mu.Unlock()
	e.agent.Wake()
	eventually(e.t, "a sync after Wake", func() (bool, string) {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.history) > from, ""
	})
}

func (e *testEnv) waitFirstSync() {
	e.t.Helper()
	eventually(e.t, "the first sync", func() (bool, string) {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.history) > 0, ""
	})
}

func TestNoConfigThenConfigMapPreloadsAndReports(t *testing.T) {
	taints := []corev1.Taint{
		{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule},
		{Key: "other", Value: "x", Effect: corev1.TaintEffectNoExecute},
	}
	e := start(t, func(s *critest.Server) {
		s.Add("registry.k8s.io/pause:3.10", 1)
		s.RuntimeVersion = "1.2.3-test"
	}, newNode(nil, taints...))
	srv := httptest.NewServer(e.agent.Handler())
	defer srv.Close()

	// No ConfigMap: not ready, nothing pulled, the Node left alone but
	// for its condition, which says why.
	e.waitFirstSync()
	if code := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz without config = %d, want 503", code)
	}
	if code := get(t, srv.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}
	if n := e.runtime.Calls("PullImage"); n != 0 {
		t.Errorf("%d pulls without a config", n)
	}
	eventually(t, "condition NoConfig", func() (bool, string) {
		c := e.condition()
		return c.Reason == nodestatus.ReasonNoConfig && c.Status == corev1.ConditionFalse, fmt.Sprintf("%+v", c)
	})
	if c := e.condition(); !strings.Contains(c.Message, "no ConfigMap "+testNS+"/"+testCM) || c.LastTransitionTime.IsZero() {
		t.Errorf("condition without a config: %+v", c)
	}
	e.wakeAndWait() // a sync that finds the condition shown writes nothing
	if meta, status := nodeWrites(e.client.Actions()); meta != 0 || status != 1 {
		t.Errorf("Node writes without a config: %d of the Node, %d of its status; want 0, 1: %v", meta, status, writes(e.client.Actions()))
	}
	if n := e.node(); n.Labels[nodestatus.LabelReady] != "" || len(n.Spec.Taints) != 2 || n.Annotations[nodestatus.AnnotationStatus] != "" {
		t.Errorf("Node without a config: labels %v, taints %v, annotations %v; want them as they were", n.Labels, n.Spec.Taints, n.Annotations)
	}

	data := testConfig("  - image: " + appImage + "\n  - image: registry.k8s.io/pause:3.10\n")
	if _, err := e.client.CoreV1().ConfigMaps(testNS).Create(context.Background(), newConfigMap(data), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st := e.waitStatus("ready status", func(st nodestatus.Status) bool { return st.Total == 2 && st.Ready() })
	if want := config.Hash([]byte(data)); st.ConfigHash != want {
		t.Errorf("configHash = %s, want %s", st.ConfigHash, want)
	}
	if len(st.Failed) != 0 || len(st.Missing) != 0 || st.Changed.IsZero() {
		t.Errorf("status = %+v", st)
	}
	if want := (nodestatus.Runtime{Name: "critest", Version: "1.2.3-test"}); st.Runtime == nil || *st.Runtime != want {
		t.Errorf("status runtime = %+v, want the CRI's %+v", st.Runtime, want)
	}
	n := e.node()
	if got := n.Labels[nodestatus.LabelReady]; got != "true" {
		t.Errorf("label %s = %q, want true", nodestatus.LabelReady, got)
	}
	eventually(t, "condition True", func() (bool, string) {
		c := e.condition()
		return c.Status == corev1.ConditionTrue, fmt.Sprintf("%+v", c)
	})
	if c := e.condition(); c.Reason != nodestatus.ReasonImagesPresent || c.Message != "2/2 images present" {
		t.Errorf("condition when ready: %+v, want ImagesPresent, 2/2 images present", c)
	}
	if len(n.Spec.Taints) != 1 || n.Spec.Taints[0].Key != "other" {
		t.Errorf("taints = %+v, want only the other one", n.Spec.Taints)
	}
	if got := e.runtime.Calls("PullImage"); got != 1 {
		t.Errorf("PullImage calls = %d, want 1 (pause was present)", got)
	}
	e.waitEvent(metav1.NamespaceDefault, "Node", ReasonImagesReady, "All 2 images present")

	eventually(t, "/readyz 200", func() (bool, string) {
		code := get(t, srv.URL+"/readyz")
		return code == http.StatusOK, fmt.Sprint(code)
	})
	body := getBody(t, srv.URL+"/metrics")
	for _, want := range []string{
		"preloader_images_desired 2",
		"preloader_images_present 2",
		`preloader_pulls_total{reason="",result="pulled"} 1`,
		"preloader_pull_duration_seconds_count 1",
		"preloader_last_successful_sync_timestamp_seconds",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestInvalidUpdateKeepsLastGoodConfig(t *testing.T) {
	good := testConfig("  - image: " + appImage + "\n")
	e := start(t, nil, newNode(nil), newConfigMap(good))
	e.waitStatus("ready", func(st nodestatus.Status) bool { return st.Total == 1 && st.Ready() })
	goodHash := config.Hash([]byte(good))

	bad := good + "imagez: []\n"
	if _, err := e.client.CoreV1().ConfigMaps(testNS).Update(context.Background(), newConfigMap(bad), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	file := "configmap " + testNS + "/" + testCM + " " + ConfigKey
	cmMsg := e.waitEvent(testNS, "ConfigMap", ReasonInvalidConfig, file)
	nodeMsg := e.waitEvent(metav1.NamespaceDefault, "Node", ReasonInvalidConfig, file)
	t.Logf("InvalidConfig event on the Node: %s", nodeMsg)
	for _, msg := range []string{cmMsg, nodeMsg} {
		if !strings.Contains(msg, "keeping the last good config "+goodHash) || !strings.Contains(msg, file+":6: ") || !strings.Contains(msg, "imagez") {
			t.Errorf("event message %q does not name the problem and the config kept", msg)
		}
	}

	// The last good config still runs: an image removed is restored.
	e.runtime.Remove(appImage)
	pulls := e.runtime.Calls("PullImage")
	eventually(t, "the image restored under the old config", func() (bool, string) {
		return e.runtime.Calls("PullImage") > pulls, ""
	})
	if st := e.status(); st.ConfigHash != goodHash || !st.Ready() {
		t.Errorf("status after invalid update = %+v, want ready with config %s", st, goodHash)
	}
	// One explanation per bad content, not one per sync.
	e.waitSyncs(3)
	if n := countEvents(e.events(testNS), ReasonInvalidConfig); n != 1 {
		t.Errorf("%d InvalidConfig events on the ConfigMap, want 1", n)
	}

	// Deleted: the last good config stays, and the Node says so.
	if err := e.client.CoreV1().ConfigMaps(testNS).Delete(context.Background(), testCM, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitEvent(metav1.NamespaceDefault, "Node", ReasonConfigMissing, goodHash)
	e.runtime.Remove(appImage)
	eventually(t, "the image restored with the ConfigMap gone", func() (bool, string) {
		return e.runtime.Calls("PullImage") > pulls+1, ""
	})
}

func TestNodeSelectorFollowsNodeLabels(t *testing.T) {
	data := testConfig("  - image: " + appImage + "\n  - image: " + gpuImage + "\n    nodeSelector: {gpu: \"true\"}\n")
	e := start(t, nil, newNode(map[string]string{"zone": "a"}), newConfigMap(data))
	e.waitStatus("app only", func(st nodestatus.Status) bool { return st.Total == 1 && st.Ready() })
	if n := e.runtime.Calls("PullImage"); n != 1 {
		t.Fatalf("PullImage calls = %d, want 1 (the gpu image does not apply)", n)
	}

	n := e.node()
	n.Labels["gpu"] = "true"
	if _, err := e.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus("both images", func(st nodestatus.Status) bool { return st.Total == 2 && st.Ready() })
	if n := e.runtime.Calls("PullImage"); n != 2 {
		t.Errorf("PullImage calls = %d, want 2", n)
	}
}

func TestSecretCredentialsReachThePullAndNothingElse(t *testing.T) {
	const (
		password    = "hunter2-very-secret"
		saPassword  = "sa-secret-pw-42"
		saImage     = "corp.example/team/builder:3"
		lateImage   = "corp.example/team/late:1"
		opaqueImage = "corp.example/team/opaque:1"
	)
	var (
		mu   sync.Mutex
		seen = map[string]*runtimeapi.AuthConfig{}
	)
	setup := func(s *critest.Server) {
		s.Pull = func(_ context.Context, ref string, auth *runtimeapi.AuthConfig) error {
			mu.Lock()
			defer mu.Unlock()
			if auth == nil {
				return critest.Errorf("failed to authorize: 401 Unauthorized")
			}
			seen[ref] = auth
			return nil
		}
	}
	data := testConfig("  - image: " + appImage + "\n    pullSecrets: [regcred]\n" +
		"  - image: " + saImage + "\n    serviceAccount: builder\n" +
		"  - image: " + lateImage + "\n    pullSecrets: [later]\n" +
		"  - image: " + opaqueImage + "\n    pullSecrets: [opaque]\n")
	sa := &corev1.ServiceAccount{
		ObjectMeta:       metav1.ObjectMeta{Namespace: testNS, Name: "builder"},
		ImagePullSecrets: []corev1.LocalObjectReference{{Name: "sa-cred"}},
	}
	opaque := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "opaque"},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"password": []byte(password)},
	}
	e := start(t, setup, newNode(nil), newConfigMap(data), sa, opaque,
		dockerSecret("regcred", "corp.example", "robot", password),
		dockerCfgSecret("sa-cred", "corp.example", "builder", saPassword))

	st := e.waitStatus("two pulled, two blocked", func(st nodestatus.Status) bool { return st.Present == 2 && len(st.Failed) == 2 })
	wantReason := "secret " + testNS + "/later not found"
	if st.Failed[0] != (nodestatus.FailedImage{Image: lateImage, Reason: wantReason}) {
		t.Errorf("failed = %+v, want %s: %s", st.Failed, lateImage, wantReason)
	}
	if f := st.Failed[1]; f.Image != opaqueImage || !strings.HasPrefix(f.Reason, "secret "+testNS+"/opaque: ") {
		t.Errorf("failed = %+v, want %s failing for its Secret's type", st.Failed, opaqueImage)
	}
	mu.Lock()
	if _, ok := seen[opaqueImage]; ok {
		t.Errorf("%s was pulled with an unusable secret", opaqueImage)
	}
	if a := seen[appImage]; a == nil || a.Username != "robot" || a.Password != password {
		t.Errorf("auth for %s = %v, want the regcred credentials", appImage, a)
	}
	if a := seen[saImage]; a == nil || a.Username != "builder" || a.Password != saPassword {
		t.Errorf("auth for %s = %v, want the service account's credentials", saImage, a)
	}
	if _, ok := seen[lateImage]; ok {
		t.Errorf("%s was pulled without its secret", lateImage)
	}
	mu.Unlock()
	e.waitEvent(metav1.NamespaceDefault, "Node", ReasonPreloadFailed, lateImage+": "+wantReason)

	// The Secret appears: the informer wakes a sync that pulls the image.
	if _, err := e.client.CoreV1().Secrets(testNS).Create(context.Background(), dockerSecret("later", "corp.example", "late", password), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus("the late image present", func(st nodestatus.Status) bool {
		return st.Present == 3 && len(st.Failed) == 1 && st.Failed[0].Image == opaqueImage
	})

	// The password is in none of what the agent shows.
	var shown []string
	for _, ns := range []string{testNS, metav1.NamespaceDefault} {
		for _, ev := range e.events(ns) {
			shown = append(shown, ev.Message)
		}
	}
	n := e.node()
	shown = append(shown, n.Annotations[nodestatus.AnnotationStatus], e.logs.String())
	for _, s := range shown {
		for _, secret := range []string{password, saPassword, base64.StdEncoding.EncodeToString([]byte("robot:" + password))} {
			if strings.Contains(s, secret) {
				t.Errorf("a secret leaked into %q", s)
			}
		}
	}
}

func TestSandboxAutoAndOwnFieldsRestored(t *testing.T) {
	const pause = "registry.k8s.io/pause:3.10"
	setup := func(s *critest.Server) {
		s.Info = map[string]string{"config": `{"sandboxImage":"` + pause + `"}`}
	}
	data := "images:\n  - image: " + appImage + "\nsandboxImage: auto\n"
	e := start(t, setup, newNode(nil), newConfigMap(data))
	st := e.waitStatus("ready with the sandbox image", func(st nodestatus.Status) bool { return st.Total == 2 && st.Ready() })
	if e.runtime.Calls("PullImage") != 2 {
		t.Errorf("PullImage calls = %d, want 2 (the app and the runtime's sandbox image)", e.runtime.Calls("PullImage"))
	}

	// Someone removes our label and annotation and taints the node again:
	// the agent puts back what it owns and removes the taint, without
	// pulling anything.
	n := e.node()
	delete(n.Labels, nodestatus.LabelReady)
	delete(n.Annotations, nodestatus.AnnotationStatus)
	n.Spec.Taints = []corev1.Taint{{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}}
	if _, err := e.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Node restored", func() (bool, string) {
		n := e.node()
		return n.Labels[nodestatus.LabelReady] == "true" && len(n.Spec.Taints) == 0 && n.Annotations[nodestatus.AnnotationStatus] != "",
			fmt.Sprintf("labels %v taints %v", n.Labels, n.Spec.Taints)
	})
	if got := e.status(); !sameStatus(got, st) {
		t.Errorf("restored status %+v, want %+v", got, st)
	}
	if e.runtime.Calls("PullImage") != 2 {
		t.Errorf("PullImage calls = %d after restoring the Node, want still 2", e.runtime.Calls("PullImage"))
	}
}

func TestAtRestMakesNoWritesAndOneListPerResync(t *testing.T) {
	data := testConfig("  - image: " + appImage + "\n  - image: " + gpuImage + "\n")
	e := start(t, nil, newNode(nil, corev1.Taint{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoExecute}), newConfigMap(data))
	e.waitStatus("ready", func(st nodestatus.Status) bool { return st.Total == 2 && st.Ready() })
	e.waitEvent(metav1.NamespaceDefault, "Node", ReasonImagesReady, "") // Events are written asynchronously
	changed := e.status().Changed

	const resyncs = 10
	snaps := e.waitSyncs(resyncs + 1)
	before, last := snaps[0], snaps[resyncs]
	if d := last.writes - before.writes; d != 0 {
		t.Errorf("%d API writes in %d syncs at rest, want 0: %v", d, resyncs, writes(e.client.Actions())[before.writes:])
	}
	if d := last.listImages - before.listImages; d != resyncs {
		t.Errorf("%d ListImages in %d syncs at rest, want %d", d, resyncs, resyncs)
	}
	if d := last.imageStatus - before.imageStatus; d != 0 {
		t.Errorf("%d ImageStatus calls at rest, want 0", d)
	}
	if d := last.pulls - before.pulls; d != 0 {
		t.Errorf("%d PullImage calls at rest, want 0", d)
	}

	// Image GC removes one: the next resync restores it, and the status,
	// which says the same as before, is not rewritten.
	e.runtime.Remove(gpuImage)
	eventually(t, "the image restored", func() (bool, string) {
		return e.runtime.Calls("PullImage") == last.pulls+1, ""
	})
	snaps = e.waitSyncs(3)
	if d := snaps[2].writes - snaps[0].writes; d != 0 {
		t.Errorf("%d API writes after restoring the image, want 0", d)
	}
	if st := e.status(); !st.Ready() || !st.Changed.Equal(changed) {
		t.Errorf("status after restore = %+v, want ready and changed %v", st, changed)
	}
}

func TestFailuresBackOffAndAreReportedOnce(t *testing.T) {
	var fail sync.Map // ref → error message
	fail.Store(appImage, "failed to resolve reference: 503 Service Unavailable")
	setup := func(s *critest.Server) {
		s.Pull = func(_ context.Context, ref string, _ *runtimeapi.AuthConfig) error {
			if msg, ok := fail.Load(ref); ok {
				return critest.Errorf("%s", msg)
			}
			return nil
		}
	}
	e := start(t, setup, newNode(nil, corev1.Taint{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}), newConfigMap(testConfig("  - image: "+appImage+"\n")))
	st := e.waitStatus("failed", func(st nodestatus.Status) bool { return len(st.Failed) == 1 })
	if st.Failed[0].Reason != failure.Registry.String() || st.Ready() {
		t.Errorf("status = %+v", st)
	}
	n := e.node()
	if n.Labels[nodestatus.LabelReady] != "false" || len(n.Spec.Taints) != 1 {
		t.Errorf("not ready node: labels %v taints %v; want ready=false and the taint kept", n.Labels, n.Spec.Taints)
	}
	// Retries (backoff 10-40ms) pull again and again; the status and
	// the Event stay as they were.
	pulls := e.runtime.Calls("PullImage")
	eventually(t, "retries", func() (bool, string) { return e.runtime.Calls("PullImage") >= pulls+3, "" })
	if n := countEvents(e.events(metav1.NamespaceDefault), ReasonPreloadFailed); n != 1 {
		t.Errorf("%d PreloadFailed events, want 1", n)
	}
	if meta, status := nodeWrites(e.client.Actions()); meta != 1 || status != 1 {
		t.Errorf("%d Node writes and %d of its status while failing the same way, want 1 and 1", meta, status)
	}
	if c := e.condition(); c.Status != corev1.ConditionFalse || c.Reason != nodestatus.ReasonImagesFailed || c.Message != "0/1 images present, 1 failed" {
		t.Errorf("condition while failing: %+v", c)
	}

	fail.Delete(appImage)
	e.waitStatus("recovered", func(st nodestatus.Status) bool { return st.Ready() })
	if taints := e.node().Spec.Taints; len(taints) != 0 {
		t.Errorf("taints after recovery = %v", taints)
	}
}

func TestConfigChangeDuringRunWaitsForIt(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	var canceled sync.Map
	setup := func(s *critest.Server) {
		s.Pull = func(ctx context.Context, ref string, _ *runtimeapi.AuthConfig) error {
			if ref != appImage {
				return nil
			}
			close(started)
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				canceled.Store(ref, true)
				return ctx.Err()
			}
		}
	}
	e := start(t, setup, newNode(nil), newConfigMap(testConfig("  - image: "+appImage+"\n")))
	<-started
	data := testConfig("  - image: " + appImage + "\n  - image: " + gpuImage + "\n")
	if _, err := e.client.CoreV1().ConfigMaps(testNS).Update(context.Background(), newConfigMap(data), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // time for the update to reach the agent
	close(release)
	st := e.waitStatus("the new config applied", func(st nodestatus.Status) bool {
		return st.ConfigHash == config.Hash([]byte(data)) && st.Total == 2 && st.Ready()
	})
	if _, ok := canceled.Load(appImage); ok {
		t.Error("the running pull was canceled by the config change")
	}
	if n := e.runtime.Calls("PullImage"); n != 2 {
		t.Errorf("PullImage calls = %d, want 2: %+v", n, st)
	}
}

func TestCancelStopsPullsPromptly(t *testing.T) {
	pulling := make(chan struct{})
	setup := func(s *critest.Server) {
		s.Pull = func(ctx context.Context, _ string, _ *runtimeapi.AuthConfig) error {
			close(pulling)
			<-ctx.Done() // a pull that would take forever
			return ctx.Err()
		}
	}
	e := start(t, setup, newNode(nil), newConfigMap(testConfig("  - image: "+appImage+"\n")))
	<-pulling
	start := time.Now()
	e.cancel()
	select {
	case err := <-e.done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
		e.done <- err // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of cancel")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Run took %v to stop", d)
	}
	if w := writes(e.client.Actions()); len(w) != 0 {
		t.Errorf("writes on shutdown: %v", w)
	}
}

func dockerSecret(name, registry, user, password string) *corev1.Secret {
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	data := fmt.Sprintf(`{"auths":{%q:{"username":%q,"password":%q,"auth":%q}}}`, registry, user, password, auth)
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(data)},
	}
}

func dockerCfgSecret(name, registry, user, password string) *corev1.Secret {
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	data := fmt.Sprintf(`{%q:{"username":%q,"password":%q,"auth":%q}}`, registry, user, password, auth)
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name},
		Type:       corev1.SecretTypeDockercfg,
		Data:       map[string][]byte{corev1.DockerConfigKey: []byte(data)},
	}
}

func countEvents(events []corev1.Event, reason string) int {
	n := 0
	for _, ev := range events {
		if ev.Reason == reason {
			n += int(max(ev.Count, 1))
		}
	}
	return n
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}

// syncBuffer is a bytes.Buffer safe for the agent's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The kubelet's credential verification policy (KEP-2535) decides ready:
// images it refuses to pods without credentials are named in status and an
// Event, the label says false and the taint stays, until its config allows
// them; refusals at rest make no writes either.
func TestKubeletPolicyDecidesReady(t *testing.T) {
	kubeletConfig := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, kubeletConfig, "kind: KubeletConfiguration\nimagePullCredentialsVerificationPolicy: AlwaysVerify\n")
	node := newNode(nil, corev1.Taint{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule})
	node.Status.NodeInfo.KubeletVersion = "v1.37.2"
	data := testConfig("  - image: " + appImage + "\n  - image: " + gpuImage + "\n")
	e := startWith(t, nil, func(o *Options) { o.KubeletConfig = kubeletConfig }, node, newConfigMap(data))

	st := e.waitStatus("refused by AlwaysVerify", func(st nodestatus.Status) bool { return st.Policy == "AlwaysVerify" && st.Complete() })
	if st.Refused != 2 || len(st.RefusedImages) != 2 || st.Ready() {
		t.Errorf("status %+v: want both images refused, not ready", st)
	}
	n := e.node()
	if got := n.Labels[nodestatus.LabelReady]; got != "false" {
		t.Errorf("label %s = %q with every image refused, want false", nodestatus.LabelReady, got)
	}
	if len(n.Spec.Taints) != 1 {
		t.Errorf("taints = %+v: the not-ready taint must stay while the kubelet refuses the images", n.Spec.Taints)
	}
	e.waitEvent(metav1.NamespaceDefault, "Node", ReasonKubeletRefuses, "preloader allowlist")

	snaps := e.waitSyncs(6)
	if d := snaps[5].writes - snaps[0].writes; d != 0 {
		t.Errorf("%d API writes in 5 syncs with refused images at rest, want 0", d)
	}
	if d := snaps[5].listImages - snaps[0].listImages; d != 5 {
		t.Errorf("%d ListImages in 5 syncs at rest, want 5", d)
	}

	// The admin allows one repository: the other stays refused.
	writeFile(t, kubeletConfig, "imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist: [corp.example/team/app]\n")
	st = e.waitStatus("one refused", func(st nodestatus.Status) bool { return st.Policy == "NeverVerifyAllowlistedImages" })
	if st.Refused != 1 || len(st.RefusedImages) != 1 || st.RefusedImages[0] != gpuImage {
		t.Errorf("status %+v: want only %s refused", st, gpuImage)
	}
	e.waitEvent(metav1.NamespaceDefault, "Node", ReasonKubeletRefuses, "refuses 1 preloaded images to pods without pull credentials: "+gpuImage)

	writeFile(t, kubeletConfig, "imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist: [corp.example/team/*]\n")
	e.waitStatus("ready", func(st nodestatus.Status) bool { return st.Ready() && st.Refused == 0 })
	eventually(t, "label true, taint lifted", func() (bool, string) {
		n := e.node()
		return n.Labels[nodestatus.LabelReady] == "true" && len(n.Spec.Taints) == 0, fmt.Sprintf("%v %v", n.Labels, n.Spec.Taints)
	})

	// Unreadable once read (rewritten in place, removed): the policy last
	// read stays, so that a torn read cannot lift the taint.
	writeFile(t, kubeletConfig, "imagePullCredentialsVerificationPolicy: AlwaysVerify\n")
	e.waitStatus("AlwaysVerify again", func(st nodestatus.Status) bool { return st.Policy == "AlwaysVerify" })
	if err := os.Remove(kubeletConfig); err != nil {
		t.Fatal(err)
	}
	e.waitSyncs(5)
	if st := e.status(); st.Policy != "AlwaysVerify" || st.Refused != 2 {
		t.Errorf("status %+v after the kubelet config went away: want the last policy read kept", st)
	}
}

// A node whose kubelet config cannot be read from the start: the policy is
// unknown, and presence alone decides.
func TestKubeletPolicyUnknown(t *testing.T) {
	node := newNode(nil)
	data := testConfig("  - image: " + appImage + "\n")
	e := startWith(t, nil, func(o *Options) { o.KubeletConfig = filepath.Join(t.TempDir(), "absent.yaml") }, node, newConfigMap(data))
	st := e.waitStatus("policy unknown", func(st nodestatus.Status) bool { return st.Policy == "unknown" })
	if !st.Ready() || st.Refused != 0 {
		t.Errorf("status %+v: an unknown policy refuses nothing", st)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Renamed into place, as config management writes it: a sync never reads half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// With a taint key of its own the agent removes that taint and leaves
// preloader.io/not-ready, which is then someone else's; before a valid
// config its condition says why nothing happens.
func TestTaintKeyAndConfigInvalidCondition(t *testing.T) {
	const startup = "startup-taint.cluster-autoscaler.kubernetes.io/preloader"
	taints := []corev1.Taint{
		{Key: startup, Value: "true", Effect: corev1.TaintEffectNoSchedule},
		{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule},
	}
	cm := newConfigMap("imagez: []\n")
	e := startWith(t, nil, func(o *Options) { o.TaintKey = startup }, newNode(nil, taints...), cm)
	eventually(t, "condition ConfigInvalid", func() (bool, string) {
		c := e.condition()
		return c.Reason == nodestatus.ReasonConfigInvalid && c.Status == corev1.ConditionFalse, fmt.Sprintf("%+v", c)
	})
	if meta, _ := nodeWrites(e.client.Actions()); meta != 0 {
		t.Errorf("%d writes of the Node without a valid config, want 0", meta)
	}

	cm.Data[ConfigKey] = testConfig("  - image: " + appImage + "\n")
	if _, err := e.client.CoreV1().ConfigMaps(testNS).Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus("ready", func(st nodestatus.Status) bool { return st.Total == 1 && st.Ready() })
	eventually(t, "condition True", func() (bool, string) {
		c := e.condition()
		return c.Status == corev1.ConditionTrue, fmt.Sprintf("%+v", c)
	})
	if got := e.node().Spec.Taints; len(got) != 1 || got[0].Key != nodestatus.TaintNotReady {
		t.Errorf("taints %v, want only %s: the agent removes %s", got, nodestatus.TaintNotReady, startup)
	}
}

// An agent that starts without its ConfigMap on a Node its label calls
// ready does not contradict it: it writes nothing.
func TestNoConfigLeavesAReadyNodeAlone(t *testing.T) {
	e := start(t, nil, newNode(map[string]string{nodestatus.LabelReady: "true"}))
	e.waitFirstSync()
	e.wakeAndWait()
	if w := writes(e.client.Actions()); len(w) != 0 {
		t.Errorf("API writes without a config on a ready Node: %v", w)
	}
}

func TestNewRefusesABadTaintKey(t *testing.T) {
	rt, err := cri.Connect(context.Background(), critest.Start(t).Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	_, err = New(Options{Client: clientset.New(fake.NewClientset()), Store: noderuntime.CRIOnly(rt), Namespace: testNS, ConfigMap: testCM, NodeName: testNode,
		TaintKey: "node.kubernetes.io/not-ready"})
	if err == nil || !strings.Contains(err.Error(), "taint key") {
		t.Errorf("New with taint key node.kubernetes.io/not-ready: %v, want a refusal", err)
	}
}
