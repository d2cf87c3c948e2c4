package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-preloader/kube-preloader/controller"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// controllerSA is the controller's ServiceAccount, as manifests/controller
// names it.
const controllerSA = "preloader-controller"

// startController runs `preloader controller` as its own process, as the
// chart's Deployment runs it, and stops it with SIGTERM at the test's end.
// Its log is returned by the func.
func startController(t *testing.T, bin, kubeconfig, identity string) (stop func(), log func() string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "controller.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "controller", "--configmap", agentNS+"/"+harness.AgentConfigMap, "--kubeconfig", kubeconfig, "--identity", identity)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	log = func() string { b, _ := os.ReadFile(path); return string(b) }
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("controller %s did not stop within 15s of SIGTERM", identity)
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("controller %s log:\n%s", identity, log())
		}
	})
	return stop, log
}

// workloadsKey is the ConfigMap's workloads.yaml, and whether it is there.
func workloadsKey(t *testing.T, c kubernetes.Interface) (string, bool) {
	t.Helper()
	cm, err := c.CoreV1().ConfigMaps(agentNS).Get(context.Background(), harness.AgentConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v, ok := cm.Data[workloads.Key]
	return v, ok
}

// eventuallyKey waits until cond accepts workloads.yaml; cond says what is
// still wrong, "" when nothing.
func eventuallyKey(t *testing.T, c kubernetes.Interface, timeout time.Duration, what string, cond func(data string, ok bool) string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, ok := workloadsKey(t, c)
		wrong := cond(data, ok)
		if wrong == "" {
			return data
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %s, %s; %s:\n%s", what, timeout, wrong, workloads.Key, data)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func lists(img string) func(string, bool) string {
	return func(data string, ok bool) string {
		if !ok {
			return "no key"
		}
		if !strings.Contains(data, "image: "+img+"\n") {
			return img + " is not listed"
		}
		return ""
	}
}

func deploymentOf(ns, name, image string, labels, nodeSelector map[string]string) *appsv1.Deployment {
	sel := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: sel},
				Spec: corev1.PodSpec{
					NodeSelector: nodeSelector,
					Containers:   []corev1.Container{{Name: "app", Image: image}},
				},
			},
		},
	}
}

