package workloads_test

import (
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/workloads"
)

func deployment(ns, name string, labels map[string]string, spec corev1.PodSpec) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: spec}},
	}
}

func containers(images ...string) corev1.PodSpec {
	var s corev1.PodSpec
	for _, img := range images {
		s.Containers = append(s.Containers, corev1.Container{Image: img})
	}
	return s
}

func of(t *testing.T, obj any) workloads.Workload {
	t.Helper()
	w, ok := workloads.Of(obj)
	if !ok {
		t.Fatalf("Of(%T): not a workload", obj)
	}
	return w
}

func TestParseRef(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "shop/deployment/web", want: "shop/deployment/web"},
		{in: "shop/Deployments/web", want: "shop/deployment/web"},
		{in: "shop/deploy/web", want: "shop/deployment/web"},
		{in: "batch/cj/nightly", want: "batch/cronjob/nightly"},
		{in: "shop/sts/db", want: "shop/statefulset/db"},
		{in: "shop/web", err: `want NAMESPACE/KIND/NAME`},
		{in: "shop/pod/web", err: `kind "pod" is not one of`},
		{in: "/deployment/web", err: `want NAMESPACE/KIND/NAME`},
	} {
		r, err := workloads.ParseRef(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseRef(%q) = %v, %v; want error %q", tc.in, r, err, tc.err)
		case tc.err == "" && (err != nil || r.String() != tc.want):
			t.Errorf("ParseRef(%q) = %v, %v; want %s", tc.in, r, err, tc.want)
		}
	}
}

func TestImages(t *testing.T) {
	spec := containers("nginx", "corp.example/app:1", "nginx:latest")
	spec.InitContainers = []corev1.Container{{Image: "busybox:1.36"}}
	spec.Volumes = []corev1.Volume{
		{Name: "model", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: "corp.example/models/llm:7b"}}},
		{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	got := workloads.Images(of(t, deployment("shop", "web", nil, spec)))
	want := []string{"docker.io/library/busybox:1.36", "docker.io/library/nginx:latest", "corp.example/app:1", "corp.example/models/llm:7b"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Images = %q, want %q", got, want)
	}
}

func TestOf(t *testing.T) {
	tmpl := corev1.PodTemplateSpec{Spec: containers("a:1")}
	done := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: "j"}, Spec: batchv1.JobSpec{Template: tmpl},
		Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobComplete, Status: corev1.ConditionTrue}}}}
	owned := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: "j-123", OwnerReferences: []metav1.OwnerReference{{Kind: "CronJob", Name: "j", Controller: ptr.To(true)}}}, Spec: batchv1.JobSpec{Template: tmpl}}
	for _, tc := range []struct {
		obj         any
		ref         string
		done, owned bool
	}{
		{&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: "s"}, Spec: appsv1.StatefulSetSpec{Template: tmpl}}, "n/statefulset/s", false, false},
		{&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: "d"}, Spec: appsv1.DaemonSetSpec{Template: tmpl}}, "n/daemonset/d", false, false},
		{&batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: "c"}, Spec: batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: tmpl}}}}, "n/cronjob/c", false, false},
		{done, "n/job/j", true, false},
		{owned, "n/job/j-123", false, true},
	} {
		w := of(t, tc.obj)
		if w.Ref.String() != tc.ref || w.Done != tc.done || w.Owned != tc.owned || len(workloads.Images(w)) != 1 {
			t.Errorf("Of(%T) = %v done=%v owned=%v images=%q; want %s done=%v owned=%v", tc.obj, w.Ref, w.Done, w.Owned, workloads.Images(w), tc.ref, tc.done, tc.owned)
		}
		if workloads.Selected([]config.Workload{everything()}, w) == (tc.done || tc.owned) {
			t.Errorf("Selected(%s) = %v", tc.ref, !(tc.done || tc.owned))
		}
	}
	if _, ok := workloads.Of(&corev1.Pod{}); ok {
		t.Error("Of(Pod) is a workload")
	}
}

func everything() config.Workload {
	cfg, err := config.Parse("t.yaml", []byte("images: []\nworkloads: [{}]\n"))
	if err != nil {
		panic(err)
	}
	return cfg.Workloads[0]
}

