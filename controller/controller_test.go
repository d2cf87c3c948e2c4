package controller_test

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kube-preloader/kube-preloader/controller"
	"github.com/kube-preloader/kube-preloader/kubeapi/clientset"
	"github.com/kube-preloader/kube-preloader/workloads"
)

const selection = "images: []\nworkloads:\n  - namespaces: [shop]\n"

func deployment(ns, name, image string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "c", Image: image}},
		}}},
	}
}

// TestPublishes follows one ConfigMap through the changes a cluster sees:
// the key appears with the selected workloads' images only, follows a new
// image, is not rewritten when nothing it shows changed, and goes when
// the selection does; images.yaml is never written.
func TestPublishes(t *testing.T) {
	cs := fake.NewClientset(
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kp", Name: "cfg"}, Data: map[string]string{controller.ConfigKey: selection}},
		deployment("shop", "web", "nginx:1.27"),
		deployment("other", "cache", "redis:7"),
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- controller.Run(ctx, controller.Options{
			Client: clientset.NewWithWorkloads(cs), Namespace: "kp", ConfigMap: "cfg", Identity: "r1",
			Debounce: 20 * time.Millisecond,
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	imagesYAML := selection
	key := func() (string, bool) {
		cm, err := cs.CoreV1().ConfigMaps("kp").Get(ctx, "cfg", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := cm.Data[controller.ConfigKey]; got != imagesYAML {
			t.Fatalf("images.yaml is %q, want %q as written", got, imagesYAML)
		}
		v, ok := cm.Data[workloads.Key]
		return v, ok
	}
	eventually := func(what string, cond func(string, bool) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			v, ok := key()
			if cond(v, ok) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s is %q (present %v)", what, workloads.Key, v, ok)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	patches := func() int {
		n := 0
		for _, a := range cs.Actions() {
			if p, ok := a.(k8stesting.PatchAction); ok && p.GetResource().Resource == "configmaps" {
				n++
			}
		}
		return n
	}

	eventually("selected workload", func(v string, _ bool) bool {
		return strings.Contains(v, "docker.io/library/nginx:1.27") && strings.Contains(v, "shop/deployment/web")
	})
	if v, _ := key(); strings.Contains(v, "redis") {
		t.Errorf("a workload outside the selected namespaces is listed:\n%s", v)
	}

	// A status change (same generation): no write.
	before := patches()
	d, err := cs.AppsV1().Deployments("shop").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Status.Replicas = 3
	if _, err := cs.AppsV1().Deployments("shop").UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := patches(); n != before {
		t.Errorf("a status change wrote the ConfigMap %d times", n-before)
	}

	// The next revision's image replaces the old one.
	d.Spec.Template.Spec.Containers[0].Image = "nginx:1.28"
	d.Generation = 2
	if _, err := cs.AppsV1().Deployments("shop").Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("next revision", func(v string, _ bool) bool {
		return strings.Contains(v, "nginx:1.28") && !strings.Contains(v, "nginx:1.27")
	})

	// A Job's images count until it ends; its end is a status change.
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "migrate", Generation: 1},
		Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "m", Image: "corp.example/migrate:3"}},
		}}},
	}
	if job, err = cs.BatchV1().Jobs("shop").Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("a running Job", func(v string, _ bool) bool { return strings.Contains(v, "corp.example/migrate:3") })
	job.Status.Conditions = []batchv1.JobCondition{{Type: batchv1.JobComplete, Status: corev1.ConditionTrue}}
	if _, err := cs.BatchV1().Jobs("shop").UpdateStatus(ctx, job, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("a Job that completed", func(v string, _ bool) bool { return !strings.Contains(v, "corp.example/migrate:3") })

	// No selection: the key goes.
	cm, _ := cs.CoreV1().ConfigMaps("kp").Get(ctx, "cfg", metav1.GetOptions{})
	imagesYAML = "images: []\n"
	cm.Data[controller.ConfigKey] = imagesYAML
	if _, err := cs.CoreV1().ConfigMaps("kp").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("no selection", func(_ string, ok bool) bool { return !ok })
}
