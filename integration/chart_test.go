package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

const chartDir = "../charts/kube-preloader"

// distributions are the chart's distribution values but auto.
var distributions = []string{"kubeadm", "k3s", "rke2", "microk8s", "talos"}

// TestChartLint is `helm lint --strict` of the chart.
func TestChartLint(t *testing.T) {
	out := harness.MustHelm(t, "", "lint", "--strict", chartDir)
	t.Logf("%s", out)
}

// helmDocsArgs are helm-docs's arguments for the chart, as make docs
// passes them, but the chart's directory.
var helmDocsArgs = []string{"--skip-version-footer", "--log-level", "warning"}

// TestChartReadme: the chart's README.md is what helm-docs v1.14.2 makes of
// README.md.gotmpl and values.yaml, and describes every value.
func TestChartReadme(t *testing.T) {
	harness.Require(t, "helm-docs "+harness.HelmDocsVersion+" (scripts/install-deps.sh)", harness.HelmDocsBinary())
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "README.md")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(harness.HelmDocsBinary(), append([]string{"--chart-search-root", dir}, helmDocsArgs...)...)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("helm-docs: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatalf("helm-docs wrote no README.md: %v", err)
	}
	want, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s/README.md is not what helm-docs makes of README.md.gotmpl and values.yaml; run make docs", chartDir)
	}
	rows := 0
	for line := range strings.Lines(string(got)) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "| ") || !strings.HasSuffix(line, " |") || strings.HasPrefix(line, "| Key |") {
			continue
		}
		rows++
		cells := strings.Split(line, " | ")
		if desc := strings.TrimSpace(strings.TrimSuffix(cells[len(cells)-1], "|")); desc == "" {
			t.Errorf("value %s has no description: give it a \"# --\" comment in values.yaml", strings.TrimPrefix(cells[0], "| "))
		}
	}
	if rows < 20 {
		t.Errorf("the chart README's values table has %d rows", rows)
	}
}

// TestManifestsRendered: manifests/ is what make manifests renders from the
// chart (scripts/manifests, which also builds every overlay with kubectl
// kustomize and compares it with the chart's distribution), so that
// kubectl apply -k users get the chart's objects.
func TestManifestsRendered(t *testing.T) {
	harness.Require(t, "helm "+harness.HelmVersion+" (scripts/install-deps.sh)", harness.HelmBinary())
	harness.Require(t, "kubectl (scripts/build-kube.sh)", harness.KubeBinary("kubectl"))
	out := filepath.Join(t.TempDir(), "manifests")
	cmd := exec.Command("go", "run", "./scripts/manifests", "-helm", harness.HelmBinary(), "-kubectl", harness.KubeBinary("kubectl"), "-out", out)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), harness.HelmEnv(t.TempDir())...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/manifests: %v\n%s", err, b)
	}
	rendered, committed := filesUnder(t, out), filesUnder(t, "../manifests")
	for _, name := range slices.Sorted(maps.Keys(rendered)) {
		c, ok := committed[name]
		if !ok {
			t.Errorf("manifests/%s: missing; the chart renders it", name)
			continue
		}
		if line, ok := firstDiff(c, rendered[name]); ok {
			t.Errorf("manifests/%s line %d differs from what the chart renders:\n  committed: %q\n  rendered:  %q", name, line.n, line.committed, line.rendered)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(committed)) {
		if _, ok := rendered[name]; !ok {
			t.Errorf("manifests/%s: not rendered from the chart", name)
		}
	}
	if t.Failed() {
		t.Log("manifests/ is rendered from charts/kube-preloader: edit the chart, then run make manifests")
	}
}

