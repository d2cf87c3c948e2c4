// Command manifests renders manifests/ from the Helm chart, so that the
// chart is the one description of the deployment and kustomize users get
// the same objects: manifests/base is `helm template` with the chart's
// defaults (distribution auto without a cluster is kubeadm's layout), and
// manifests/overlays/D holds only what distribution: D changes, as
// strategic merge patches. Before writing, every overlay is built with
// kubectl kustomize and must give the objects the chart renders for its
// distribution. `make manifests` runs it.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"sigs.k8s.io/yaml"
)

const (
	chartName = "kube-preloader"
	release   = "kube-preloader"
	namespace = "kube-preloader"
	source    = "charts/kube-preloader"
	// controllerFile is the chart's template of preloader controller.
	controllerFile = "controller.yaml"
)

// distributions are the chart's distribution values but auto; kubeadm is
// the base's.
var distributions = []string{"kubeadm", "k3s", "rke2", "microk8s", "talos"}

// helmLabels are the labels the chart adds for a Helm release. Objects
// applied with kubectl belong to no release: managed-by: Helm would claim
// one, and the chart's version and appVersion would change every file at
// each release without changing an object.
var helmLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"}

var helmLabelLine = regexp.MustCompile(`^\s+(helm\.sh/chart|app\.kubernetes\.io/(managed-by|instance|version)):`)

func header(what string) string {
	return "# Generated from " + source + " by `make manifests` (scripts/manifests):\n" +
		"# edit the chart and run it; a test fails when this file is stale.\n" + what
}

func main() {
	helm := flag.String("helm", "helm", "the helm binary")
	kubectl := flag.String("kubectl", "kubectl", "the kubectl binary, to build every overlay before writing")
	chart := flag.String("chart", source, "the chart's directory")
	out := flag.String("out", "manifests", "the directory to write (its contents are replaced)")
	flag.Parse()
	if err := run(context.Background(), *helm, *kubectl, *chart, *out); err != nil {
		fmt.Fprintln(os.Stderr, "manifests:", err)
		os.Exit(1)
	}
}

// doc is one object of helm's output: the template file it came from, its
// text and its parsed form.
type doc struct {
	file, text string
	obj        map[string]any
}

func (d doc) key() string {
	meta, _ := d.obj["metadata"].(map[string]any)
	return fmt.Sprintf("%v/%v/%v", d.obj["kind"], meta["namespace"], meta["name"])
}

func run(ctx context.Context, helm, kubectl, chart, out string) error {
	rendered := map[string][]doc{}
	for _, d := range distributions {
		docs, err := render(ctx, helm, chart, d)
		if err != nil {
			return err
		}
		rendered[d] = docs
	}
	files := map[string]string{}
	base := rendered["kubeadm"]
	var resources []string
	byFile := map[string][]string{}
	for _, d := range base {
		if _, ok := byFile[d.file]; !ok {
			resources = append(resources, d.file)
		}
		byFile[d.file] = append(byFile[d.file], d.text)
	}
	for f, texts := range byFile {
		files["base/"+f] = header(strings.Join(texts, "---\n"))
	}
	files["base/kustomization.yaml"] = header(`# The chart's objects with its default values. Overlays set the image
# (images: [{name: ghcr.io/kube-preloader/preloader, newName: …, newTag: …}])
# and the ConfigMap's images.yaml. Every object names its namespace itself,
# so an overlay that moves it must also patch the DaemonSet's --configmap
# argument, the Roles' configmap resourceNames and the policies' agent user.
` + kustomization(resources, nil))
	files["kustomization.yaml"] = header(`# kube-preloader for kubeadm, EKS, GKE, AKS and other nodes with containerd
# or CRI-O at the standard paths: kubectl apply -k manifests/. The objects
# are in base/; overlays/<distribution> move the agent's mounts to k3s,
# RKE2, microk8s or Talos paths (docs/install/distributions.md), as the
# chart's value distribution does.
` + kustomization([]string{"base"}, nil))

	for _, dist := range distributions {
		patches, err := overlay(base, rendered[dist])
		if err != nil {
			return fmt.Errorf("overlay %s: %w", dist, err)
		}
		var paths []string
		for _, p := range patches {
			files["overlays/"+dist+"/"+p.file] = header(p.text)
			paths = append(paths, p.file)
		}
		what := "the patches hold what " + dist + " changes"
		if len(paths) == 0 {
			what = "the base's own layout"
		}
		files["overlays/"+dist+"/kustomization.yaml"] = header(fmt.Sprintf(
			"# manifests/base as the chart renders it with distribution: %s\n"+
				"# (docs/install/distributions.md): %s.\n", dist, what) +
			kustomization([]string{"../../base"}, paths))
	}

	// The controller is opt-in, as in the chart (it runs when the config
	// has workloads): a directory of its own, applied beside the base.
	var controller []doc
	all, err := render(ctx, helm, chart, "kubeadm", "controller.enabled=true")
	if err != nil {
		return err
	}
	var texts []string
	for _, d := range all {
		if d.file == controllerFile {
			controller = append(controller, d)
			texts = append(texts, d.text)
		}
	}
	if len(controller) == 0 {
		return fmt.Errorf("the chart renders nothing from %s with controller.enabled=true", controllerFile)
	}
	files["controller/"+controllerFile] = header(strings.Join(texts, "---\n"))
	files["controller/kustomization.yaml"] = header(`# preloader controller (docs/operations/workloads.md), for a config with
# workloads: kubectl apply -k manifests/controller, after manifests/. It
# reads ServiceAccounts only with the chart's controller.readServiceAccounts.
` + kustomization([]string{controllerFile}, nil))

	tmp, err := os.MkdirTemp("", "manifests-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for name, text := range files {
		p := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return err
		}
	}
	for _, dist := range distributions {
		if err := check(ctx, kubectl, filepath.Join(tmp, "overlays", dist), rendered[dist]); err != nil {
			return fmt.Errorf("overlay %s: %w", dist, err)
		}
	}
	if err := check(ctx, kubectl, filepath.Join(tmp, "controller"), controller); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	return os.CopyFS(out, os.DirFS(tmp))
}

