package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

const (
	helmRelease = "kube-preloader"
	// chartVersion is what make chart-push VERSION=chartAppVersion pushes.
	chartVersion    = "0.0.0-e2e"
	chartAppVersion = "v0.0.0-e2e"
)

// helmEnv keeps helm's registry login and caches in the run's own
// directory, as a CI job's would be.
func (r *run) helmEnv(t *testing.T) []string {
	if r.helmHome == "" {
		r.helmHome = t.TempDir()
	}
	return append(harness.HelmEnv(r.helmHome), "KUBECONFIG="+r.kube.Kubeconfig)
}

func (r *run) helm(t *testing.T, name, stdin string, args ...string) cmdResult {
	t.Helper()
	harness.Require(t, "helm "+harness.HelmVersion+" (scripts/install-deps.sh)", harness.HelmBinary())
	res := runCommandStdin(repoRoot, 5*time.Minute, r.helmEnv(t), stdin, harness.HelmBinary(), args...)
	r.outputs = append(r.outputs, namedText{name, res.out})
	if res.err != nil || res.code != 0 {
		t.Fatalf("%s: helm %s: exit %d %v\n%s", name, strings.Join(args, " "), res.code, res.err, res.out)
	}
	return res
}

// helmInstall mirrors the chart into the password-protected registry as
// an air-gapped site does (helm registry login, make chart-push) and
// installs the agent from there with the command docs/install/helm.md
// gives, with values for this node: the k3s layout the harness's containerd emulates,
// the test API server's address, the kubelet's config files and the run's
// images.yaml.
func (r *run) helmInstall(t *testing.T) time.Time {
	t.Helper()
	r.helm(t, "helm registry login", r.password, "registry", "login", r.priv.Host, "--plain-http", "--username", r.user, "--password-stdin")
	push := runCommand(repoRoot, 5*time.Minute, r.helmEnv(t), "make", "chart-push", "VERSION="+chartAppVersion,
		"CHART_REPO=oci://"+r.priv.Host+"/charts", "HELM_PUSH_FLAGS=--plain-http")
	r.outputs = append(r.outputs, namedText{"make chart-push", push.out})
	if push.err != nil || push.code != 0 {
		t.Fatalf("make chart-push: exit %d %v\n%s", push.code, push.err, push.out)
	}
	t.Logf("make chart-push: %v\n%s", push.took.Round(time.Millisecond), tailLines(push.out, 4))

	values := filepath.Join(t.TempDir(), "values.yaml")
	r.writeValues(t, values)
	res := r.helm(t, "helm install", "", "install", helmRelease, "oci://"+r.priv.Host+"/charts/kube-preloader", "--version", chartVersion,
		"--plain-http", "-n", agentNamespace, "--create-namespace", "-f", values)
	applied := time.Now()
	t.Logf("helm install (%v):\n%s", res.took.Round(time.Millisecond), res.out)
	if !strings.Contains(res.out, "(k3s layout)") {
		t.Errorf("helm install's notes do not name the k3s layout:\n%s", res.out)
	}
	return applied
}