// filesUnder reads every file below dir, by path relative to it.
func filesUnder(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		files[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

type lineDiff struct {
	n                   int
	committed, rendered string
}

// firstDiff is the first line where a and b differ, if they do.
func firstDiff(a, b string) (lineDiff, bool) {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range max(len(al), len(bl)) {
		if i >= len(al) || i >= len(bl) || al[i] != bl[i] {
			return lineDiff{i + 1, at(al, i), at(bl, i)}, true
		}
	}
	return lineDiff{}, false
}

func at(lines []string, i int) string {
	if i < len(lines) {
		return lines[i]
	}
	return "(end of file)"
}

// TestChartValues: what a user's values change, and values the schema or
// the templates refuse, each with a message that says which value.
func TestChartValues(t *testing.T) {
	render := func(t *testing.T, args ...string) (map[string]map[string]any, string, error) {
		out, err := harness.Helm(t, "", append([]string{"template", "kube-preloader", chartDir, "-n", "ops"}, args...)...)
		if err != nil {
			return nil, out, err
		}
		return objectsByKey(t, []byte(out)), out, nil
	}
	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--set", "distribution=k8s"}, "at '/distribution': value must be one of 'auto', 'kubeadm', 'k3s', 'rke2', 'microk8s', 'talos'"},
			{[]string{"--set", "image.digest=latest"}, "at '/image/digest'"},
			{[]string{"--set", "pullSecrets[0].name=regcred", "--set", "pullSecrets[0].registry=corp.example"}, "at '/pullSecrets/0'"},
			{[]string{"--set", "metrics.port=0"}, "at '/metrics/port'"},
			{[]string{"--set", "taintKey=preloader.io/not ready"}, "at '/taintKey'"},
			{[]string{"--set", "taintKey=node.kubernetes.io/not-ready"}, "at '/taintKey'"},
			{[]string{"--set", "resync=5m"}, "additional properties 'resync' not allowed"},
			{[]string{"--set", "metrics.podMonitor.enabled=true"}, "metrics.podMonitor.enabled: the cluster serves no monitoring.coreos.com/v1 PodMonitor"},
			{[]string{"--set", "metrics.serviceMonitor.enabled=true"}, "metrics.serviceMonitor.enabled: the cluster serves no monitoring.coreos.com/v1 ServiceMonitor"},
			{[]string{"--set", "credentialProviders.config=etc/config.yaml"}, "at '/credentialProviders/config'"},
			{[]string{"--set", "credentialProviders.binDir=bin"}, "at '/credentialProviders/binDir'"},
			{[]string{"--set", "credentialProviders.enabled=yes"}, "at '/credentialProviders/enabled'"},
			{[]string{"--set", "credentialProviders.bin=/opt/bin"}, "additional properties 'bin' not allowed"},
			{[]string{"--set", "credentialProviders.serviceAccounts={Builder}"}, "at '/credentialProviders/serviceAccounts/0'"},
			{[]string{"--set", "workloadPullSecrets.shop={Regcred}"}, "at '/workloadPullSecrets/shop/0'"},
			{[]string{"--set", "workloadPullSecrets.Shop={regcred}"}, "'Shop' does not match pattern"},
			{[]string{"--set", "distribution=kubeadm", "--set", "credentialProviders.enabled=true"}, "credentialProviders: set both config and binDir, the paths the node's kubelet has in --image-credential-provider-config and --image-credential-provider-bin-dir (distribution kubeadm has no default for them"},
			{[]string{"--set", "distribution=microk8s", "--set", "credentialProviders.config=/etc/cp.yaml"}, "distribution microk8s has no default for them"},
			{[]string{"--set", "verify.keys.team\\.pub=team"}, "at '/verify/keys/team.pub'"},
			{[]string{"--set", "verify.keys.team/pub=-----BEGIN PUBLIC KEY-----"}, "'team/pub' does not match pattern"},
		} {
			_, out, err := render(t, tc.args...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("helm template %s: want an error saying %q, got %v:\n%s", strings.Join(tc.args, " "), tc.want, err, out)
			}
		}
	})
	t.Run("taintKey", func(t *testing.T) {
		const key = "startup-taint.cluster-autoscaler.kubernetes.io/preloader"
		objs, out, err := render(t, "--set", "taintKey="+key)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		c := dig(objs["DaemonSet/ops/preloader"], "spec", "template", "spec", "containers").([]any)[0].(map[string]any)
		if args := fmt.Sprint(c["args"]); !strings.Contains(args, "--taint-key "+key) {
			t.Errorf("args %s lack --taint-key %s", args, key)
		}
		policy := fmt.Sprint(dig(objs["ValidatingAdmissionPolicy//kube-preloader-node-restriction"], "spec", "validations"))
		if !strings.Contains(policy, "t.key == '"+key+"'") || strings.Contains(policy, nodestatus.TaintNotReady) {
			t.Errorf("node policy with taintKey %s: %s", key, policy)
		}
	})
	t.Run("verify keys", func(t *testing.T) {
		const pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
		objs, out, err := render(t, "--set-string", "verify.keys.team\\.pub="+pem, "--set-string", "verify.keys.vendor\\.pub="+pem)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		keys := objs["ConfigMap/ops/preloader-verify-keys"]
		if keys == nil || dig(keys, "data", "team.pub") != pem || dig(keys, "data", "vendor.pub") != pem {
			t.Fatalf("ConfigMap ops/preloader-verify-keys holds %v, want both keys", keys)
		}
		cfg, err := config.Parse("images.yaml", []byte(dig(objs["ConfigMap/ops/preloader-config"], "data", "images.yaml").(string)))
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"/etc/preloader/keys/team.pub", "/etc/preloader/keys/vendor.pub"}; !slices.Equal(cfg.Verify.Keys, want) {
			t.Errorf("the config verifies with %v, want %v", cfg.Verify.Keys, want)
		}
		pod := dig(objs["DaemonSet/ops/preloader"], "spec", "template", "spec").(map[string]any)
		c := dig(pod, "containers").([]any)[0].(map[string]any)
		if m := fmt.Sprint(c["volumeMounts"]); !strings.Contains(m, "mountPath:/etc/preloader/keys name:verify-keys readOnly:true") {
			t.Errorf("the agent does not mount the keys read-only at /etc/preloader/keys: %s", m)
		}
		if v := fmt.Sprint(pod["volumes"]); !strings.Contains(v, "configMap:map[name:preloader-verify-keys] name:verify-keys") {
			t.Errorf("no volume of the keys' ConfigMap: %s", v)
		}

		// A config that says verify itself, or none of it, is left as it is.
		objs, out, err = render(t, "--set-string", "verify.keys.team\\.pub="+pem, "--set-json", `config={"images":[],"verify":{"keys":["/etc/preloader/keys/other.pub"]}}`)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if got := dig(objs["ConfigMap/ops/preloader-config"], "data", "images.yaml").(string); !strings.Contains(got, "/etc/preloader/keys/other.pub") || strings.Contains(got, "team.pub") {
			t.Errorf("the config's own verify was changed:\n%s", got)
		}
		objs, out, err = render(t)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if _, ok := objs["ConfigMap/ops/preloader-verify-keys"]; ok || strings.Contains(out, "verify") {
			t.Errorf("without keys: the chart renders verify:\n%s", out)
		}
	})
	t.Run("set", func(t *testing.T) {
		objs, out, err := render(t, "-f", "testdata/chart-values.yaml")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		ds := objs["DaemonSet/ops/preloader"]
		pod := dig(ds, "spec", "template", "spec").(map[string]any)
		c := dig(pod, "containers").([]any)[0].(map[string]any)
		if got, want := c["image"], "corp.example/mirror/preloader:v9.9.9@sha256:"+strings.Repeat("ab", 32); got != want {
			t.Errorf("image %v, want %s", got, want)
		}
		args := fmt.Sprint(c["args"])
		for _, want := range []string{"ops/site-images", ":9800", "--log-level=debug"} {
			if !strings.Contains(args, want) {
				t.Errorf("args %s lack %s", args, want)
			}
		}
		if pod["priorityClassName"] != nil {
			t.Errorf("priorityClassName %v, want none", pod["priorityClassName"])
		}
		if fmt.Sprint(pod["nodeSelector"]) != "map[pool:edge]" {
			t.Errorf("nodeSelector %v", pod["nodeSelector"])
		}
		if _, ok := objs["ConfigMap/ops/preloader-config"]; ok {
			t.Error("existingConfigMap set, yet the chart renders preloader-config")
		}
		if rn := fmt.Sprint(dig(objs["Role/ops/preloader"], "rules").([]any)[0].(map[string]any)["resourceNames"]); rn != "[site-images]" {
			t.Errorf("the agent's Role names ConfigMaps %s, want [site-images]", rn)
		}
		if _, ok := objs["ValidatingAdmissionPolicy//kube-preloader-node-restriction"]; !ok {
			t.Error("no node policy")
		}
		if expr := fmt.Sprint(dig(objs["ValidatingAdmissionPolicy//kube-preloader-node-restriction"], "spec", "matchConditions")); !strings.Contains(expr, "system:serviceaccount:ops:preloader") {
			t.Errorf("node policy matches %s, want the agent of namespace ops", expr)
		}
		sec := objs["Secret/ops/regcred"]
		if sec == nil || sec["type"] != "kubernetes.io/dockerconfigjson" {
			t.Fatalf("pull secret regcred: %v", sec)
		}
		if strings.Contains(out, "s3cret-value") {
			t.Error("the password is in the rendered output in clear")
		}
		cm := objs["ConfigMap/monitoring/kube-preloader-dashboard"]
		if cm == nil || dig(cm, "metadata", "labels", "grafana_dashboard") != "1" {
			t.Fatalf("dashboard ConfigMap in monitoring with label grafana_dashboard=1: %v", cm)
		}
		if js, _ := dig(cm, "data", "kube-preloader.json").(string); !strings.Contains(js, `"panels"`) {
			t.Errorf("dashboard ConfigMap holds no dashboard: %.200s", js)
		}
	})
}