func selections(t *testing.T, yaml string) []config.Workload {
	t.Helper()
	cfg, err := config.Parse("t.yaml", []byte("images: []\nworkloads:\n"+yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Workloads
}

func TestPlacement(t *testing.T) {
	in := func(k string, v ...string) corev1.NodeSelectorRequirement {
		return corev1.NodeSelectorRequirement{Key: k, Operator: corev1.NodeSelectorOpIn, Values: v}
	}
	required := func(terms ...corev1.NodeSelectorTerm) *corev1.Affinity {
		return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms}}}
	}
	preferred := &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{Weight: 1, Preference: corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{in("zone", "a")}}}}}}
	for _, tc := range []struct {
		name     string
		selector map[string]string
		affinity *corev1.Affinity
		want     []corev1.NodeSelectorTerm
	}{
		{name: "anywhere"},
		{name: "preferred only is not a constraint", affinity: preferred},
		{name: "nodeSelector", selector: map[string]string{"pool": "gpu", "arch": "amd64"},
			want: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{in("arch", "amd64"), in("pool", "gpu")}}}},
		{name: "required terms", affinity: required(
			corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{in("zone", "a")}},
			corev1.NodeSelectorTerm{MatchFields: []corev1.NodeSelectorRequirement{in("metadata.name", "n1")}}),
			want: []corev1.NodeSelectorTerm{
				{MatchExpressions: []corev1.NodeSelectorRequirement{in("zone", "a")}},
				{MatchFields: []corev1.NodeSelectorRequirement{in("metadata.name", "n1")}},
			}},
		{name: "nodeSelector joins every term", selector: map[string]string{"pool": "gpu"}, affinity: required(
			corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{in("zone", "a")}},
			corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{in("zone", "b")}}),
			want: []corev1.NodeSelectorTerm{
				{MatchExpressions: []corev1.NodeSelectorRequirement{in("zone", "a"), in("pool", "gpu")}},
				{MatchExpressions: []corev1.NodeSelectorRequirement{in("zone", "b"), in("pool", "gpu")}},
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := containers("a:1")
			spec.NodeSelector, spec.Affinity = tc.selector, tc.affinity
			got := workloads.Placement(of(t, deployment("n", "d", nil, spec)))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Placement = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDerive(t *testing.T) {
	gpu := containers("corp.example/train:2", "corp.example/shared:1")
	gpu.NodeSelector = map[string]string{"pool": "gpu"}
	withSecrets := containers("corp.example/private:1")
	withSecrets.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
	withSecrets.ServiceAccountName = "builder"
	objs := []any{
		deployment("shop", "web", map[string]string{"team": "shop"}, containers("corp.example/web:1", "corp.example/shared:1")),
		deployment("shop", "train", map[string]string{"team": "shop"}, gpu),
		deployment("shop", "other", map[string]string{"team": "ads"}, containers("corp.example/ads:1")),
		deployment("kube-system", "dns", map[string]string{"team": "shop"}, containers("corp.example/dns:1")),
		deployment("vault", "app", nil, withSecrets),
	}
	var ws []workloads.Workload
	for _, o := range objs {
		ws = append(ws, of(t, o))
	}
	sa := func(ns, name string) *corev1.ServiceAccount {
		if ns == "vault" && name == "builder" {
			return &corev1.ServiceAccount{ImagePullSecrets: []corev1.LocalObjectReference{{Name: "sa-cred"}}}
		}
		return nil
	}
	sel := selections(t, "  - {namespaces: [shop], selector: team=shop}\n  - {namespaces: [vault], usePullSecrets: true}\n")
	got := workloads.Derive(sel, ws, sa)
	want := workloads.List{Images: []workloads.Image{
		{Image: "corp.example/private:1", Workloads: []string{"vault/deployment/app"}, PullSecrets: []string{"vault/regcred", "vault/sa-cred"}},
		// Used anywhere by web, so on every node.
		{Image: "corp.example/shared:1", Workloads: []string{"shop/deployment/train", "shop/deployment/web"}},
		{Image: "corp.example/train:2", Workloads: []string{"shop/deployment/train"}, NodeSelectorTerms: []workloads.Term{
			{MatchExpressions: []workloads.Requirement{{Key: "pool", Operator: "In", Values: []string{"gpu"}}}},
		}},
		{Image: "corp.example/web:1", Workloads: []string{"shop/deployment/web"}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Derive =\n%+v\nwant\n%+v", got, want)
	}
	// Secrets are copied only where a selection asks for them.
	sel[1].UsePullSecrets = false
	if got := workloads.Derive(sel, ws, sa); got.Images[0].PullSecrets != nil {
		t.Errorf("without usePullSecrets: %+v", got.Images[0])
	}
	if got := workloads.Derive(nil, ws, sa); len(got.Images) != 0 {
		t.Errorf("no selection: %+v", got)
	}
}

func TestEncodeDecode(t *testing.T) {
	l := workloads.List{Images: []workloads.Image{
		{Image: "corp.example/train:2", Workloads: []string{"shop/deployment/train"}, NodeSelectorTerms: []workloads.Term{
			{MatchExpressions: []workloads.Requirement{{Key: "pool", Operator: "In", Values: []string{"gpu"}}}},
		}},
		{Image: "corp.example/web:1", Workloads: []string{"shop/deployment/web"}, PullSecrets: []string{"shop/regcred"}},
	}}
	data := workloads.Encode(l)
	if !strings.HasPrefix(data, "# Written by preloader controller") || workloads.Encode(l) != data {
		t.Errorf("Encode is not stable or has no header:\n%s", data)
	}
	got, err := workloads.Decode("w.yaml", data)
	if err != nil || !reflect.DeepEqual(got, l) {
		t.Errorf("Decode(Encode(l)) = %+v, %v", got, err)
	}
	if got, err := workloads.Decode("w.yaml", workloads.Encode(workloads.List{})); err != nil || len(got.Images) != 0 {
		t.Errorf("empty list: %+v, %v", got, err)
	}
	for _, tc := range []struct{ data, want string }{
		{"images:\n  - image: a:1\n    workload: [x]\n", "w.yaml: yaml: unmarshal errors:\n  line 3: field workload not found"},
		{"images:\n  - image: a:1\n  - image: \"UPPER:1\"\n", `w.yaml:3: invalid image "UPPER:1"`},
		{"images: [\n", "w.yaml: yaml: line 1"},
	} {
		if _, err := workloads.Decode("w.yaml", tc.data); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Decode(%q) = %v, want an error starting %q", tc.data, err, tc.want)
		}
	}
}

func TestMerge(t *testing.T) {
	cfg, err := config.Parse("images.yaml", []byte("images:\n  - image: corp.example/web:1\n    pullSecrets: [regcred]\nrefresh: 1h\n"))
	if err != nil {
		t.Fatal(err)
	}
	workloads.Merge(cfg, workloads.List{Images: []workloads.Image{
		{Image: "corp.example/web:1", Workloads: []string{"shop/deployment/web"}},
		{Image: "corp.example/train:2", Workloads: []string{"shop/deployment/train"}, NodeSelectorTerms: []workloads.Term{
			{MatchExpressions: []workloads.Requirement{{Key: "pool", Operator: "In", Values: []string{"gpu"}}}},
		}},
	}})
	if len(cfg.Images) != 2 {
		t.Fatalf("images = %+v", cfg.Images)
	}
	if web := cfg.Images[0]; web.Workloads != nil || len(web.PullSecrets) != 1 {
		t.Errorf("the images.yaml entry does not win: %+v", web)
	}
	train := cfg.Images[1]
	if train.Name != "corp.example/train:2" || train.Refresh != cfg.Refresh || len(train.NodeAffinity) != 1 || train.NodeAffinity[0].MatchExpressions[0].Values[0] != "gpu" {
		t.Errorf("derived image = %+v", train)
	}
}

func TestHash(t *testing.T) {
	plain := map[string]string{"images.yaml": "images: []\n"}
	with := map[string]string{"images.yaml": "images: []\n", workloads.Key: "images: []\n"}
	if workloads.Hash(plain, "images.yaml") != config.Hash([]byte("images: []\n")) {
		t.Error("without a derived list the hash is not images.yaml's")
	}
	if workloads.Hash(with, "images.yaml") == workloads.Hash(plain, "images.yaml") {
		t.Error("the derived list does not change the hash")
	}
}