func createNamespaces(t *testing.T, c kubernetes.Interface, names ...string) {
	t.Helper()
	for _, ns := range names {
		if _, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestControllerLeaderElection: two electors as the controller's
// ServiceAccount, under manifests/controller's RBAC and the lease-names
// policy: one leads, never both; when the leader stops, the other leads
// within the lease duration. The policy holds the controller to its one
// Lease, and keeps the agents off it.
func TestControllerLeaderElection(t *testing.T) {
	k := harness.StartKube(t)
	k.Kubectl(t, "apply", "-k", "../manifests")
	k.Kubectl(t, "apply", "-k", "../manifests/controller")

	client, err := kubeapi.NewForConfig(k.ConfigFor(t, agentNS, controllerSA))
	if err != nil {
		t.Fatal(err)
	}
	var leading [2]atomic.Bool
	var both atomic.Bool
	ctxs := make([]context.CancelFunc, 2)
	results := make([]chan error, 2)
	for i := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[i], results[i] = cancel, make(chan error, 1)
		e := &controller.Elector{Leases: client.Leases(agentNS), Name: controller.LeaseName, Identity: []string{"replica-a", "replica-b"}[i]}
		go func() {
			results[i] <- e.Run(ctx, func(ctx context.Context) error {
				leading[i].Store(true)
				if leading[1-i].Load() {
					both.Store(true)
				}
				<-ctx.Done()
				leading[i].Store(false)
				return ctx.Err()
			})
		}()
	}
	t.Cleanup(func() {
		for _, c := range ctxs {
			c()
		}
	})
	leader := -1
	deadline := time.Now().Add(10 * time.Second)
	for leader < 0 {
		for i := range 2 {
			if leading[i].Load() {
				leader = i
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no elector leads after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Several renewals and standby retries.
	time.Sleep(2*controller.DefaultRenewEvery + time.Second)
	if both.Load() || leading[1-leader].Load() {
		t.Fatal("both electors lead at once")
	}
	if !leading[leader].Load() {
		t.Fatal("the leader stopped leading by itself")
	}

	stopped := time.Now()
	ctxs[leader]()
	if err := <-results[leader]; !errors.Is(err, context.Canceled) {
		t.Errorf("the stopped leader's Run: %v, want context.Canceled", err)
	}
	other := 1 - leader
	for !leading[other].Load() {
		if time.Since(stopped) > controller.DefaultLeaseDuration {
			t.Fatalf("the standby does not lead %s after the leader stopped", controller.DefaultLeaseDuration)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the standby leads %s after the leader stopped", time.Since(stopped).Round(time.Millisecond))
	if both.Load() {
		t.Error("both electors led at once")
	}

	// Another holder in the Lease (a replica that took it while this one
	// could not renew): the leader's next renewal finds it, stops its
	// work and returns ErrLostLeadership.
	l, err := k.Client.CoordinationV1().Leases(agentNS).Get(context.Background(), controller.LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	intruder := "replica-c"
	now := metav1.NewMicroTime(time.Now())
	l.Spec.HolderIdentity, l.Spec.RenewTime = &intruder, &now
	if _, err := k.Client.CoordinationV1().Leases(agentNS).Update(context.Background(), l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	taken := time.Now()
	select {
	case err := <-results[other]:
		if !errors.Is(err, controller.ErrLostLeadership) {
			t.Errorf("Run of the leader whose Lease was taken: %v, want ErrLostLeadership", err)
		}
		if leading[other].Load() {
			t.Error("the work of the leader that lost its Lease still runs")
		}
		t.Logf("the leader saw its Lease taken %s after", time.Since(taken).Round(time.Millisecond))
	case <-time.After(controller.DefaultRenewEvery + 5*time.Second):
		t.Fatal("the leader did not notice another holder of its Lease")
	}

	// The lease-names policy: the controller may create only its own
	// Lease; the agents may not write it.
	ctx := context.Background()
	_, err = client.Leases(agentNS).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "preloader-slot-0"}}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "only the Lease preloader-controller") {
		t.Errorf("the controller creating preloader-slot-0: %v, want a refusal by kube-preloader-lease-names", err)
	}
	agentCS := kubernetes.NewForConfigOrDie(k.ConfigFor(t, agentNS, agentSA))
	l, err = agentCS.CoordinationV1().Leases(agentNS).Get(ctx, controller.LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Spec.HolderIdentity = new(string)
	*l.Spec.HolderIdentity = "node-1"
	if _, err := agentCS.CoordinationV1().Leases(agentNS).Update(ctx, l, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "but preloader-controller") {
		t.Errorf("an agent taking the controller's Lease: %v, want a refusal by kube-preloader-lease-names", err)
	}
}

// TestControllerWorkloads: `preloader controller` as the chart installs it
// (helm install with a workloads section, the controller run as its
// ServiceAccount) and two agents on real containerd 2.x, one node in pool
// a and one in pool b. A Deployment created in a covered namespace gets
// its image onto the node its nodeSelector names, and only there, without
// any ConfigMap edit; its next revision's image follows and the old one
// leaves the list; workloads in another namespace or outside the
// selector are not preloaded. The key survives `helm upgrade` and
// `preloader warm --image`.
func TestControllerWorkloads(t *testing.T) {
	k := harness.StartKube(t)
	c := k.Client
	ctx := context.Background()
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "shop/web", Tag: "1.0", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "shop/web", Tag: "1.1", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "shop/report", Tag: "2.0", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "shop/batch", Tag: "1.0", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "lab/web", Tag: "1.0", OwnLayers: 1, LayerSize: 32 << 10},
	})
	web10, web11, report, batch, labWeb := imgs[0].Ref, imgs[1].Ref, imgs[2].Ref, imgs[3].Ref, imgs[4].Ref

	createNamespaces(t, c, agentNS, "shop", "lab")
	values := filepath.Join(t.TempDir(), "values.yaml")
	writeValues := func(extraImage string) {
		v := "distribution: kubeadm\nconfig:\n  sandboxImage: none\n  resync: 3s\n  retry: {initialDelay: 200ms, maxDelay: 2s}\n  images:"
		if extraImage != "" {
			v += "\n    - image: " + extraImage + "\n"
		} else {
			v += " []\n"
		}
		v += "  workloads:\n    - namespaces: [shop]\n      selector: tier=web\n"
		if err := os.WriteFile(values, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeValues("")
	harness.MustHelm(t, k.Kubeconfig, "install", "kube-preloader", chartDir, "-n", agentNS, "-f", values)
	if _, err := c.AppsV1().Deployments(agentNS).Get(ctx, "preloader-controller", metav1.GetOptions{}); err != nil {
		t.Fatalf("the chart with workloads renders no controller Deployment: %v", err)
	}
	startController(t, preloaderBin, k.KubeconfigFor(t, agentNS, controllerSA), "controller-0")
	nodes := map[string]string{"pool-a-1": "a", "pool-b-1": "b"}
	agents := map[string]*harness.Agent{}
	for n, pool := range nodes {
		createNode(t, c, n, nil, func(node *corev1.Node) { node.Labels["pool"] = pool })
		ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2})
		agents[n] = startAgent(t, k.KubeconfigForPodOn(t, agentNS, agentSA, n), n, ctrd)
	}
	// Each node shows the config of both keys as they are now, with this
	// many images, all present.
	nodesShow := func(what string, want map[string]int) {
		t.Helper()
		cm, err := c.CoreV1().ConfigMaps(agentNS).Get(ctx, harness.AgentConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		hash := workloads.Hash(cm.Data, "images.yaml")
		for n, total := range want {
			agents[n].Eventually(t, 60*time.Second, what+" on "+n, func() string { return harness.ViewNode(c, n).Shows(hash, total, total) })
		}
	}

	web := deploymentOf("shop", "web", web10, map[string]string{"tier": "web"}, map[string]string{"pool": "a"})
	if _, err := c.AppsV1().Deployments("shop").Create(ctx, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Not selected: another label, another namespace.
	for _, d := range []*appsv1.Deployment{
		deploymentOf("shop", "batch", batch, map[string]string{"tier": "batch"}, nil),
		deploymentOf("lab", "web", labWeb, map[string]string{"tier": "web"}, nil),
	} {
		if _, err := c.AppsV1().Deployments(d.Namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Another kind, selected, placed nowhere in particular.
	cron := &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "report", Labels: map[string]string{"tier": "web"}},
		Spec: batchv1.CronJobSpec{Schedule: "0 * * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "r", Image: report}}},
		}}}},
	}
	if _, err := c.BatchV1().CronJobs("shop").Create(ctx, cron, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	data := eventuallyKey(t, c, 10*time.Second, "the selected Deployment and CronJob", func(data string, ok bool) string {
		if w := lists(web10)(data, ok); w != "" {
			return w
		}
		return lists(report)(data, ok)
	})
	for _, img := range []string{batch, labWeb} {
		if strings.Contains(data, img) {
			t.Errorf("%s lists %s, of a workload outside the selection", workloads.Key, img)
		}
	}
	if !strings.Contains(data, "shop/deployment/web") || !strings.Contains(data, "pool") {
		t.Errorf("%s does not name the workload and its nodeSelector:\n%s", workloads.Key, data)
	}
	// pool a: web and report; pool b: report only.
	nodesShow("the selected workloads' images", map[string]int{"pool-a-1": 2, "pool-b-1": 1})

	// The next revision: its image replaces the old one.
	web, err := c.AppsV1().Deployments("shop").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	web.Spec.Template.Spec.Containers[0].Image = web11
	if _, err := c.AppsV1().Deployments("shop").Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	data = eventuallyKey(t, c, 10*time.Second, "the next revision", func(data string, ok bool) string {
		if w := lists(web11)(data, ok); w != "" {
			return w
		}
		if strings.Contains(data, web10) {
			return "the old image is still listed"
		}
		return ""
	})
	nodesShow("the next revision's image", map[string]int{"pool-a-1": 2, "pool-b-1": 1})

	// What writes the ConfigMap besides the controller keeps the key: a
	// watch sees every version, so a key erased and restored shows too.
	w, err := c.CoreV1().ConfigMaps(agentNS).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + harness.AgentConfigMap})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	erased := make(chan string, 100)
	go func() {
		for ev := range w.ResultChan() {
			if cm, ok := ev.Object.(*corev1.ConfigMap); ok && ev.Type == watch.Modified {
				if _, has := cm.Data[workloads.Key]; !has {
					erased <- cm.ResourceVersion
				}
			}
		}
	}()

	writeValues("corp.example/tools/upgrade:1.0")
	harness.MustHelm(t, k.Kubeconfig, "upgrade", "kube-preloader", chartDir, "-n", agentNS, "-f", values)
	images, _ := getImagesYAML(t, c, agentNS, harness.AgentConfigMap)
	if !strings.Contains(images, "corp.example/tools/upgrade:1.0") {
		t.Fatalf("helm upgrade did not change images.yaml:\n%s", images)
	}
	if got, _ := workloadsKey(t, c); got != data {
		t.Errorf("after helm upgrade, %s is\n%s\nwant as before:\n%s", workloads.Key, got, data)
	}
	// After helm: helm 4 applies server-side, and refuses to take
	// images.yaml back from warm (existingConfigMap is for that).
	out, err := exec.Command(preloaderBin, "warm", "--configmap", agentNS+"/"+harness.AgentConfigMap, "--image", "corp.example/tools/warm:1.0", "--kubeconfig", k.Kubeconfig).CombinedOutput()
	if err != nil {
		t.Fatalf("preloader warm: %v\n%s", err, out)
	}
	images, _ = getImagesYAML(t, c, agentNS, harness.AgentConfigMap)
	if !strings.Contains(images, "corp.example/tools/warm:1.0") {
		t.Fatalf("warm did not add its image:\n%s", images)
	}
	if got, _ := workloadsKey(t, c); got != data {
		t.Errorf("after preloader warm, %s is\n%s\nwant as before:\n%s", workloads.Key, got, data)
	}

	time.Sleep(2 * controller.DefaultDebounce)
	select {
	case rv := <-erased:
		t.Errorf("version %s of the ConfigMap had no %s: erased by warm or helm upgrade", rv, workloads.Key)
	default:
	}
	cm, err := c.CoreV1().ConfigMaps(agentNS).Get(ctx, harness.AgentConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	owner := ""
	for _, f := range cm.ManagedFields {
		if f.FieldsV1 != nil && strings.Contains(string(f.FieldsV1.Raw), `"f:`+workloads.Key+`"`) {
			owner += f.Manager + " "
		}
	}
	if owner != controller.FieldManager+" " {
		t.Errorf("%s is owned by %q in managedFields, want %s alone", workloads.Key, owner, controller.FieldManager)
	}
}