// TestChartController: the controller's objects follow the config's
// workloads section unless controller.enabled says otherwise, and it may
// read ServiceAccounts only when a selection uses pull secrets.
func TestChartController(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		controller bool
		readsSAs   bool
	}{
		{"defaults", nil, false, false},
		{"workloads", []string{"--set-json", `config={"images":[],"workloads":[{"namespaces":["shop"]}]}`}, true, false},
		{"workloads as a string", []string{"--set-string", "config=images: []\nworkloads:\n  - namespaces: [shop]\n"}, true, false},
		{"usePullSecrets", []string{"--set-json", `config={"images":[],"workloads":[{"usePullSecrets":true}]}`}, true, true},
		{"turned off", []string{"--set-json", `config={"images":[],"workloads":[{}]}`, "--set", "controller.enabled=false"}, false, false},
		{"existingConfigMap", []string{"--set", "existingConfigMap=site", "--set", "controller.enabled=true", "--set", "controller.readServiceAccounts=true"}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := harness.MustHelm(t, "", append([]string{"template", "kube-preloader", chartDir, "-n", "ops"}, tc.args...)...)
			objs := objectsByKey(t, []byte(out))
			d := objs["Deployment/ops/preloader-controller"]
			if (d != nil) != tc.controller {
				t.Fatalf("controller Deployment rendered: %v, want %v", d != nil, tc.controller)
			}
			if !tc.controller {
				return
			}
			args := fmt.Sprint(dig(d, "spec", "template", "spec", "containers").([]any)[0].(map[string]any)["args"])
			cm := "preloader-config"
			if strings.Contains(strings.Join(tc.args, " "), "existingConfigMap=site") {
				cm = "site"
			}
			if args != "[controller --configmap ops/"+cm+"]" {
				t.Errorf("args %s", args)
			}
			role := fmt.Sprint(dig(objs["Role/ops/preloader-controller"], "rules"))
			if !strings.Contains(role, "resourceNames:["+cm+"]") || !strings.Contains(role, "resourceNames:[preloader-controller]") {
				t.Errorf("the controller's Role does not name its ConfigMap and Lease: %s", role)
			}
			rules := fmt.Sprint(dig(objs["ClusterRole//kube-preloader-controller"], "rules"))
			if got := strings.Contains(rules, "serviceaccounts"); got != tc.readsSAs {
				t.Errorf("ClusterRole reads serviceaccounts: %v, want %v: %s", got, tc.readsSAs, rules)
			}
			if strings.Contains(rules, "secrets") || strings.Contains(rules, "create") || strings.Contains(rules, "patch") {
				t.Errorf("the controller's ClusterRole grants more than reads of workloads: %s", rules)
			}
		})
	}
}