// render is helm template of the chart for dist, with the Namespace (as
// kubectl apply -k needs it) and without Helm's release labels.
func render(ctx context.Context, helm, chart, dist string, set ...string) ([]doc, error) {
	args := []string{"template", release, chart, "-n", namespace, "--set", "namespace.create=true", "--set", "distribution=" + dist}
	for _, v := range set {
		args = append(args, "--set", v)
	}
	cmd := exec.CommandContext(ctx, helm, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm template --set distribution=%s: %w\n%s", dist, err, stderr.Bytes())
	}
	var docs []doc
	for _, part := range strings.Split(string(stdout), "\n---\n") {
		part = strings.TrimPrefix(part, "---\n")
		src, body, ok := strings.Cut(part, "\n")
		file, isSource := strings.CutPrefix(src, "# Source: "+chartName+"/templates/")
		if !ok || !isSource {
			if strings.TrimSpace(part) != "" {
				return nil, fmt.Errorf("helm template --set distribution=%s: a document without its # Source line: %.80q", dist, part)
			}
			continue
		}
		var kept []string
		for line := range strings.Lines(body) {
			if !helmLabelLine.MatchString(line) {
				kept = append(kept, line)
			}
		}
		text := strings.TrimRight(strings.Join(kept, ""), "\n") + "\n"
		d := doc{file: file, text: text}
		if err := yaml.Unmarshal([]byte(text), &d.obj); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if err := onlyLabelsGone(body, d.obj); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		docs = append(docs, d)
	}
	return docs, nil
}

// onlyLabelsGone proves that dropping the label lines removed Helm's
// labels from metadata.labels and nothing else.
func onlyLabelsGone(full string, stripped map[string]any) error {
	var want map[string]any
	if err := yaml.Unmarshal([]byte(full), &want); err != nil {
		return err
	}
	if labels, ok := dig(want, "metadata", "labels").(map[string]any); ok {
		for _, l := range helmLabels {
			delete(labels, l)
		}
	}
	if !reflect.DeepEqual(want, stripped) {
		return errors.New("removing Helm's label lines changed more than metadata.labels")
	}
	return nil
}

type patch struct{ file, text string }

