package integration

import (
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// nodeReadinessPage is the operators' page on scalers and the taint.
const nodeReadinessPage = "../docs/operations/node-readiness.md"

// TestNodeReadinessDocKarpenter: the NodePool the node readiness page
// shows is accepted by a real kube-apiserver that has Karpenter's own
// NodePool CRD, as `kubectl apply --server-side` would send it, and lists
// the agent's default taint among its startupTaints. The same NodePool
// with a misspelt effect or a misspelt field is refused, so the check can
// fail.
func TestNodeReadinessDocKarpenter(t *testing.T) {
	crd := harness.KarpenterCRD(t, "karpenter.sh_nodepools.yaml")
	pools := yamlBlocksOfKind(t, nodeReadinessPage, "NodePool")
	if len(pools) != 1 {
		t.Fatalf("%s shows %d NodePools, want 1", nodeReadinessPage, len(pools))
	}
	pool := pools[0]

	var np struct {
		Spec struct {
			Template struct {
				Spec struct {
					StartupTaints []corev1.Taint `json:"startupTaints"`
				} `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(pool), &np); err != nil {
		t.Fatalf("the NodePool does not parse: %v\n%s", err, pool)
	}
	if taints := np.Spec.Template.Spec.StartupTaints; len(taints) != 1 || taints[0].Key != nodestatus.TaintNotReady {
		t.Errorf("the NodePool's startupTaints are %+v, want the agent's default key %s", taints, nodestatus.TaintNotReady)
	}

	k := harness.StartKube(t)
	kubectlStdin(t, k, string(crd), "apply", "--server-side", "-f", "-")
	kubectlStdin(t, k, "", "wait", "--for=condition=Established", "--timeout=60s", "crd/nodepools.karpenter.sh")

	dryRun := func(doc string) (string, error) {
		return kubectlInput(k, doc, "apply", "--server-side", "--dry-run=server", "-f", "-")
	}
	out, err := dryRun(pool)
	if err != nil || !strings.Contains(out, "nodepool.karpenter.sh/default serverside-applied (server dry run)") {
		t.Errorf("the page's NodePool is refused: %v\n%s\n%s", err, out, pool)
	}

	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"effect", "effect: NoSchedule", "effect: NoScheduleUntilReady", `spec.template.spec.startupTaints[0].effect: Unsupported value: "NoScheduleUntilReady"`},
		{"field", "startupTaints:", "startupTaint:", `.spec.template.spec.startupTaint: field not declared in schema`},
	} {
		t.Run("misspelt-"+tc.name, func(t *testing.T) {
			if strings.Count(pool, tc.old) != 1 {
				t.Fatalf("the NodePool has %d %q, want 1:\n%s", strings.Count(pool, tc.old), tc.old, pool)
			}
			out, err := dryRun(strings.Replace(pool, tc.old, tc.new, 1))
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("with %q: want a refusal saying %s, got %v\n%s", tc.new, tc.want, err, out)
			}
		})
	}
}

// yamlBlocksOfKind returns the ```yaml blocks of a page whose object is of
// the given kind.
func yamlBlocksOfKind(t *testing.T, page, kind string) []string {
	t.Helper()
	b, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, part := range strings.Split(string(b), "```yaml\n")[1:] {
		end := strings.Index(part, "```")
		if end < 0 {
			t.Fatalf("%s: a ```yaml block is not closed", page)
		}
		if block := part[:end]; strings.Contains("\n"+block, "\nkind: "+kind+"\n") {
			blocks = append(blocks, block)
		}
	}
	return blocks
}