// credentialProviderMount is one hostPath the agent sees of the kubelet's
// credential provider config or plugins.
type credentialProviderMount struct {
	path, hostPathType string
	readOnly           bool
}

// credentialProviderSetup is what a rendered DaemonSet gives the agent of
// the kubelet's credential providers: its two flags (as `flag=value`, in
// order) and the hostPath volumes mounted for them, by volume name.
func credentialProviderSetup(t *testing.T, ds map[string]any) (flags []string, mounts map[string]credentialProviderMount) {
	t.Helper()
	pod := dig(ds, "spec", "template", "spec").(map[string]any)
	c := dig(pod, "containers").([]any)[0].(map[string]any)
	for _, a := range c["args"].([]any) {
		if s := a.(string); strings.HasPrefix(s, "--image-credential-provider-") {
			flags = append(flags, s)
		}
	}
	mounts = map[string]credentialProviderMount{}
	for _, v := range dig(pod, "volumes").([]any) {
		v := v.(map[string]any)
		name := v["name"].(string)
		if !strings.HasPrefix(name, "credential-provider") {
			continue
		}
		hp, _ := v["hostPath"].(map[string]any)
		if hp == nil {
			t.Errorf("volume %s is not a hostPath: %v", name, v)
			continue
		}
		mounts[name] = credentialProviderMount{path: fmt.Sprint(hp["path"]), hostPathType: fmt.Sprint(hp["type"])}
	}
	for _, m := range c["volumeMounts"].([]any) {
		m := m.(map[string]any)
		name := m["name"].(string)
		vm, ok := mounts[name]
		if !ok {
			continue
		}
		if m["mountPath"] != vm.path {
			t.Errorf("volume %s of host path %s is mounted at %v: the kubelet's config names host paths", name, vm.path, m["mountPath"])
		}
		vm.readOnly = m["readOnly"] == true
		mounts[name] = vm
	}
	return flags, mounts
}

