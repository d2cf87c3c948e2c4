// Package e2e proves kube-preloader on a real node: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, a kubelet and containerd or
// CRI-O, all on 127.0.0.1, started by the tests (integration/harness
// StartNode).
package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// workloadImage builds testdata/workload and pushes it to reg as REPO:TAG
// (a VERSION file makes each tag its own digest).
func workloadImage(t *testing.T, reg *harness.Registry, repo, tag string) harness.TestImage {
	t.Helper()
	return harness.PushTestImages(t, reg, []harness.ImageSpec{{
		Repo: repo,
		Tag:  tag,
		Files: map[string][]byte{
			"workload": harness.BuildGoBinary(t, ".", "./testdata/workload"),
			"VERSION":  []byte(tag + "\n"),
		},
		Entrypoint: []string{"/workload"},
	}})[0]
}

// hostPod is a hostNetwork pod on the test node running image with policy,
// able to reach the API server.
func hostPod(n *harness.Node, name, image string, policy corev1.PullPolicy) *corev1.Pod {
	env := append(n.APIServerEnv(), corev1.EnvVar{Name: "WORKLOAD_CHECK_API", Value: "1"})
	grace := int64(2)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			HostNetwork:                   true,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:            "app",
				Image:           image,
				ImagePullPolicy: policy,
				Env:             env,
			}},
		},
	}
}

// TestCluster proves the one-node cluster itself, on every node kind of
// the matrix: a hostNetwork pod with IfNotPresent pulls and runs, reaches the
// API server with its ServiceAccount token, and its log reads through the
// API server; a pod with Never on an absent image gets the kubelet's
// ErrImageNeverPull, the "before" verdict of the scenarios.
func TestCluster(t *testing.T) {
	for _, k := range []nodeKind{primary, oldest2, oldest16} {
		t.Run(k.String(), func(t *testing.T) { testCluster(t, k) })
	}
}

func testCluster(t *testing.T, k nodeKind) {
	start := time.Now()
	kube := harness.StartKube(t)
	kubeUp := time.Since(start)
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	app := workloadImage(t, reg, "team/app", "1.0")
	imageBuilt := time.Since(start) - kubeUp

	nodeStart := time.Now()
	n := harness.StartNode(t, harness.NodeOptions{Kube: kube, KubeletVersion: k.kubelet, Flavor: k.flavor, Registries: []*harness.Registry{reg}})
	nodeUp := time.Since(nodeStart)
	n.WaitServiceAccount(t, "default", "default", time.Minute)

	ctx := context.Background()
	pods := n.Client.CoreV1().Pods("default")

	// IfNotPresent, image absent: the kubelet pulls it (and the runtime the
	// pause image) and the pod runs.
	created := time.Now()
	if _, err := pods.Create(ctx, hostPod(n, "app-cold", app.Ref, corev1.PullIfNotPresent), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n.WaitPodRunning(t, "default", "app-cold", 2*time.Minute)
	coldRunning := time.Since(created)

	// The same image again: present, nothing to pull.
	created = time.Now()
	if _, err := pods.Create(ctx, hostPod(n, "app-warm", app.Ref, corev1.PullNever), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n.WaitPodRunning(t, "default", "app-warm", time.Minute)
	warmRunning := time.Since(created)

	// The container reached the API server with its own token; its log is
	// read the way kubectl logs reads it, through the API server, which
	// reaches the kubelet on the Node's address, 127.0.0.1.
	want := "api: authenticated as system:serviceaccount:default:default"
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := pods.GetLogs("app-cold", &corev1.PodLogOptions{Container: "app"}).DoRaw(ctx)
		if err == nil && strings.Contains(string(b), want) {
			break
		}
		if time.Now().After(deadline) {
			files, ferr := n.PodLogs("default", "app-cold", "app")
			t.Fatalf("app-cold log does not say %q: %v\n%s\n(log files: %v %s)", want, err, b, ferr, files)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if p, err := pods.Get(ctx, "app-cold", metav1.GetOptions{}); err != nil || p.Status.PodIP != "127.0.0.1" || p.Status.HostIP != "127.0.0.1" {
		t.Errorf("app-cold: want pod and host IP 127.0.0.1: %v %s %s", err, p.Status.PodIP, p.Status.HostIP)
	}

	// Never, image absent: the kubelet's own verdict, ErrImageNeverPull.
	absent := reg.Host + "/team/absent:1.0"
	if _, err := pods.Create(ctx, hostPod(n, "never-absent", absent, corev1.PullNever), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := n.WaitContainerWaiting(t, "default", "never-absent", "ErrImageNeverPull", time.Minute)
	t.Logf("never-absent: %s", harness.DescribePod(p))

	t.Logf("%s: API server up %v; workload image built and pushed %v; StartNode %v (pause image, containerd, "+
		"controllers, kubelet; Ready %v after the kubelet started); pod Running %v with pulls, %v with the image present; "+
		"%v from test start",
		k, kubeUp.Round(time.Millisecond), imageBuilt.Round(time.Millisecond), nodeUp.Round(time.Millisecond),
		n.ReadyAfter.Round(time.Millisecond), coldRunning.Round(time.Millisecond), warmRunning.Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond))
}
