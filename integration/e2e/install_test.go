package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

const (
	// controllerDeployment is preloader controller's Deployment in
	// manifests/controller and the chart.
	controllerDeployment = "preloader-controller"
	// nodePolicy is the ValidatingAdmissionPolicy that holds each agent to
	// its own Node and lets it remove the taintKey taint.
	nodePolicy = "kube-preloader-node-restriction"
)

// installExtras adds to the run's kustomization in dir what the run's
// config and taint key need beyond manifests/: with workloads, preloader
// controller as manifests/controller installs it (its pod on the host
// network and told the API server's address, as the agent is); with a
// taintKey other than the default, the three places the chart's value
// taintKey changes (the agent's --taint-key, the node policy's allowed
// removal and the controller's toleration), as the chart renders them with
// that value. It returns the kustomization's extra resources and patches.
func (r *run) installExtras(t *testing.T, dir string) (resources, patches string) {
	t.Helper()
	if r.node.CRIO != nil && (len(r.workloads) > 0 || r.taintKey != notReadyTaint) {
		t.Fatal("installExtras: the CRI-O layer is on manifests/, without the overlay these patches assume")
	}
	var res, pat []string
	if len(r.workloads) > 0 {
		rel, err := filepath.Rel(dir, filepath.Join(repoRoot, "manifests", "controller"))
		if err != nil {
			t.Fatal(err)
		}
		res = append(res, rel)
		port := strconv.Itoa(r.node.APIServerPort())
		// No CNI but loopback on the test node: the pod shares the host's
		// network, where the API server listens on 127.0.0.1.
		writeJSONPatch(t, dir, "controller-run.json", []jsonOp{
			{"add", "/spec/template/spec/hostNetwork", true},
			{"add", "/spec/template/spec/containers/0/env/-", map[string]string{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}},
			{"add", "/spec/template/spec/containers/0/env/-", map[string]string{"name": "KUBERNETES_SERVICE_PORT", "value": port}},
			{"add", "/spec/template/spec/containers/0/env/-", map[string]string{"name": "KUBERNETES_SERVICE_PORT_HTTPS", "value": port}},
		})
		pat = append(pat, patchEntry("controller-run.json", "Deployment", controllerDeployment))
	}
	if r.taintKey != notReadyTaint {
		chart := renderChart(t, "taintKey="+r.taintKey, "controller.enabled=true")
		ds := chart.find(t, "DaemonSet", "preloader")
		args := nested[[]any](t, ds, "spec", "template", "spec", "containers", 0, "args")
		i := slices.Index(args, any("--taint-key"))
		if i < 0 || i+1 >= len(args) || args[i+1] != r.taintKey {
			t.Fatalf("the chart rendered with taintKey=%s gives the agent no --taint-key %s: %v", r.taintKey, r.taintKey, args)
		}
		writeJSONPatch(t, dir, "taint-key-agent.json", []jsonOp{
			{"replace", fmt.Sprintf("/spec/template/spec/containers/0/args/%d", baseArgIndex(t, "--taint-key")+1), args[i+1]},
		})
		pat = append(pat, patchEntry("taint-key-agent.json", "DaemonSet", "preloader"))
		policy := chart.find(t, "ValidatingAdmissionPolicy", nodePolicy)
		writeJSONPatch(t, dir, "taint-key-policy.json", []jsonOp{{"replace", "/spec", policy["spec"]}})
		pat = append(pat, patchEntry("taint-key-policy.json", "ValidatingAdmissionPolicy", nodePolicy))
		if len(r.workloads) > 0 {
			ctrl := chart.find(t, "Deployment", controllerDeployment)
			tolerations := nested[[]any](t, ctrl, "spec", "template", "spec", "tolerations")
			writeJSONPatch(t, dir, "taint-key-controller.json", []jsonOp{{"replace", "/spec/template/spec/tolerations", tolerations}})
			pat = append(pat, patchEntry("taint-key-controller.json", "Deployment", controllerDeployment))
		}
	}
	for _, p := range res {
		resources += "  - " + p + "\n"
	}
	return resources, strings.Join(pat, "")
}

type jsonOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

func writeJSONPatch(t *testing.T, dir, name string, ops []jsonOp) {
	t.Helper()
	b, err := json.MarshalIndent(ops, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, name), string(b)+"\n")
}

func patchEntry(path, kind, name string) string {
	return fmt.Sprintf("  - path: %s\n    target:\n      kind: %s\n      name: %s\n", path, kind, name)
}

// renderedChart is the chart's objects as `helm template` renders them.
type renderedChart []map[string]any

// renderChart renders the chart in the agent's namespace with the values
// set, as the chart's users get it and as make manifests renders
// manifests/ from it with the defaults.
func renderChart(t *testing.T, set ...string) renderedChart {
	t.Helper()
	args := []string{"template", helmRelease, filepath.Join(repoRoot, "charts", "kube-preloader"), "-n", agentNamespace}
	for _, v := range set {
		args = append(args, "--set", v)
	}
	out := harness.MustHelm(t, "", args...)
	var objs renderedChart
	for _, doc := range strings.Split(out, "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("helm template: %v\n%s", err, doc)
		}
		if obj != nil {
			objs = append(objs, obj)
		}
	}
	return objs
}

func (c renderedChart) find(t *testing.T, kind, name string) map[string]any {
	t.Helper()
	for _, obj := range c {
		if obj["kind"] == kind && nested[string](t, obj, "metadata", "name") == name {
			return obj
		}
	}
	t.Fatalf("the chart renders no %s %s", kind, name)
	return nil
}

// nested is the value at path (map keys and list indexes) in obj.
func nested[T any](t *testing.T, obj map[string]any, path ...any) T {
	t.Helper()
	var cur any = obj
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := cur.(map[string]any)
			cur = m[k]
		case int:
			l, _ := cur.([]any)
			if k >= len(l) {
				cur = nil
				break
			}
			cur = l[k]
		}
	}
	v, ok := cur.(T)
	if !ok {
		t.Fatalf("%v: %T, not %T", path, cur, v)
	}
	return v
}

// baseArgIndex is the index of arg in the base DaemonSet's container
// args, for a JSON patch.
func baseArgIndex(t *testing.T, arg string) int {
	t.Helper()
	ds := baseDaemonSet(t)
	i := slices.Index(ds.Spec.Template.Spec.Containers[0].Args, arg)
	if i < 0 {
		t.Fatalf("manifests/base/daemonset.yaml: no argument %s", arg)
	}
	return i
}