// TestChartTokenRequestRule: the agent may request tokens of no
// ServiceAccount by default, and with credentialProviders.serviceAccounts
// of exactly those, and only create them.
func TestChartTokenRequestRule(t *testing.T) {
	tokenRules := func(args ...string) []any {
		out := harness.MustHelm(t, "", append([]string{"template", "kube-preloader", chartDir, "-n", "ops"}, args...)...)
		role := objectsByKey(t, []byte(out))["Role/ops/preloader"]
		if role == nil {
			t.Fatalf("no Role ops/preloader in the chart's output")
		}
		var found []any
		for _, r := range role["rules"].([]any) {
			rule := r.(map[string]any)
			if slices.Contains(rule["resources"].([]any), any("serviceaccounts/token")) {
				found = append(found, rule)
			}
		}
		return found
	}
	if got := tokenRules(); len(got) != 0 {
		t.Errorf("by default: rules on serviceaccounts/token %v; want none", got)
	}
	got := tokenRules("--set", "credentialProviders.serviceAccounts={builder,app}")
	if len(got) != 1 {
		t.Fatalf("with serviceAccounts builder, app: rules on serviceaccounts/token %v; want one", got)
	}
	rule := got[0].(map[string]any)
	if names := fmt.Sprint(rule["resourceNames"]); names != "[builder app]" {
		t.Errorf("resourceNames %s; want [builder app]", names)
	}
	if verbs := fmt.Sprint(rule["verbs"]); verbs != "[create]" {
		t.Errorf("verbs %s; want [create]", verbs)
	}
}