// overlay is the patches that make base into dist: a strategic merge patch
// per object that differs, without the directives kustomize does not
// apply ($setElementOrder, $retainKeys), so merged lists keep their
// elements but not always their order, which Kubernetes ignores for the
// lists the chart's layouts change.
func overlay(base, dist []doc) ([]patch, error) {
	want := map[string]doc{}
	for _, d := range dist {
		want[d.key()] = d
	}
	var patches []patch
	for _, b := range base {
		d, ok := want[b.key()]
		if !ok {
			return nil, fmt.Errorf("the chart renders %s only without it", b.key())
		}
		delete(want, b.key())
		if reflect.DeepEqual(b.obj, d.obj) {
			continue
		}
		if b.obj["kind"] != "DaemonSet" {
			return nil, fmt.Errorf("%s differs, and only a DaemonSet's patch is made", b.key())
		}
		bj, err := yaml.Marshal(b.obj)
		if err != nil {
			return nil, err
		}
		dj, err := yaml.Marshal(d.obj)
		if err != nil {
			return nil, err
		}
		bj, _ = yaml.YAMLToJSON(bj)
		dj, _ = yaml.YAMLToJSON(dj)
		pj, err := strategicpatch.CreateTwoWayMergePatch(bj, dj, appsv1.DaemonSet{})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", b.key(), err)
		}
		var p map[string]any
		if err := yaml.Unmarshal(pj, &p); err != nil {
			return nil, err
		}
		p = dropDirectives(p).(map[string]any)
		meta := b.obj["metadata"].(map[string]any)
		p["apiVersion"], p["kind"] = b.obj["apiVersion"], b.obj["kind"]
		p["metadata"] = map[string]any{"name": meta["name"], "namespace": meta["namespace"]}
		text, err := yaml.Marshal(p)
		if err != nil {
			return nil, err
		}
		patches = append(patches, patch{file: b.file, text: string(text)})
	}
	for k := range want {
		return nil, fmt.Errorf("the chart renders %s only with it", k)
	}
	return patches, nil
}

func dropDirectives(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if strings.HasPrefix(k, "$setElementOrder/") || k == "$retainKeys" {
				delete(v, k)
				continue
			}
			v[k] = dropDirectives(e)
		}
	case []any:
		for i, e := range v {
			v[i] = dropDirectives(e)
		}
	}
	return v
}

func kustomization(resources, patches []string) string {
	var b strings.Builder
	b.WriteString("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n")
	for _, r := range resources {
		b.WriteString("  - " + r + "\n")
	}
	if len(patches) > 0 {
		b.WriteString("patches:\n")
		for _, p := range patches {
			b.WriteString("  - path: " + p + "\n")
		}
	}
	return b.String()
}

// check builds dir with kubectl kustomize and compares its objects with
// the chart's, the order of volumes and mounts aside.
func check(ctx context.Context, kubectl, dir string, want []doc) error {
	cmd := exec.CommandContext(ctx, kubectl, "kustomize", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("kubectl kustomize: %w\n%s", err, stderr.Bytes())
	}
	got := map[string]map[string]any{}
	for _, part := range strings.Split(string(out), "\n---\n") {
		var o map[string]any
		if err := yaml.Unmarshal([]byte(part), &o); err != nil {
			return fmt.Errorf("kubectl kustomize output: %w", err)
		}
		got[doc{obj: o}.key()] = normalize(o)
	}
	var diffs []string
	for _, w := range want {
		g, ok := got[w.key()]
		delete(got, w.key())
		if !ok {
			diffs = append(diffs, "kustomize lacks "+w.key())
			continue
		}
		if n := normalize(w.obj); !reflect.DeepEqual(g, n) {
			gy, _ := yaml.Marshal(g)
			wy, _ := yaml.Marshal(n)
			diffs = append(diffs, fmt.Sprintf("%s differs:\n--- kustomize\n%s--- chart\n%s", w.key(), gy, wy))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		diffs = append(diffs, "kustomize adds "+k)
	}
	if len(diffs) > 0 {
		return errors.New(strings.Join(diffs, "\n"))
	}
	return nil
}

// normalize sorts the pod's lists whose order Kubernetes ignores, in a
// copy.
func normalize(o map[string]any) map[string]any {
	b, _ := yaml.Marshal(o)
	var c map[string]any
	_ = yaml.Unmarshal(b, &c)
	if pod, ok := dig(c, "spec", "template", "spec").(map[string]any); ok {
		sortBy(pod, "volumes", "name")
		for _, ct := range pod["containers"].([]any) {
			sortBy(ct.(map[string]any), "volumeMounts", "mountPath")
		}
	}
	return c
}

func sortBy(m map[string]any, field, key string) {
	list, _ := m[field].([]any)
	sort.SliceStable(list, func(i, j int) bool {
		return fmt.Sprint(list[i].(map[string]any)[key]) < fmt.Sprint(list[j].(map[string]any)[key])
	})
}

func dig(o any, path ...string) any {
	for _, p := range path {
		m, ok := o.(map[string]any)
		if !ok {
			return nil
		}
		o = m[p]
	}
	return o
}