func (r *run) writeValues(t *testing.T, path string) {
	t.Helper()
	name, tag, _ := strings.Cut(strings.TrimPrefix(r.agentImage, r.pub.Host+"/"), ":")
	port := strconv.Itoa(r.node.APIServerPort())
	v := map[string]any{
		"distribution": "k3s",
		"image":        map[string]any{"repository": r.pub.Host + "/" + name, "tag": tag},
		"config":       r.renderConfig(),
		"kubelet":      map[string]any{"configFile": r.node.KubeletConfigFile, "configDir": r.node.KubeletConfigDir},
		// No kube-proxy routes the kubernetes Service on the test node.
		"extraEnv": []map[string]string{
			{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
			{"name": "KUBERNETES_SERVICE_PORT", "value": port},
			{"name": "KUBERNETES_SERVICE_PORT_HTTPS", "value": port},
		},
	}
	if r.ecr != nil {
		// k3s's paths, which the chart knows.
		v["credentialProviders"] = map[string]any{"enabled": true}
	}
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	write(t, path, string(b))
}

// helmUpgrade changes a value of the release (a pod annotation and the
// memory limit) and waits for the DaemonSet's new pod: the agent as
// upgraded runs on.
func (r *run) helmUpgrade(t *testing.T) {
	t.Helper()
	old := r.agentPod
	res := r.helm(t, "helm upgrade", "", "upgrade", helmRelease, "oci://"+r.priv.Host+"/charts/kube-preloader", "--version", chartVersion,
		"--plain-http", "-n", agentNamespace, "--reuse-values", "--set-string", "podAnnotations.e2e/upgraded=yes",
		"--set", "resources.limits.memory=160Mi")
	upgraded := time.Now()
	t.Logf("helm upgrade (%v):\n%s", res.took.Round(time.Millisecond), tailLines(res.out, 8))
	r.waitAgentPod(t, old, upgraded)
	p, err := r.node.Client.CoreV1().Pods(agentNamespace).Get(context.Background(), r.agentPod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Annotations["e2e/upgraded"] != "yes" || p.Spec.Containers[0].Resources.Limits.Memory().String() != "160Mi" {
		t.Errorf("after helm upgrade the agent pod has annotations %v and limits %v", p.Annotations, p.Spec.Containers[0].Resources.Limits)
	}
	hist := r.helm(t, "helm history", "", "history", helmRelease, "-n", agentNamespace)
	if !strings.Contains(hist.out, "2 ") || !strings.Contains(hist.out, "deployed") {
		t.Errorf("helm history shows no second revision deployed:\n%s", hist.out)
	}
}

// helmUninstall removes the release and proves nothing of it is left in
// the API: every kind the chart renders, listed by the release's label,
// and helm's own record of it.
func (r *run) helmUninstall(t *testing.T) {
	t.Helper()
	res := r.helm(t, "helm uninstall", "", "uninstall", helmRelease, "-n", agentNamespace, "--wait", "--timeout", "2m")
	t.Logf("helm uninstall (%v):\n%s", res.took.Round(time.Millisecond), res.out)
	kinds := "daemonsets,configmaps,secrets,serviceaccounts,services,roles,rolebindings,clusterroles,clusterrolebindings," +
		"validatingadmissionpolicies,validatingadmissionpolicybindings,pods"
	deadline := time.Now().Add(time.Minute)
	for {
		left := r.command(t, "kubectl get (after uninstall)", time.Minute, nil, r.kubectl, "--kubeconfig", r.kube.Kubeconfig,
			"get", kinds, "-A", "-l", "app.kubernetes.io/name=preloader", "-o", "name")
		helmRecords := r.command(t, "kubectl get helm records", time.Minute, nil, r.kubectl, "--kubeconfig", r.kube.Kubeconfig,
			"get", "secrets", "-n", agentNamespace, "-l", "owner=helm,name="+helmRelease, "-o", "name")
		if strings.TrimSpace(left.out) == "" && strings.TrimSpace(helmRecords.out) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after helm uninstall, objects of the release remain:\n%s%s", left.out, helmRecords.out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	n := getNode(t, r.node)
	verdicts.add(verdict{
		scenario: r.row("u helm uninstall"),
		before:   "release installed from oci://…/charts/kube-preloader, upgraded once",
		after: fmt.Sprintf("no object of the release left; the Node keeps preloader.io/ready=%s and its status annotation (docs/operations/upgrade.md, Uninstall)",
			n.Labels["preloader.io/ready"]),
	})
}

// scenarioDashboard: every panel of the chart's Grafana dashboard has
// data in a real Prometheus that scraped the agent through the scenarios
// (pulls, failures with the registry down, a prune).
func (r *run) scenarioDashboard(t *testing.T) {
	t.Helper()
	r.prom.CheckDashboard(t, filepath.Join(repoRoot, "charts", "kube-preloader", "dashboards", "kube-preloader.json"))
	present := r.prom.Query(t, "preloader_images_present")
	verdicts.add(verdict{
		scenario: r.row("m dashboard on a real Prometheus"),
		before:   "agent scraped every second since its install",
		after:    fmt.Sprintf("every panel's query returns series (preloader_images_present: %d series)", len(present.Result)),
	})
}