// TestChartCredentialProviders: credentialProviders off by default on
// every distribution; on, the agent gets the kubelet's two flags and both
// host paths read-only, with hostPath types that create nothing on the
// host; the distribution fills in the paths it knows.
func TestChartCredentialProviders(t *testing.T) {
	for _, d := range distributions {
		out := harness.MustHelm(t, "", "template", "kube-preloader", chartDir, "-n", "ops", "--set", "distribution="+d)
		flags, mounts := credentialProviderSetup(t, objectsByKey(t, []byte(out))["DaemonSet/ops/preloader"])
		if len(flags) > 0 || len(mounts) > 0 {
			t.Errorf("distribution %s by default: flags %v, mounts %v; want none", d, flags, mounts)
		}
	}
	const rancherConfig, rancherBin = "/var/lib/rancher/credentialprovider/config.yaml", "/var/lib/rancher/credentialprovider/bin"
	for _, tc := range []struct {
		name       string
		args       []string
		wantFlags  []string
		wantMounts map[string]credentialProviderMount
	}{
		{
			name:      "k3s enabled",
			args:      []string{"--set", "distribution=k3s", "--set", "credentialProviders.enabled=true"},
			wantFlags: []string{"--image-credential-provider-config=" + rancherConfig, "--image-credential-provider-bin-dir=" + rancherBin},
			wantMounts: map[string]credentialProviderMount{
				"credential-provider-config": {rancherConfig, "File", true},
				"credential-provider-bin":    {rancherBin, "Directory", true},
			},
		},
		{
			name:      "rke2 enabled, own plugin directory",
			args:      []string{"--set", "distribution=rke2", "--set", "credentialProviders.binDir=/opt/cred/bin"},
			wantFlags: []string{"--image-credential-provider-config=" + rancherConfig, "--image-credential-provider-bin-dir=/opt/cred/bin"},
			wantMounts: map[string]credentialProviderMount{
				"credential-provider-config": {rancherConfig, "File", true},
				"credential-provider-bin":    {"/opt/cred/bin", "Directory", true},
			},
		},
		{
			name: "talos enabled",
			args: []string{"--set", "distribution=talos", "--set", "credentialProviders.enabled=true"},
			wantFlags: []string{"--image-credential-provider-config=/etc/kubernetes/kubelet-credentialproviderconfig.yaml",
				"--image-credential-provider-bin-dir=/usr/local/lib/kubelet/credentialproviders"},
			wantMounts: map[string]credentialProviderMount{
				"credential-provider-config": {"/etc/kubernetes/kubelet-credentialproviderconfig.yaml", "File", true},
				"credential-provider-bin":    {"/usr/local/lib/kubelet/credentialproviders", "Directory", true},
			},
		},
		{
			// EKS AL2023: the config is in the plugin directory, which
			// brings it along.
			name: "EKS paths",
			args: []string{"--set", "distribution=kubeadm", "--set", "credentialProviders.config=/etc/eks/image-credential-provider/config.json",
				"--set", "credentialProviders.binDir=/etc/eks/image-credential-provider"},
			wantFlags: []string{"--image-credential-provider-config=/etc/eks/image-credential-provider/config.json",
				"--image-credential-provider-bin-dir=/etc/eks/image-credential-provider"},
			wantMounts: map[string]credentialProviderMount{
				"credential-provider-bin": {"/etc/eks/image-credential-provider", "Directory", true},
			},
		},
		{
			name: "config directory",
			args: []string{"--set", "distribution=kubeadm", "--set", "credentialProviders.config=/etc/kubernetes/credential-providers.d",
				"--set", "credentialProviders.binDir=/usr/libexec/kubelet-image-credential-provider-plugins"},
			wantFlags: []string{"--image-credential-provider-config=/etc/kubernetes/credential-providers.d",
				"--image-credential-provider-bin-dir=/usr/libexec/kubelet-image-credential-provider-plugins"},
			wantMounts: map[string]credentialProviderMount{
				"credential-provider-config": {"/etc/kubernetes/credential-providers.d", "Directory", true},
				"credential-provider-bin":    {"/usr/libexec/kubelet-image-credential-provider-plugins", "Directory", true},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := harness.MustHelm(t, "", append([]string{"template", "kube-preloader", chartDir, "-n", "ops"}, tc.args...)...)
			flags, mounts := credentialProviderSetup(t, objectsByKey(t, []byte(out))["DaemonSet/ops/preloader"])
			if !slices.Equal(flags, tc.wantFlags) {
				t.Errorf("agent flags %q, want %q", flags, tc.wantFlags)
			}
			if !maps.Equal(mounts, tc.wantMounts) {
				t.Errorf("mounts %+v, want %+v", mounts, tc.wantMounts)
			}
		})
	}
}

