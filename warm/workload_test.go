package warm

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/workloads"
)

const (
	webImage  = "corp.example/shop/web:1.5"
	sideImage = "corp.example/shop/side:1"
)

// web is a Deployment in shop labelled part-of=shop, on nodes pool=web.
func web() *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Labels: map[string]string{"app.kubernetes.io/part-of": "shop"}},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			NodeSelector: map[string]string{"pool": "web"},
			Containers:   []corev1.Container{{Name: "web", Image: webImage}, {Name: "side", Image: sideImage}},
		}}},
	}
}

func mustTarget(t *testing.T, obj any) Target {
	t.Helper()
	tg, err := TargetOf(obj)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// labelled is node with labels added.
func labelled(m *metav1.PartialObjectMetadata, labels map[string]string) *metav1.PartialObjectMetadata {
	if m.Labels == nil {
		m.Labels = map[string]string{}
	}
	for k, v := range labels {
		m.Labels[k] = v
	}
	return m
}

func TestLocate(t *testing.T) {
	const selection = "workloads:\n  - namespaces: [shop]\n"
	images := "images: []\n" + selection
	derived := workloads.Encode(workloads.List{Images: []workloads.Image{
		{Image: sideImage, Workloads: []string{"shop/deployment/web"}},
		{Image: webImage, Workloads: []string{"shop/deployment/web"}},
	}})
	data := map[string]string{ConfigKey: images, workloads.Key: derived}
	cfg, err := workloads.Config("cm", ConfigKey, data)
	if err != nil {
		t.Fatal(err)
	}
	hash := workloads.Hash(data, ConfigKey)
	// Only webImage's list: the controller has not added side yet.
	partial := map[string]string{ConfigKey: images, workloads.Key: workloads.Encode(workloads.List{Images: []workloads.Image{{Image: webImage, Workloads: []string{"shop/deployment/web"}}}})}
	partialCfg, _ := workloads.Config("cm", ConfigKey, partial)
	partialHash := workloads.Hash(partial, ConfigKey)
	// images.yaml lists web itself, on pool=web,zone=a only: it wins.
	own := map[string]string{ConfigKey: "images:\n  - image: " + webImage + "\n    nodeSelector: {zone: a}\n" + selection, workloads.Key: derived}
	ownCfg, err := workloads.Config("cm", ConfigKey, own)
	if err != nil {
		t.Fatal(err)
	}
	ownHash := workloads.Hash(own, ConfigKey)

	st := func(hash string, missing []string, failed ...nodestatus.FailedImage) *nodestatus.Status {
		return &nodestatus.Status{ConfigHash: hash, Total: 3, Present: 3 - len(missing) - len(failed), Missing: missing, Failed: failed}
	}
	pool := map[string]string{"pool": "web"}
	tests := []struct {
		name   string
		data   map[string]string
		nodes  []*metav1.PartialObjectMetadata
		want   map[string]string // IMAGE NODE → state
		silent []string
		done   bool
	}{
		{
			name: "both present on the matching nodes; other pools do not count",
			data: data,
			nodes: []*metav1.PartialObjectMetadata{
				labelled(node("n1", st(hash, nil)), pool), labelled(node("n2", st(hash, nil)), pool),
				labelled(node("other", st("0000", nil)), map[string]string{"pool": "batch"}),
			},
			want: map[string]string{webImage + " n1": StatePresent, webImage + " n2": StatePresent, sideImage + " n1": StatePresent, sideImage + " n2": StatePresent},
			done: true,
		},
		{
			name: "missing, failed, pending, and a node without agent",
			data: data,
			nodes: []*metav1.PartialObjectMetadata{
				labelled(node("n1", st(hash, []string{webImage})), pool),
				labelled(node("n2", st(hash, nil, nodestatus.FailedImage{Image: sideImage, Reason: "credentials"})), pool),
				labelled(node("n3", st("0ld0ld0ld0ld", nil)), pool),
				labelled(node("n4", nil), pool),
			},
			want: map[string]string{
				webImage + " n1": StateMissing, webImage + " n2": StatePresent, webImage + " n3": StatePending,
				sideImage + " n1": StatePresent, sideImage + " n2": StateFailed, sideImage + " n3": StatePending,
			},
			silent: []string{"n4"},
		},
		{
			name:  "an image not in the list yet",
			data:  partial,
			nodes: []*metav1.PartialObjectMetadata{labelled(node("n1", st(partialHash, nil)), pool)},
			want:  map[string]string{webImage + " n1": StatePresent, sideImage + " n1": StatePending},
		},
		{
			name: "images.yaml's entry places the image on fewer nodes",
			data: own,
			nodes: []*metav1.PartialObjectMetadata{
				labelled(node("n1", st(ownHash, nil)), map[string]string{"pool": "web", "zone": "a"}),
				labelled(node("n2", st(ownHash, nil)), map[string]string{"pool": "web", "zone": "b"}),
			},
			want: map[string]string{webImage + " n1": StatePresent, webImage + " n2": StateExcluded, sideImage + " n1": StatePresent, sideImage + " n2": StatePresent},
		},
		{
			name:  "no matching node reports",
			data:  data,
			nodes: []*metav1.PartialObjectMetadata{labelled(node("n1", st(hash, nil)), map[string]string{"pool": "batch"})},
			want:  map[string]string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, h := cfg, hash
			switch {
			case tt.data[ConfigKey] == own[ConfigKey]:
				c, h = ownCfg, ownHash
			case tt.data[workloads.Key] == partial[workloads.Key]:
				c, h = partialCfg, partialHash
			}
			tg := mustTarget(t, web())
			accept := map[string]map[string]bool{}
			for _, img := range c.Images {
				accept[img.Name] = map[string]bool{h: true}
			}
			r := tg.locate(c, h, accept, tt.nodes)
			got := map[string]string{}
			for _, ir := range r.Images {
				for _, n := range ir.Nodes {
					got[ir.Image.Norm+" "+n.Node] = n.State
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("states %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s: %q, want %q (all: %v)", k, got[k], v, got)
				}
			}
			if strings.Join(r.Silent, ",") != strings.Join(tt.silent, ",") {
				t.Errorf("silent %v, want %v", r.Silent, tt.silent)
			}
			if r.Done() != tt.done {
				t.Errorf("Done() = %v, want %v", r.Done(), tt.done)
			}
			var out bytes.Buffer
			r.Print(&out, "kube-preloader", "preloader-config")
			for _, ir := range r.Images {
				if !ir.Listed {
					if !strings.Contains(out.String(), ir.Image.Ref+": not in ConfigMap") {
						t.Errorf("the printed report does not say %s is not listed yet:\n%s", ir.Image.Ref, out.String())
					}
					continue
				}
				for _, n := range ir.Nodes {
					if n.State != StatePresent && !strings.Contains(out.String(), n.Node) {
						t.Errorf("the printed report does not name %s (%s):\n%s", n.Node, n.State, out.String())
					}
				}
			}
		})
	}
}