// TestChartCredentialProvidersDocExamples: the values the operators' page
// shows render, giving the agent both flags and read-only mounts.
func TestChartCredentialProvidersDocExamples(t *testing.T) {
	page, err := os.ReadFile("../docs/operations/credential-providers.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, part := range strings.Split(string(page), "```yaml\n")[1:] {
		blocks = append(blocks, part[:strings.Index(part, "```")])
	}
	if len(blocks) < 2 {
		t.Fatalf("%d yaml examples on the page, want the EKS and the k3s one", len(blocks))
	}
	for i, b := range blocks {
		values := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(values, []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := harness.Helm(t, "", "template", "kube-preloader", chartDir, "-n", "ops", "-f", values)
		if err != nil {
			t.Errorf("example %d:\n%s\ndoes not render: %v\n%s", i+1, b, err, out)
			continue
		}
		flags, mounts := credentialProviderSetup(t, objectsByKey(t, []byte(out))["DaemonSet/ops/preloader"])
		if len(flags) != 2 || len(mounts) == 0 {
			t.Errorf("example %d:\n%s\ngives the agent flags %q and mounts %+v", i+1, b, flags, mounts)
		}
		for name, m := range mounts {
			if !m.readOnly {
				t.Errorf("example %d: %s (%s) is mounted writable", i+1, name, m.path)
			}
		}
	}
}

// TestChartOnAPIServer renders the chart for every distribution and has a
// real API server validate it (server-side dry run); distribution auto
// reads the cluster's Nodes, and the monitors install where their CRDs are.
func TestChartOnAPIServer(t *testing.T) {
	k := harness.StartKube(t)
	ctx := context.Background()
	for _, ns := range []string{"kube-preloader", "monitoring"} {
		if _, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range distributions {
		t.Run("dry-run/"+d, func(t *testing.T) {
			out := harness.MustHelm(t, "", "template", "kube-preloader", chartDir, "-n", "kube-preloader", "--set", "distribution="+d,
				"--set", "dashboard.enabled=true", "--set", "credentialProviders.config=/etc/cp/config.yaml", "--set", "credentialProviders.binDir=/etc/cp/bin")
			res := kubectlStdin(t, k, out, "apply", "--dry-run=server", "-f", "-")
			if !strings.Contains(res, "daemonset.apps/preloader created (server dry run)") {
				t.Errorf("dry run:\n%s", res)
			}
		})
	}

	install := func(t *testing.T, args ...string) (string, error) {
		return harness.Helm(t, k.Kubeconfig, append([]string{"install", "kube-preloader", chartDir, "-n", "kube-preloader", "--dry-run=server"}, args...)...)
	}
	mountsOf := func(t *testing.T, out string) string {
		t.Helper()
		objs := objectsByKey(t, []byte(out[:strings.Index(out, "\nNOTES:")]))
		var paths []string
		for _, v := range dig(objs["DaemonSet/kube-preloader/preloader"], "spec", "template", "spec", "volumes").([]any) {
			if hp, ok := v.(map[string]any)["hostPath"].(map[string]any); ok {
				paths = append(paths, hp["path"].(string))
			}
		}
		return strings.Join(paths, " ")
	}
	t.Run("auto", func(t *testing.T) {
		out, err := install(t)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if m := mountsOf(t, out); !strings.Contains(m, "/run/containerd ") {
			t.Errorf("no Nodes: want kubeadm's mounts, got %s", m)
		}
		for _, n := range []*corev1.Node{
			{ObjectMeta: metav1.ObjectMeta{Name: "k3s-1", Annotations: map[string]string{"k3s.io/node-args": "[]", "k3s.io/hostname": "k3s-1"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "k3s-2", Annotations: map[string]string{"k3s.io/node-args": "[]"}}},
		} {
			if _, err := k.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		out, err = install(t)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if m := mountsOf(t, out); !strings.Contains(m, "/run/k3s/containerd") || strings.Contains(m, "/run/containerd ") {
			t.Errorf("k3s Nodes: want k3s's mounts, got %s", m)
		}
		if !strings.Contains(out, "(k3s layout)") {
			t.Errorf("NOTES do not name the k3s layout:\n%s", out[strings.Index(out, "\nNOTES:"):])
		}
		out, err = install(t, "--set", "credentialProviders.enabled=true")
		if err != nil {
			t.Fatalf("credentialProviders.enabled on k3s Nodes: %v\n%s", err, out)
		}
		if m := mountsOf(t, out); !strings.Contains(m, "/var/lib/rancher/credentialprovider/config.yaml /var/lib/rancher/credentialprovider/bin") {
			t.Errorf("credentialProviders.enabled on k3s Nodes: want k3s's provider paths, got %s", m)
		}
		mk := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "mk-1", Labels: map[string]string{"microk8s.io/cluster": "true"}}}
		if _, err := k.Client.CoreV1().Nodes().Create(ctx, mk, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		out, err = install(t)
		want := "distribution auto: the cluster's Nodes are of several layouts: k3s (k3s-1, k3s-2); microk8s (mk-1)"
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("mixed Nodes: want an error saying %q, got %v\n%s", want, err, out)
		}
		out, err = install(t, "--set", "distribution=microk8s")
		if err != nil || !strings.Contains(mountsOf(t, out), "/var/snap/microk8s/common/run") {
			t.Errorf("distribution=microk8s on mixed Nodes: %v\n%s", err, out)
		}
	})
	t.Run("monitors", func(t *testing.T) {
		args := []string{"--set", "distribution=kubeadm", "--set", "metrics.podMonitor.enabled=true", "--set", "metrics.serviceMonitor.enabled=true"}
		if out, err := install(t, args...); err == nil || !strings.Contains(out, "install the Prometheus Operator's CRDs first") {
			t.Fatalf("monitors without their CRDs: want a refusal, got %v\n%s", err, out)
		}
		// Stand-ins of the operator's CRDs (same group, version, kinds;
		// the operator's own schema is not vendored here).
		kubectlStdin(t, k, monitorCRDs, "apply", "-f", "-")
		kubectlStdin(t, k, "", "wait", "--for=condition=Established", "crd/podmonitors.monitoring.coreos.com", "crd/servicemonitors.monitoring.coreos.com")
		out, err := install(t, args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		objs := objectsByKey(t, []byte(out[:strings.Index(out, "\nNOTES:")]))
		for _, key := range []string{"PodMonitor/kube-preloader/preloader", "ServiceMonitor/kube-preloader/preloader", "Service/kube-preloader/preloader-metrics"} {
			if objs[key] == nil {
				t.Errorf("no %s", key)
			}
		}
	})
}

const monitorCRDs = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: podmonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: PodMonitor, listKind: PodMonitorList, plural: podmonitors, singular: podmonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
`

func kubectlStdin(t *testing.T, k *harness.Kube, stdin string, args ...string) string {
	t.Helper()
	out, err := kubectlInput(k, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// kubectlInput is kubectlStdin for a command that may fail: its combined
// output and error.
func kubectlInput(k *harness.Kube, stdin string, args ...string) (string, error) {
	cmd := exec.Command(harness.KubeBinary("kubectl"), append([]string{"--kubeconfig", k.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// objectsByKey parses a multi-document YAML stream into objects keyed
// KIND/NAMESPACE/NAME.
func objectsByKey(t *testing.T, stream []byte) map[string]map[string]any {
	t.Helper()
	objs := map[string]map[string]any{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(stream), 4096)
	for {
		var o map[string]any
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("parse rendered objects: %v", err)
		}
		if o == nil {
			continue
		}
		ns, _ := dig(o, "metadata", "namespace").(string)
		name, _ := dig(o, "metadata", "name").(string)
		objs[fmt.Sprintf("%s/%s/%s", o["kind"], ns, name)] = o
	}
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