func TestCovered(t *testing.T) {
	sel := func(s string) map[string]string {
		return map[string]string{ConfigKey: "images: []\n" + s}
	}
	ended := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "migrate"},
		Spec:   batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Image: "corp.example/m:1"}}}}},
		Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobComplete, Status: corev1.ConditionTrue}}}}
	tests := []struct {
		name string
		data map[string]string
		obj  any
		want string // in the error; "" covered
	}{
		{"namespace selected", sel("workloads:\n  - namespaces: [shop]\n"), web(), ""},
		{"selector matches", sel("workloads:\n  - selector: app.kubernetes.io/part-of=shop\n"), web(), ""},
		{"other namespace", sel("workloads:\n  - namespaces: [billing]\n"), web(), "not covered by the workloads section of cm: add a selection for namespace shop"},
		{"no workloads section", sel(""), web(), "or warm its images with --image"},
		{"an ended Job", sel("workloads:\n  - namespaces: [shop]\n"), ended, "has ended"},
	}
	for _, tt := range tests {
		cfg, err := workloads.Config("cm", ConfigKey, tt.data)
		if err != nil {
			t.Fatal(err)
		}
		err = mustTarget(t, tt.obj).Covered(cfg, "cm")
		var nc *NotCoveredError
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v, want covered", tt.name, err)
		case tt.want != "" && (!errors.As(err, &nc) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: %v, want a NotCoveredError with %q", tt.name, err, tt.want)
		}
	}
}
