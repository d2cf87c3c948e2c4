package e2e

// The user stories on a real node, each judged by what the kubelet
// reports: pod phase, the container's waiting reason, Events.
//
// One cluster (etcd, kube-apiserver, controller-manager, scheduler, kubelet,
// containerd 1.6) serves scenarios a (after), b, c, d, e, f, g and h, in an
// order that lets each start from the state the one before left: the node
// boots with the pause image preloaded by the bootstrap hook (a) and the
// preloader.io/not-ready taint (c), `once` pulls a private image with
// pullVia containerd before the agent runs (g), the agent is installed from
// its Helm chart (c) and upgraded, then private images (b), an ECR image
// through the credential provider plugin the kubelet has too (h,
// credprovider_test.go), the rollout with the registry down (d), the image
// removed behind the kubelet's back (e), and the search for the password
// in everything a user or an attacker with read access sees (f).
// Scenario a's "before" needs a node that boots without the hook: its own
// short-lived cluster. Scenarios b and g run again on containerd 2.x; a, b,
// d and f on CRI-O.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/yaml"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

const (
	agentNamespace = "kube-preloader"
	agentConfigMap = "preloader-config"
	agentLabel     = "app.kubernetes.io/name=preloader"
	agentContainer = "preloader"
	// agentMetrics is the base DaemonSet's --metrics-addr, on the host
	// network.
	agentMetrics = "http://127.0.0.1:9741/metrics"
	// notReadyTaint is the taint nodes register with and the agent lifts.
	notReadyTaint = "preloader.io/not-ready"
	// startupTaint is a taint cluster-autoscaler knows, by its prefix, to
	// be a startup taint: the new node's, and its agent's --taint-key.
	startupTaint = "startup-taint.cluster-autoscaler.kubernetes.io/preloader"
	// resync is the agent's resync in the test's images.yaml.
	resync = 5 * time.Second
	// kubeletDropIns is where the agent's pod sees the kubelet's
	// --config-dir (the conventional path; the harness's is a temp dir).
	kubeletDropIns = "/etc/kubernetes/kubelet.conf.d"
	// nodeDiskBudget is the test kubelet's thresholds (image GC at 100%,
	// imagefs.available 1%) for `once` on the node, which reads them from
	// the kubelet's config where it finds one; the hook runs before the
	// harness writes it. Without it the defaults (85%, 15%) would refuse
	// every pull on a test machine whose disk is fuller than a node's.
	nodeDiskBudget = "diskBudget: {imageGCHighThresholdPercent: 100, imagefsAvailable: 1%}\n"
)

// nodeKind is one row of the test matrix: a kubelet release on a
// containerd flavor, or on CRI-O.
type nodeKind struct {
	kubelet string
	flavor  harness.Flavor
	runtime harness.NodeRuntime
}

func (k nodeKind) String() string { return "kubelet-" + k.kubelet + "/" + k.runtimeName() }

// runtimeName is the runtime as the rows name it: containerd's flavor, or
// CRI-O with its release.
func (k nodeKind) runtimeName() string {
	if k.runtime == harness.RuntimeCRIO {
		return "cri-o-" + strings.TrimPrefix(harness.CRIOVersion, "v")
	}
	return string(k.flavor)
}

// primary is what every scenario runs on: the newest supported kubelet on
// containerd 2.x. The oldest supported kubelet runs a subset, on 2.x and
// on containerd 1.6 (its last release to support 1.x: the legacy row).
var (
	primary  = nodeKind{kubelet: harness.KubeVersion, flavor: harness.Containerd2}
	oldest2  = nodeKind{kubelet: harness.OldestKubeletVersion, flavor: harness.Containerd2}
	oldest16 = nodeKind{kubelet: harness.OldestKubeletVersion, flavor: harness.Containerd16}
	// crio is the newest kubelet on CRI-O 1.36, a minor older than it:
	// the seed scenarios.
	crio = nodeKind{kubelet: harness.KubeVersion, runtime: harness.RuntimeCRIO}
)

// TestE2E runs every scenario, the KEP-2535 rows included, on the primary
// node kind, then the new node (n, newnode_test.go) on a cluster of its
// own of that kind, and the bootstrap hook, pullVia containerd, private
// images and the search for secrets on the oldest supported kubelet.
func TestE2E(t *testing.T) {
	start := time.Now()
	ok := map[string]bool{}
	ok[primary.String()] = t.Run(primary.String(), func(t *testing.T) { testScenarios(t, primary) })
	ok["new-node"] = t.Run("new-node", func(t *testing.T) { testNewNode(t, primary) })
	for _, k := range []nodeKind{oldest2, oldest16} {
		ok[k.String()] = t.Run(k.String(), func(t *testing.T) { testScenariosSubset(t, k) })
	}
	ok[crio.String()] = t.Run(crio.String(), func(t *testing.T) { testScenariosCRIO(t, crio) })
	t.Logf("e2e scenarios: %v (ok %v)", time.Since(start).Round(time.Millisecond), ok)
}

func testScenarios(t *testing.T, kind nodeKind) {
	start := time.Now()
	r := newRun(t, kind, true)
	step := func(name string, f func()) {
		t.Helper()
		s := time.Now()
		t.Logf("=== scenario %s", name)
		f()
		t.Logf("=== scenario %s done in %v", name, time.Since(s).Round(time.Millisecond))
	}

	t.Run("a-before", r.scenarioPauseBefore)
	if t.Failed() {
		t.FailNow()
	}
	step("cluster", func() {
		r.kube = harness.StartKube(t)
		r.startNode(t, true)
	})
	step("a", func() { r.scenarioPauseAfter(t) })
	// Before the agent, which would unpin an image its config does not list.
	step("g", func() { r.scenarioPullViaContainerd(t, "g") })
	step("c", func() {
		r.entries = []cfgEntry{{Image: r.img["gate"].Ref}}
		r.scenarioReadinessGate(t)
	})
	// The release installed in c, upgraded with changed values.
	step("helm upgrade", func() { r.helmUpgrade(t) })
	step("b", func() { r.scenarioPrivate(t, "b") })
	step("h", func() { r.scenarioCredentialProvider(t) })
	step("d", func() { r.scenarioRegistryDown(t) })
	step("e", func() { r.scenarioRemoved(t) })
	// Before k, whose kubelet policy refuses what it has not verified.
	step("r", func() { r.scenarioRefresh(t) })
	// k before f, so that f searches its outputs too.
	step("k", func() { r.scenarioCredentialPolicy(t) })
	step("f", func() { r.scenarioNoSecrets(t, "f") })
	// Last: it drops an image the scenarios before list.
	step("p", func() { r.scenarioPrune(t) })
	step("m", func() { r.scenarioDashboard(t) })
	step("u", func() { r.helmUninstall(t) })
	t.Logf("%s: every scenario in %v", kind, time.Since(start).Round(time.Millisecond))
}

// testScenariosSubset boots a node with the same bootstrap hook and runs
// scenarios a, g and b (and f's search) on it, and on containerd 2.x k3,
// the printed allowlist.
func testScenariosSubset(t *testing.T, kind nodeKind) {
	start := time.Now()
	r := newRun(t, kind, false)
	r.kube = harness.StartKube(t)
	r.startNode(t, false)
	r.scenarioPauseAfter(t)
	r.scenarioPullViaContainerd(t, "g")
	r.deployAgent(t)
	r.scenarioPrivate(t, "b")
	if r.flavor == harness.Containerd2 {
		// The allowlist as this older kubelet matches it (prefixes).
		r.scenarioAllowlist(t, "-")
	}
	r.scenarioNoSecrets(t, "f")
	t.Logf("%s: scenarios in %v", kind, time.Since(start).Round(time.Millisecond))
}

// testScenariosCRIO runs the seed scenarios on a CRI-O node: a, before
// and after the bootstrap hook; the agent installed from manifests/ as a
// CRI-O node gets it, finding CRI-O's socket at /run/crio on its own; b
// with Never and IfNotPresent pods; d, the registry down after warming;
// and f's search.
func testScenariosCRIO(t *testing.T, kind nodeKind) {
	start := time.Now()
	r := newRun(t, kind, false)
	if !t.Run("a-before", r.scenarioPauseBefore) {
		t.FailNow()
	}
	r.kube = harness.StartKube(t)
	r.startNode(t, false)
	r.scenarioPauseAfter(t)
	r.deployAgent(t)
	r.checkAgentOnCRIO(t)
	r.scenarioPrivate(t, "b")
	r.scenarioRegistryDown(t)
	r.scenarioNoSecrets(t, "f")
	t.Logf("%s: scenarios in %v", kind, time.Since(start).Round(time.Millisecond))
}

// checkAgentOnCRIO: the agent, given no socket, found CRI-O's where a
// CRI-O node has it, and its status on the Node names CRI-O.
func (r *run) checkAgentOnCRIO(t *testing.T) {
	t.Helper()
	want := strings.TrimPrefix(harness.CRIOVersion, "v")
	deadline := time.Now().Add(time.Minute)
	for {
		st := harness.ViewNode(r.node.Client, r.node.Name).Status
		if st != nil && st.Runtime != nil && st.Runtime.Name == "cri-o" && st.Runtime.Version == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Node's status does not name cri-o %s as the runtime: %+v", want, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	logs, err := r.node.PodLogs(agentNamespace, r.agentPod, agentContainer)
	if line := `msg=connected endpoint=unix:///run/crio/crio.sock runtime=cri-o version=` + want; err != nil || !strings.Contains(logs, line) {
		t.Fatalf("agent log lacks %q: %v\n%s", line, err, tailLines(logs, 20))
	}
}

// run is one cluster's registries, images, credentials and what the
// scenarios leave for each other.
type run struct {
	kind   nodeKind
	flavor harness.Flavor
	// full: every scenario runs on this cluster, each leaving state for
	// the next.
	full bool
	kube *harness.Kube
	node *harness.Node
	// pub is anonymous (the agent's image, public workloads); priv needs
	// the password (the pause image, private workloads).
	pub, priv *harness.Registry
	img       map[string]harness.TestImage
	user      string
	password  string
	// auth is base64(user:password), the "auth" of docker configs.
	auth       string
	kubectl    string
	agentImage string
	imageBuilt chan cmdResult
	// helmHome holds helm's registry login and caches (the full run).
	helmHome string
	// prom scrapes the agent (the full run).
	prom *harness.Prometheus
	// ecr is the ECR registry, its stub and images (the full run): the
	// node's kubelet and the chart's agent have ecr-credential-provider.
	ecr      *ecrSetup
	agentPod string
	// entries and sandbox are the images.yaml the test last wrote.
	entries []cfgEntry
	// workloads are the namespaces of its workloads section; with them
	// the install includes preloader controller.
	workloads []string
	// taintKey is the taint the node registers with and the agent lifts:
	// the chart's taintKey, which the install sets where it is not the
	// default.
	taintKey string
	// prune: the config says prune: true (scenario p).
	prune   bool
	sandbox string
	// spec is an image of the test's workload, for images pushed later.
	spec func(repo, tag string) harness.ImageSpec
	// outputs are every command's output and other texts a user sees, for
	// scenario f.
	outputs []namedText
	// onceTook is how long the bootstrap hook's `preloader once` ran.
	onceTook time.Duration
	// pauseBefore is the kubelet's verdict on the node booted without the
	// hook.
	pauseBefore string
}

type namedText struct{ name, text string }

type cmdResult struct {
	out  string
	code int
	err  error
	took time.Duration
}

func newRun(t *testing.T, kind nodeKind, full bool) *run {
	t.Helper()
	r := &run{kind: kind, flavor: kind.flavor, full: full, img: map[string]harness.TestImage{}, sandbox: "auto", taintKey: notReadyTaint}
	r.kubectl = kubectlBinary(t)
	r.user = "e2e-puller"
	r.password = "pw-" + randomHex(t, 12)
	r.auth = base64.StdEncoding.EncodeToString([]byte(r.user + ":" + r.password))

	r.pub = harness.StartRegistry(t, harness.RegistryOptions{})
	r.priv = harness.StartRegistry(t, harness.RegistryOptions{Username: r.user, Password: r.password})

	// The agent's image, built and pushed the way a user does it, while the
	// rest starts.
	r.agentImage = r.pub.Host + "/preloader:e2e"
	r.imageBuilt = make(chan cmdResult, 1)
	go func() {
		r.imageBuilt <- runCommand(repoRoot, 10*time.Minute, nil, "make", "image", "IMAGE="+r.agentImage)
	}()

	workload := harness.BuildGoBinary(t, ".", "./testdata/workload")
	spec := func(repo, tag string) harness.ImageSpec {
		return harness.ImageSpec{
			Repo:       repo,
			Tag:        tag,
			Files:      map[string][]byte{"workload": workload, "VERSION": []byte(repo + ":" + tag + "\n")},
			Entrypoint: []string{"/workload"},
		}
	}
	pub := harness.PushTestImages(t, r.pub, []harness.ImageSpec{
		spec("team/app", "1.0"),   // a
		spec("team/gate", "1.0"),  // c
		spec("team/web", "1.0"),   // d: the running version
		spec("team/web", "2.0"),   // d: NEW, warmed
		spec("team/web", "3.0"),   // d: never warmed, the control
		spec("team/spare", "1.0"), // e
		spec("team/late", "1.0"),  // k4: outside the allowlist
	})
	for i, name := range []string{"app", "gate", "web1", "web2", "web3", "spare", "late"} {
		r.img[name] = pub[i]
	}
	r.spec = spec
	if full {
		r.ecr = startECR(t, spec)
	}
	privSpecs := []harness.ImageSpec{
		harness.PauseImageSpec(t, "pause", "3.10"),
		spec("team/private", "1.0"),
		spec("team/sa-private", "1.0"),
		spec("team/via-client", "1.0"), // g
		spec("team/via-cri", "1.0"),    // g: the CRI pull to compare with
	}
	privNames := []string{"pause", "private", "sa-private", "via-client", "via-cri"}
	if kind.runtime == harness.RuntimeCRIO {
		privSpecs = append(privSpecs, spec("team/private-inp", "1.0")) // b: IfNotPresent
		privNames = append(privNames, "private-inp")
	}
	priv := harness.PushTestImages(t, r.priv, privSpecs)
	for i, name := range privNames {
		r.img[name] = priv[i]
	}
	if r.flavor == harness.Containerd2 && !r.full {
		// containerd 2.x does not report its sandbox image through the
		// CRI and the overlay's agent pod has no containerd config: name
		// it (docs/operations/sandbox-image.md). The full run's chart
		// mounts k3s's.
		r.sandbox = r.img["pause"].Ref
	}
	return r
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// kubectlBinary is the kubectl scripts/build-kube.sh built (the cluster's
// version), else one on PATH.
func kubectlBinary(t *testing.T) string {
	t.Helper()
	built := harness.KubeBinary("kubectl")
	if _, err := os.Stat(built); err == nil {
		return built
	}
	if p, err := exec.LookPath("kubectl"); err == nil {
		return p
	}
	harness.Require(t, "kubectl (scripts/build-kube.sh kubectl)", built)
	return built
}

// runCommand runs a program to the end, stdout and stderr together.
func runCommand(dir string, timeout time.Duration, env []string, bin string, args ...string) cmdResult {
	return runCommandStdin(dir, timeout, env, "", bin, args...)
}

// runCommandStdin is runCommand with stdin.
func runCommandStdin(dir string, timeout time.Duration, env []string, stdin, bin string, args ...string) cmdResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err := cmd.Run()
	res := cmdResult{out: buf.String(), took: time.Since(start)}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		res.code = exit.ExitCode()
	case err != nil:
		res.err, res.code = err, -1
	}
	return res
}

// command runs a program, keeps its output for scenario f and returns it.
func (r *run) command(t *testing.T, name string, timeout time.Duration, env []string, bin string, args ...string) cmdResult {
	t.Helper()
	res := runCommand(repoRoot, timeout, env, bin, args...)
	r.outputs = append(r.outputs, namedText{name, res.out})
	if res.err != nil {
		t.Fatalf("%s: %v\n%s", name, res.err, res.out)
	}
	return res
}

// ---------------------------------------------------------------------
// a: the pause image behind a registry containerd has no credentials for.

// scenarioPauseBefore boots a node whose containerd's sandbox image is on
// the password-protected registry, without the bootstrap hook: the kubelet
// cannot create any pod's sandbox.
func (r *run) scenarioPauseBefore(t *testing.T) {
	kube := harness.StartKube(t)
	n := harness.StartNode(t, harness.NodeOptions{
		Kube:           kube,
		KubeletVersion: r.kind.kubelet,
		Runtime:        r.kind.runtime,
		Flavor:         r.flavor,
		SandboxImage:   r.img["pause"].Ref,
		Registries:     []*harness.Registry{r.pub, r.priv},
	})
	n.WaitServiceAccount(t, "default", "default", time.Minute)
	pod := hostPod(n, "a-pod", r.img["app"].Ref, corev1.PullIfNotPresent)
	createPod(t, n, pod)
	msg := waitPodEvent(t, n, "default", "a-pod", "FailedCreatePodSandBox", 2*time.Minute)
	p := getPod(t, n, "default", "a-pod")
	if p.Status.Phase != corev1.PodPending {
		t.Fatalf("a-pod: want Pending without a sandbox, got %s", harness.DescribePod(p))
	}
	if !strings.Contains(msg, r.img["pause"].Ref) || !mentionsUnauthorized(msg) {
		t.Errorf("FailedCreatePodSandBox does not say the pause image was refused: %s", msg)
	}
	r.outputs = append(r.outputs, namedText{"a-before: Events", strings.Join(n.PodEvents("default", "a-pod"), "\n")})
	r.pauseBefore = fmt.Sprintf("%s, %s, FailedCreatePodSandBox (%s)", p.Status.Phase, waitingOr(p, "no sandbox"), unauthorizedWord(msg))
	t.Logf("a-before: %s\n  event FailedCreatePodSandBox: %s", harness.DescribePod(p), msg)
}

func mentionsUnauthorized(msg string) bool {
	return unauthorizedWord(msg) != ""
}

func unauthorizedWord(msg string) string {
	for _, w := range []string{"401 Unauthorized", "unauthorized", "401", "authorization failed", "authentication required"} {
		if strings.Contains(strings.ToLower(msg), strings.ToLower(w)) {
			return w
		}
	}
	return ""
}

// startNode starts the run's node: containerd with the pause image on the
// private registry, the bootstrap hook (`preloader once` with a legacy
// .dockercfg) before the kubelet, and, with taint, the kubelet registering
// the node with the run's taintKey.
func (r *run) startNode(t *testing.T, taint bool) {
	t.Helper()
	opts := harness.NodeOptions{
		Kube:           r.kube,
		KubeletVersion: r.kind.kubelet,
		Runtime:        r.kind.runtime,
		Flavor:         r.flavor,
		SandboxImage:   r.img["pause"].Ref,
		Registries:     []*harness.Registry{r.pub, r.priv},
		BeforeKubelet:  func(n *harness.Node) { r.bootstrapHook(t, n) },
	}
	if r.ecr != nil {
		opts.ImageCredentialProviderConfig, opts.ImageCredentialProviderBinDir = k3sProviderConfig, k3sProviderBinDir
		opts.BeforeKubelet = func(n *harness.Node) {
			r.ecr.install(t, n)
			r.bootstrapHook(t, n)
		}
	}
	if r.full {
		// containerd 2.x at k3s's paths: the chart's distribution: k3s and
		// the preloader's discovery, with no path flags, on a real kubelet.
		opts.Layout = "k3s"
	}
	if taint {
		opts.RegisterWithTaints = []corev1.Taint{{Key: r.taintKey, Effect: corev1.TaintEffectNoSchedule}}
	}
	r.node = harness.StartNode(t, opts)
	t.Cleanup(func() {
		if t.Failed() && r.agentPod != "" {
			logs, err := r.node.PodLogs(agentNamespace, r.agentPod, agentContainer)
			t.Logf("agent %s log (%v):\n%s", r.agentPod, err, tailLines(logs, 60))
		}
	})
	r.node.WaitServiceAccount(t, "default", "default", time.Minute)
}

// onNode runs the preloader on node n as its own hooks would. On a node
// with a distribution's layout (the full run's k3s) it runs inside the
// node's mount namespace with no path flags: it finds containerd, its
// config and hosts directory where k3s puts them. Elsewhere it is told the
// harness's socket and, on containerd 2.x, which does not report its
// sandbox image or config_path through the CRI, containerd's config file.
// On CRI-O it is told the socket, which CRI-O's own status completes.
func (r *run) onNode(t *testing.T, n *harness.Node, name string, timeout time.Duration, args ...string) cmdResult {
	t.Helper()
	if n.CRIO != nil {
		return r.command(t, name, timeout, nil, preloaderBin, append(args, "--cri-endpoint", n.CRIO.Endpoint)...)
	}
	if ns := n.Containerd.Namespace; ns != nil {
		bin, argv := ns.Wrap(preloaderBin, args...)
		return r.command(t, name, timeout, nil, bin, argv...)
	}
	args = append(args, "--cri-endpoint", n.Containerd.Endpoint, "--containerd-address", n.Containerd.Address)
	var env []string
	if r.flavor == harness.Containerd2 {
		env = append(env, "PRELOADER_CONTAINERD_CONFIG="+n.Containerd.ConfigFile)
	}
	return r.command(t, name, timeout, env, preloaderBin, args...)
}

// bootstrapHook runs what scripts/preloader-bootstrap.service runs, its
// ExecStart with this tree's binary, a config of the pause image alone
// (sandboxImage: auto) and a legacy .dockercfg with the registry's
// password, once containerd answers and before the kubelet starts.
func (r *run) bootstrapHook(t *testing.T, n *harness.Node) {
	t.Helper()
	dir := t.TempDir()
	config := filepath.Join(dir, "images.yaml")
	write(t, config, "# The node's bootstrap list: the runtime's own pause image.\nimages: []\nsandboxImage: auto\n"+nodeDiskBudget)
	dockercfg := filepath.Join(dir, ".dockercfg")
	legacy := map[string]map[string]string{r.priv.Host: {"auth": r.auth, "email": "e2e@example.invalid"}}
	b, _ := json.Marshal(legacy)
	writeMode(t, dockercfg, string(b), 0o600)

	unit, err := os.ReadFile(filepath.Join(repoRoot, "scripts", "preloader-bootstrap.service"))
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, line := range strings.Split(string(unit), "\n") {
		if rest, ok := strings.CutPrefix(line, "ExecStart="); ok {
			args = strings.Fields(rest)
		}
	}
	if len(args) < 2 || args[1] != "once" {
		t.Fatalf("preloader-bootstrap.service: no ExecStart=... once line: %q", args)
	}
	for i, a := range args[1:] {
		if a == "/etc/preloader/images.yaml" {
			args[i+1] = config
		}
	}
	res := r.onNode(t, n, "bootstrap: preloader once", 5*time.Minute, append(args[1:], "--docker-config", dockercfg)...)
	r.onceTook = res.took
	t.Logf("bootstrap hook: preloader %s (%v, exit %d)\n%s", strings.Join(args, " "), res.took.Round(time.Millisecond), res.code, res.out)
	if res.code != 0 || !strings.Contains(res.out, r.img["pause"].Ref) {
		t.Fatalf("bootstrap hook: preloader once exit %d, want 0 and the pause image %s pulled:\n%s", res.code, r.img["pause"].Ref, res.out)
	}
}

// scenarioPauseAfter: on the node booted with the hook, a pod's sandbox
// starts with no registry access for the pause image.
func (r *run) scenarioPauseAfter(t *testing.T) {
	t.Helper()
	n := r.node
	pod := tolerateNotReady(hostPod(n, "a-pod", r.img["app"].Ref, corev1.PullIfNotPresent))
	created := time.Now()
	createPod(t, n, pod)
	p := n.WaitPodRunning(t, "default", "a-pod", 2*time.Minute)
	took := time.Since(created)
	for _, e := range n.PodEvents("default", "a-pod") {
		if strings.HasPrefix(e, "FailedCreatePodSandBox") {
			t.Errorf("a-pod ran but the kubelet reported %s", e)
		}
	}
	before := r.pauseBefore
	if before == "" {
		before = "(not run on this runtime)"
	}
	verdicts.add(verdict{
		scenario:  r.row("a pause image on auth registry, once as hook"),
		before:    before,
		after:     fmt.Sprintf("%s, sandbox created (once ran %.1fs before the kubelet)", p.Status.Phase, r.onceTook.Seconds()),
		toRunning: took,
	})
}

// ---------------------------------------------------------------------
// c: the readiness gate, and the agent's install from manifests/.

func (r *run) scenarioReadinessGate(t *testing.T) {
	t.Helper()
	n := r.node
	ctx := context.Background()
	if !hasTaint(getNode(t, n), notReadyTaint) {
		t.Fatalf("node %s did not register with the %s taint", n.Name, notReadyTaint)
	}
	gate := deployment(n, "gate", r.img["gate"].Ref, corev1.PullNever, 2)
	if _, err := n.Client.AppsV1().Deployments("default").Create(ctx, gate, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Before the agent: the scheduler refuses the node.
	pods := waitDeploymentPods(t, n, "gate", 2, time.Minute)
	var msg string
	for _, p := range pods {
		msg = waitPodEvent(t, n, "default", p.Name, "FailedScheduling", time.Minute)
		// The scheduler's message says "untolerated taint(s)" without naming
		// it; the node has only ours.
		if !strings.Contains(msg, "untolerated taint") {
			t.Fatalf("gate pod %s: FailedScheduling is not about a taint: %s", p.Name, msg)
		}
		p := getPod(t, n, "default", p.Name)
		if p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
			t.Fatalf("gate pod %s: want Pending and unscheduled: %s", p.Name, harness.DescribePod(p))
		}
	}
	if taints := getNode(t, n).Spec.Taints; len(taints) != 1 || taints[0].Key != notReadyTaint {
		t.Fatalf("node taints %v, want only %s", taints, notReadyTaint)
	}
	before := "Pending 2/2, FailedScheduling: untolerated taint " + notReadyTaint
	t.Logf("c-before: FailedScheduling: %s", msg)

	applied := r.deployAgent(t)
	// The taint goes once the agent has the images; by then they must be
	// there (the agent lifts it, nothing else does).
	untainted := waitNode(t, n, time.Minute+2*resync, "without the "+notReadyTaint+" taint", func(node *corev1.Node) bool {
		return !hasTaint(node, notReadyTaint)
	})
	taintGone := time.Since(applied)
	if !r.imagePresent(t, r.img["gate"].Ref) {
		t.Errorf("the %s taint is gone but %s is not in the runtime", notReadyTaint, r.img["gate"].Ref)
	}
	if untainted.Labels["preloader.io/ready"] != "true" {
		t.Errorf("node without the taint but preloader.io/ready=%q", untainted.Labels["preloader.io/ready"])
	}
	waitDeploymentRolledOut(t, n, "gate", r.img["gate"].Ref, 2*time.Minute)
	verdicts.add(verdict{
		scenario:  r.row("c readiness gate (Deployment first)"),
		before:    before,
		after:     fmt.Sprintf("Running 2/2 (Never); agent lifted the taint %.1fs after %s", taintGone.Seconds(), r.installer()),
		toRunning: time.Since(applied),
	})
}

// deployAgent installs the agent as a user does: its image (make image),
// then the chart from an OCI registry with helm (the full run) or kubectl
// apply -k of an overlay whose base is manifests/ (the others). It waits
// until the agent's pod runs and returns when the install finished.
func (r *run) deployAgent(t *testing.T) time.Time {
	t.Helper()
	r.waitImage(t)
	var applied time.Time
	if r.full {
		applied = r.helmInstall(t)
	} else {
		applied = r.kustomizeApply(t)
	}
	r.waitAgentPod(t, "", applied)
	if r.full {
		// A real Prometheus scrapes the agent from here to scenario m.
		r.prom = harness.StartPrometheus(t, []string{strings.TrimSuffix(strings.TrimPrefix(agentMetrics, "http://"), "/metrics")})
	}
	return applied
}

func (r *run) waitImage(t *testing.T) {
	t.Helper()
	var built cmdResult
	select {
	case built = <-r.imageBuilt:
	case <-time.After(10 * time.Minute):
		t.Fatal("make image: still running after 10 minutes")
	}
	r.outputs = append(r.outputs, namedText{"make image", built.out})
	if built.err != nil || built.code != 0 {
		t.Fatalf("make image IMAGE=%s: exit %d %v\n%s", r.agentImage, built.code, built.err, built.out)
	}
	t.Logf("make image IMAGE=%s: %v\n%s", r.agentImage, built.took.Round(time.Millisecond), tailLines(built.out, 5))
}

// kustomizeApply is kubectl apply -k of the run's own layer on top of
// integration/e2e/overlay, which sets what changes with every run: the
// image's registry, the containerd directory, the API server's port and
// the images.yaml. On CRI-O the layer is on manifests/ itself: the agent
// is given no socket and finds CRI-O's at /run/crio, the base's mount of
// the host's /run/crio, here pointed at the node's directory of CRI-O's
// socket.
func (r *run) kustomizeApply(t *testing.T) time.Time {
	t.Helper()
	dir := t.TempDir()
	base := filepath.Join(repoRoot, "integration", "e2e", "overlay")
	runtimeVolume := "containerd"
	runtimeDir := ""
	env := ""
	crioPatch := ""
	if n := r.node; n.CRIO != nil {
		base = filepath.Join(repoRoot, "manifests")
		runtimeVolume, runtimeDir = "crio", n.CRIOSocketDir
		env = `            - name: KUBERNETES_SERVICE_HOST
              value: 127.0.0.1
`
		// The kubelet gives a system-node-critical pod's containers
		// oom_score_adj -997, as it does Guaranteed ones; runc cannot set a
		// negative one where root lacks CAP_SYS_RESOURCE, as on the test
		// machines, and CRI-O, unlike containerd, has no
		// restrict_oom_score_adj to clamp it. Without the priority class
		// the pod is Burstable (oom_score_adj above 0). The verifiers'
		// directory is containerd's, outside the runtime's namespace: kept
		// in the node's directory.
		crioPatch = fmt.Sprintf(`
      - op: remove
        path: /spec/template/spec/priorityClassName
      - op: replace
        path: /spec/template/spec/volumes/%d/hostPath/path
        value: %s`, baseVolumeIndex(t, "image-verifiers"), filepath.Join(n.Dir, "image-verifiers"))
	} else {
		runtimeDir = r.node.Containerd.Dir
	}
	rel, err := filepath.Rel(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	name, tag, _ := strings.Cut(strings.TrimPrefix(r.agentImage, r.pub.Host+"/"), ":")
	extraResources, extraPatches := r.installExtras(t, dir)
	write(t, filepath.Join(dir, "kustomization.yaml"), fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
%simages:
  - name: ghcr.io/kube-preloader/preloader
    newName: %s/%s
    newTag: %s
patches:
  - path: daemonset-run.yaml
  - path: configmap-run.yaml
  # The kubelet's drop-ins (--config-dir), which the base does not mount.
  - target:
      kind: DaemonSet
      name: preloader
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --kubelet-config-dir=%s
      - op: add
        path: /spec/template/spec/containers/0/volumeMounts/-
        value: {name: kubelet-config-dir, mountPath: %s, readOnly: true}
      - op: add
        path: /spec/template/spec/volumes/-
        value: {name: kubelet-config-dir, hostPath: {path: %s, type: Directory}}%s
%s`, rel, extraResources, r.pub.Host, name, tag, kubeletDropIns, kubeletDropIns, r.node.KubeletConfigDir, crioPatch, extraPatches))
	port := strconv.Itoa(r.node.APIServerPort())
	write(t, filepath.Join(dir, "daemonset-run.yaml"), `apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: preloader
  namespace: kube-preloader
spec:
  template:
    spec:
      containers:
        - name: preloader
          env:
`+env+`            - name: KUBERNETES_SERVICE_PORT
              value: "`+port+`"
            - name: KUBERNETES_SERVICE_PORT_HTTPS
              value: "`+port+`"
      volumes:
        - name: `+runtimeVolume+`
          hostPath:
            path: `+runtimeDir+`
        - name: kubelet-config
          hostPath:
            path: `+r.node.KubeletConfigFile+`
`)
	write(t, filepath.Join(dir, "configmap-run.yaml"), `apiVersion: v1
kind: ConfigMap
metadata:
  name: preloader-config
  namespace: kube-preloader
data:
  images.yaml: |
`+indent(r.renderConfig(), "    "))

	res := r.command(t, "kubectl apply -k", 2*time.Minute, nil, r.kubectl, "--kubeconfig", r.kube.Kubeconfig, "apply", "-k", dir)
	applied := time.Now()
	if res.code != 0 {
		t.Fatalf("kubectl apply -k: exit %d\n%s", res.code, res.out)
	}
	t.Logf("kubectl apply -k %s:\n%s", dir, res.out)
	return applied
}

// baseDaemonSet is the agent's DaemonSet as manifests/base has it.
func baseDaemonSet(t *testing.T) appsv1.DaemonSet {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "manifests", "base", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatal(err)
	}
	return ds
}

// baseVolumeIndex is the index of the base DaemonSet's volume name in its
// volumes, for a JSON patch.
func baseVolumeIndex(t *testing.T, name string) int {
	t.Helper()
	ds := baseDaemonSet(t)
	for i, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return i
		}
	}
	t.Fatalf("manifests/base/daemonset.yaml has no volume %s", name)
	return -1
}

// waitAgentPod waits for the DaemonSet's pod on the run's node, other than
// the pod named old, to run, and remembers its name.
func (r *run) waitAgentPod(t *testing.T, old string, since time.Time) {
	t.Helper()

	// The DaemonSet's pod on our node, running.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		pods, err := r.node.Client.CoreV1().Pods(agentNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: agentLabel})
		if err == nil && len(pods.Items) == 1 && pods.Items[0].Spec.NodeName == r.node.Name && pods.Items[0].Name != old {
			r.agentPod = pods.Items[0].Name
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new agent pod on %s after 3m: %v %d pods\n%s", r.node.Name, err, len(pods.Items), r.node.Logs(30))
		}
		time.Sleep(200 * time.Millisecond)
	}
	p := r.node.WaitPodRunning(t, agentNamespace, r.agentPod, 3*time.Minute)
	t.Logf("agent pod %s running %v after the install (image %s)", r.agentPod, time.Since(since).Round(time.Millisecond), p.Spec.Containers[0].Image)
}

// installer is how the run installs the agent.
func (r *run) installer() string {
	if r.full {
		return "helm install"
	}
	return "apply -k"
}

// cfgEntry is one image of the test's images.yaml.
type cfgEntry struct {
	Image          string
	PullSecrets    []string
	ServiceAccount string
	Refresh        time.Duration
}

func (r *run) renderConfig() string {
	var b strings.Builder
	if len(r.entries) == 0 {
		b.WriteString("images: []\n")
	} else {
		b.WriteString("images:\n")
	}
	for _, e := range r.entries {
		fmt.Fprintf(&b, "  - image: %s\n", e.Image)
		if len(e.PullSecrets) > 0 {
			fmt.Fprintf(&b, "    pullSecrets: [%s]\n", strings.Join(e.PullSecrets, ", "))
		}
		if e.ServiceAccount != "" {
			fmt.Fprintf(&b, "    serviceAccount: %s\n", e.ServiceAccount)
		}
		if e.Refresh > 0 {
			fmt.Fprintf(&b, "    refresh: %s\n", e.Refresh)
		}
	}
	if len(r.workloads) > 0 {
		fmt.Fprintf(&b, "workloads:\n  - namespaces: [%s]\n", strings.Join(r.workloads, ", "))
	}
	fmt.Fprintf(&b, "sandboxImage: %s\nresync: %s\n", r.sandbox, resync)
	if r.prune {
		b.WriteString("prune: true\n")
	}
	return b.String()
}

// writeConfig replaces the ConfigMap's images.yaml with the run's entries,
// as `kubectl edit` would.
func (r *run) writeConfig(t *testing.T) {
	t.Helper()
	cms := r.node.Client.CoreV1().ConfigMaps(agentNamespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(context.Background(), agentConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cm.Data["images.yaml"] = r.renderConfig()
		_, err = cms.Update(context.Background(), cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("update ConfigMap: %v", err)
	}
}

// ---------------------------------------------------------------------
// b: private images, pods with Never and no imagePullSecrets.

func (r *run) scenarioPrivate(t *testing.T, name string) {
	t.Helper()
	n := r.node
	ctx := context.Background()
	// The credentials, in the agent's namespace only: a Secret named by
	// pullSecrets (config.json shape), and a legacy .dockercfg Secret that a
	// ServiceAccount lists as its imagePullSecrets.
	configJSON, _ := json.Marshal(map[string]any{"auths": map[string]any{
		r.priv.Host: map[string]string{"username": r.user, "password": r.password},
	}})
	dockercfg, _ := json.Marshal(map[string]any{r.priv.Host: map[string]string{"auth": r.auth}})
	secrets := n.Client.CoreV1().Secrets(agentNamespace)
	for _, s := range []*corev1.Secret{
		{ObjectMeta: metav1.ObjectMeta{Name: "regcred"}, Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{corev1.DockerConfigJsonKey: configJSON}},
		{ObjectMeta: metav1.ObjectMeta{Name: "builder-dockercfg"}, Type: corev1.SecretTypeDockercfg,
			Data: map[string][]byte{corev1.DockerConfigKey: dockercfg}},
	} {
		if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sa := &corev1.ServiceAccount{
		ObjectMeta:       metav1.ObjectMeta{Name: "builder"},
		ImagePullSecrets: []corev1.LocalObjectReference{{Name: "builder-dockercfg"}},
	}
	if _, err := n.Client.CoreV1().ServiceAccounts(agentNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	type privCase struct {
		pod, image, via string
		policy          corev1.PullPolicy
		entry           cfgEntry
	}
	cases := []privCase{
		{"b-secret", r.img["private"].Ref, "pullSecrets", corev1.PullNever, cfgEntry{Image: r.img["private"].Ref, PullSecrets: []string{"regcred"}}},
		{"b-sa", r.img["sa-private"].Ref, "serviceAccount", corev1.PullNever, cfgEntry{Image: r.img["sa-private"].Ref, ServiceAccount: "builder"}},
	}
	if inp, ok := r.img["private-inp"]; ok {
		// IfNotPresent: the kubelet pulls with the pod's credentials, which
		// are none, until the image is on the node.
		cases = append(cases, privCase{"b-ifnotpresent", inp.Ref, "pullSecrets", corev1.PullIfNotPresent, cfgEntry{Image: inp.Ref, PullSecrets: []string{"regcred"}}})
	}
	before := map[string]string{}
	for _, c := range cases {
		pod := hostPod(n, c.pod, c.image, c.policy)
		if len(pod.Spec.ImagePullSecrets) != 0 {
			t.Fatal("pod has imagePullSecrets")
		}
		createPod(t, n, pod)
	}
	for _, c := range cases {
		if c.policy == corev1.PullNever {
			p := n.WaitContainerWaiting(t, "default", c.pod, "ErrImageNeverPull", time.Minute)
			before[c.pod] = fmt.Sprintf("%s, ErrImageNeverPull", p.Status.Phase)
			continue
		}
		p := n.WaitPod(t, "default", c.pod, time.Minute, "failing to pull", func(p *corev1.Pod) bool {
			w := harness.WaitingReason(p)
			return w == "ErrImagePull" || w == "ImagePullBackOff"
		})
		// "Failed: Failed to pull image ...", beside "Failed: Error: ErrImagePull".
		var msg string
		for deadline := time.Now().Add(30 * time.Second); msg == "" && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			for _, e := range n.PodEvents("default", c.pod) {
				if m, ok := strings.CutPrefix(e, "Failed: "); ok && strings.Contains(m, c.image) && mentionsUnauthorized(m) {
					msg = m
				}
			}
		}
		if msg == "" {
			t.Errorf("%s: the kubelet's pull failed, but no Failed Event says it was refused for want of credentials: %q", c.pod, n.PodEvents("default", c.pod))
		}
		before[c.pod] = fmt.Sprintf("%s, %s (%s)", p.Status.Phase, harness.WaitingReason(p), unauthorizedWord(msg))
	}

	// Listed: with the pod's own Secret, and through a ServiceAccount's.
	// (e's image joins here, anonymous, so it is present when e starts.)
	for _, c := range cases {
		r.entries = append(r.entries, c.entry)
	}
	if r.full {
		r.entries = append(r.entries, cfgEntry{Image: r.img["spare"].Ref})
	}
	edited := time.Now()
	r.writeConfig(t)
	// When the agent made each present (the rest of the wait to Running is
	// the kubelet's retry of a pod that failed, about every 10-15 s).
	present := map[string]time.Duration{}
	for len(present) < len(cases) {
		for _, c := range cases {
			if _, ok := present[c.pod]; !ok && r.imagePresent(t, c.image) {
				present[c.pod] = time.Since(edited)
			}
		}
		if time.Since(edited) > 2*time.Minute {
			t.Fatalf("images not present 2m after the ConfigMap edit: %v", present)
		}
		time.Sleep(100 * time.Millisecond)
	}
	running := map[string]time.Duration{}
	for _, c := range cases {
		n.WaitPodRunning(t, "default", c.pod, 2*time.Minute)
		running[c.pod] = time.Since(edited)
	}
	for _, c := range cases {
		p := getPod(t, n, "default", c.pod)
		if len(p.Spec.ImagePullSecrets) != 0 || p.Spec.Containers[0].ImagePullPolicy != c.policy {
			t.Errorf("%s: imagePullSecrets %v policy %s", c.pod, p.Spec.ImagePullSecrets, p.Spec.Containers[0].ImagePullPolicy)
		}
		verdicts.add(verdict{
			scenario:  r.row(name + " private image, " + string(c.policy) + ", listed with " + c.via),
			before:    before[c.pod],
			after:     fmt.Sprintf("%s (no imagePullSecrets); agent had it %.1fs after the edit", p.Status.Phase, present[c.pod].Seconds()),
			toRunning: running[c.pod],
		})
	}
}

// ---------------------------------------------------------------------
// d: the registry goes down during a rollout.

func (r *run) scenarioRegistryDown(t *testing.T) {
	t.Helper()
	n := r.node
	ctx := context.Background()
	web := deployment(n, "web", r.img["web1"].Ref, corev1.PullIfNotPresent, 2)
	if _, err := n.Client.AppsV1().Deployments("default").Create(ctx, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDeploymentRolledOut(t, n, "web", r.img["web1"].Ref, 2*time.Minute)

	// Pre-warm NEW on every node, as a CI pipeline does before a rollout.
	newRef := r.img["web2"].Ref
	res := r.command(t, "preloader warm", 4*time.Minute, nil, preloaderBin, "warm",
		"--configmap", agentNamespace+"/"+agentConfigMap, "--image", newRef, "--wait", "--timeout", "3m",
		"--kubeconfig", r.kube.Kubeconfig)
	t.Logf("preloader warm --wait (%v, exit %d):\n%s", res.took.Round(time.Millisecond), res.code, res.out)
	if res.code != 0 {
		t.Fatalf("preloader warm --wait: exit %d\n%s", res.code, res.out)
	}
	r.entries = append(r.entries, cfgEntry{Image: newRef})

	r.pub.Stop()
	defer r.pub.Start()

	// The kubelet's verdict on an image nobody warmed, registry down.
	control := hostPod(n, "d-unwarmed", r.img["web3"].Ref, corev1.PullIfNotPresent)
	createPod(t, n, control)
	p := n.WaitPod(t, "default", "d-unwarmed", 2*time.Minute, "failing to pull", func(p *corev1.Pod) bool {
		w := harness.WaitingReason(p)
		return w == "ErrImagePull" || w == "ImagePullBackOff"
	})
	before := fmt.Sprintf("unwarmed image: %s, %s", p.Status.Phase, harness.WaitingReason(p))

	switched := time.Now()
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":"app","image":%q}]}}}}`, newRef)
	if _, err := n.Client.AppsV1().Deployments("default").Patch(ctx, "web", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDeploymentRolledOut(t, n, "web", newRef, 3*time.Minute)
	verdicts.add(verdict{
		scenario:  r.row("d registry down, rollout to warmed NEW"),
		before:    before,
		after:     fmt.Sprintf("2/2 updated and ready (IfNotPresent); warm --wait took %.1fs", res.took.Seconds()),
		toRunning: time.Since(switched),
	})
	_ = n.Client.CoreV1().Pods("default").Delete(ctx, "d-unwarmed", metav1.DeleteOptions{})
}

// ---------------------------------------------------------------------
// e: an image removed behind the kubelet's back.

func (r *run) scenarioRemoved(t *testing.T) {
	t.Helper()
	n := r.node
	ctx := context.Background()
	ref := r.img["spare"].Ref
	if !r.imagePresent(t, ref) {
		t.Fatalf("%s not present before e", ref)
	}
	// Act right after a resync, so that the kubelet looks before the next.
	r.waitResync(t)
	is := runtimeapi.NewImageServiceClient(n.Containerd.Conn(t))
	if _, err := is.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Fatalf("CRI RemoveImage %s: %v", ref, err)
	}
	removed := time.Now()
	if r.imagePresent(t, ref) {
		t.Fatalf("%s still present after RemoveImage", ref)
	}
	createPod(t, n, hostPod(n, "e-before", ref, corev1.PullNever))
	p := n.WaitPod(t, "default", "e-before", time.Minute, "ErrImageNeverPull or Running", func(p *corev1.Pod) bool {
		return harness.WaitingReason(p) == "ErrImageNeverPull" || p.Status.Phase == corev1.PodRunning
	})
	before := fmt.Sprintf("%s, %s", p.Status.Phase, harness.WaitingReason(p))
	if p.Status.Phase == corev1.PodRunning {
		before = "not seen: restored before the kubelet's first look"
	}

	var restored time.Duration
	for {
		if r.imagePresent(t, ref) {
			restored = time.Since(removed)
			break
		}
		if time.Since(removed) > 4*resync+time.Minute {
			t.Fatalf("%s not restored %v after RemoveImage (resync %v)", ref, time.Since(removed), resync)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Within one resync, plus the pull itself.
	if restored > resync+5*time.Second {
		t.Errorf("%s restored %v after RemoveImage, more than one resync (%v)", ref, restored, resync)
	}
	createPod(t, n, hostPod(n, "e-after", ref, corev1.PullNever))
	p = n.WaitPodRunning(t, "default", "e-after", time.Minute)
	verdicts.add(verdict{
		scenario:  r.row("e image removed (CRI RemoveImage)"),
		before:    before,
		after:     fmt.Sprintf("restored %.1fs after removal (resync %v); new Never pod %s", restored.Seconds(), resync, p.Status.Phase),
		toRunning: time.Since(removed),
	})
}

// scenarioRefresh is refresh on a real kubelet: a tag the config lists
// with refresh: 3s is pushed anew; the agent pulls it within one interval
// (and its resync), and a pod started after runs the new image, with
// imagePullPolicy: Never, from what the node holds; then the tag leaves
// the list again.
func (r *run) scenarioRefresh(t *testing.T) {
	t.Helper()
	n := r.node
	const every = 3 * time.Second
	v1 := harness.PushTestImages(t, r.pub, []harness.ImageSpec{r.spec("team/moving", "stable")})[0]
	r.entries = append(r.entries, cfgEntry{Image: v1.Ref, Refresh: every})
	r.writeConfig(t)
	digestOnNode := func() string {
		st, err := runtimeapi.NewImageServiceClient(n.RuntimeConn(t)).ImageStatus(context.Background(),
			&runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: v1.Ref}})
		if err != nil || st.Image == nil {
			return ""
		}
		return strings.Join(st.Image.RepoDigests, ",")
	}
	deadline := time.Now().Add(3*resync + time.Minute)
	for !strings.Contains(digestOnNode(), v1.Digest) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not pulled after the config listed it", v1.Ref)
		}
		time.Sleep(200 * time.Millisecond)
	}
	moved := r.spec("team/moving", "stable")
	moved.Files["VERSION"] = []byte("team/moving:stable, pushed again\n")
	v2 := harness.PushTestImages(t, r.pub, []harness.ImageSpec{moved})[0]
	if v2.Digest == v1.Digest {
		t.Fatal("the second push did not move the tag")
	}
	pushed := time.Now()
	for !strings.Contains(digestOnNode(), v2.Digest) {
		if time.Since(pushed) > every+every/10+resync+time.Minute {
			t.Fatalf("%s still names %s on the node %v after the tag moved to %s", v1.Ref, digestOnNode(), time.Since(pushed), v2.Digest)
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(pushed)
	createPod(t, n, hostPod(n, "r-after", v1.Ref, corev1.PullNever))
	p := n.WaitPodRunning(t, "default", "r-after", time.Minute)
	if id := p.Status.ContainerStatuses[0].ImageID; !strings.Contains(id, v2.Digest) {
		t.Errorf("pod r-after runs image %s, want the moved tag's %s", id, v2.Digest)
	}
	// Out of the list again, as the scenarios after expect it.
	r.entries = r.entries[:len(r.entries)-1]
	r.writeConfig(t)
	verdicts.add(verdict{
		scenario: r.row("r refresh: tag pushed again (refresh 3s)"),
		before:   "node holds the tag's first image",
		after:    fmt.Sprintf("new image on the node %.1fs after the push; new Never pod runs it", took.Seconds()),
	})
}

// scenarioPrune is prune on a real kubelet: with prune: true, the image
// the agent brought back in scenario e ("spare") and the config then drops
// is kept while the pod of e runs it, shown under pruneHeld on the Node,
// and removed once the pods are gone and the kubelet has removed their
// containers.
func (r *run) scenarioPrune(t *testing.T) {
	t.Helper()
	n := r.node
	ref := r.img["spare"].Ref
	var kept []cfgEntry
	for _, e := range r.entries {
		if e.Image != ref {
			kept = append(kept, e)
		}
	}
	r.entries, r.prune = kept, true
	r.writeConfig(t)
	dropped := time.Now()
	held := func() bool {
		st := harness.ViewNode(n.Client, n.Name).Status
		return st != nil && slices.Contains(st.PruneHeld, ref)
	}
	for !held() {
		if time.Since(dropped) > 3*resync+time.Minute {
			t.Fatalf("%s not shown as held for its pod %v after the config dropped it", ref, time.Since(dropped))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !r.imagePresent(t, ref) {
		t.Fatalf("%s pruned while pod e-after runs it", ref)
	}
	heldFor := time.Since(dropped)
	zero := int64(0)
	for _, pod := range []string{"e-before", "e-after"} {
		if err := n.Client.CoreV1().Pods("default").Delete(context.Background(), pod, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatalf("delete pod %s: %v", pod, err)
		}
	}
	deleted := time.Now()
	for r.imagePresent(t, ref) {
		if time.Since(deleted) > 3*time.Minute {
			t.Fatalf("%s still present %v after its pods were deleted", ref, time.Since(deleted))
		}
		time.Sleep(500 * time.Millisecond)
	}
	verdicts.add(verdict{
		scenario: r.row("p prune: image dropped from the list, a pod running it"),
		before:   fmt.Sprintf("held while e-after runs it (pruneHeld after %.1fs)", heldFor.Seconds()),
		after:    fmt.Sprintf("removed %.1fs after its pods were deleted", time.Since(deleted).Seconds()),
	})
}

// waitResync waits until the agent finishes a sync (its last-success
// metric moves).
func (r *run) waitResync(t *testing.T) {
	t.Helper()
	first := r.lastSync(t)
	deadline := time.Now().Add(3 * resync)
	for time.Now().Before(deadline) {
		if v := r.lastSync(t); v != first && v != 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("agent: preloader_last_successful_sync_timestamp_seconds did not move in %v", 3*resync)
}

func (r *run) lastSync(t *testing.T) float64 {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(agentMetrics)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "preloader_last_successful_sync_timestamp_seconds "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

func (r *run) imagePresent(t *testing.T, ref string) bool { return imagePresent(t, r.node, ref) }

// ---------------------------------------------------------------------
// f: the password and the auth string appear nowhere a user reads.

func (r *run) scenarioNoSecrets(t *testing.T, name string) {
	t.Helper()
	n := r.node
	ctx := context.Background()
	texts := append([]namedText(nil), r.outputs...)

	res := r.command(t, "preloader status", time.Minute, nil, preloaderBin, "status", "-o", "wide", "--kubeconfig", r.kube.Kubeconfig)
	t.Logf("preloader status -o wide (exit %d):\n%s", res.code, res.out)
	texts = append(texts, namedText{"preloader status", res.out})

	if r.agentPod == "" {
		t.Fatal("no agent pod")
	}
	// The DaemonSet as shipped held up: ready (/readyz), never restarted
	// (liveness, the memory limit).
	agent := getPod(t, n, agentNamespace, r.agentPod)
	for _, c := range agent.Status.ContainerStatuses {
		if !c.Ready || c.RestartCount != 0 {
			t.Errorf("agent container %s: ready=%v restarts=%d last state %+v", c.Name, c.Ready, c.RestartCount, c.LastTerminationState)
		}
	}
	logs, err := n.PodLogs(agentNamespace, r.agentPod, agentContainer)
	if err != nil || !strings.Contains(logs, "synced") {
		t.Fatalf("agent log: %v\n%s", err, logs)
	}
	texts = append(texts, namedText{"agent container log", logs})

	node := getNode(t, n)
	nodeJSON, _ := json.Marshal(node)
	texts = append(texts, namedText{"Node " + n.Name, string(nodeJSON)})
	if node.Annotations["preloader.io/status"] == "" {
		t.Errorf("Node has no preloader.io/status annotation")
	}

	events, err := n.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventsJSON, _ := json.Marshal(events)
	texts = append(texts, namedText{fmt.Sprintf("Events (%d, all namespaces)", len(events.Items)), string(eventsJSON)})

	needles := map[string]string{
		"the password":               r.password,
		"the base64 auth string":     r.auth,
		"the password in base64":     base64.StdEncoding.EncodeToString([]byte(r.password)),
		"user:password in the clear": r.user + ":" + r.password,
	}
	if r.ecr != nil {
		maps.Copy(needles, r.ecr.secretNeedles())
	}
	total := 0
	for _, tx := range texts {
		total += len(tx.text)
		for what, needle := range needles {
			if i := strings.Index(tx.text, needle); i >= 0 {
				// Say where, not what.
				t.Errorf("%s contains %s at byte %d of %d", tx.name, what, i, len(tx.text))
			}
		}
	}
	var names []string
	for _, tx := range texts {
		names = append(names, tx.name)
	}
	t.Logf("searched %d sources, %d bytes, for %d forms of the passwords and tokens: %s", len(texts), total, len(needles), strings.Join(names, "; "))
	verdicts.add(verdict{
		scenario: r.row(name + " no password or auth string anywhere"),
		before:   "-",
		after:    fmt.Sprintf("absent from %d sources (%d KiB): agent log, Node, Events, command output", len(texts), total>>10),
	})
}

// ---------------------------------------------------------------------
// g: pullVia containerd. `preloader once` pulls a private image with the
// containerd client; the kubelet runs a Never pod on it, and the CRI and
// containerd show it as they show a sibling image the test pulled through
// the CRI, as the kubelet pulls.

func (r *run) scenarioPullViaContainerd(t *testing.T, name string) {
	t.Helper()
	n := r.node
	ctx := context.Background()
	img, viaCRI := r.img["via-client"], r.img["via-cri"]

	// Before: the kubelet's verdict on the absent image.
	createPod(t, n, tolerateNotReady(hostPod(n, name+"-before", img.Ref, corev1.PullNever)))
	p := n.WaitContainerWaiting(t, "default", name+"-before", "ErrImageNeverPull", time.Minute)
	before := fmt.Sprintf("%s, ErrImageNeverPull", p.Status.Phase)
	_ = n.Client.CoreV1().Pods("default").Delete(ctx, name+"-before", metav1.DeleteOptions{})

	// The bootstrap hook's list (the sandbox image, so that its pin stays)
	// and the private image, pulled by the containerd client.
	dir := t.TempDir()
	config := filepath.Join(dir, "images.yaml")
	write(t, config, "sandboxImage: auto\npullVia: containerd\nimages:\n  - image: "+img.Ref+"\n"+nodeDiskBudget)
	creds, _ := json.Marshal(map[string]any{"auths": map[string]any{r.priv.Host: map[string]string{"auth": r.auth}}})
	dockerConfig := filepath.Join(dir, "config.json")
	writeMode(t, dockerConfig, string(creds), 0o600)
	res := r.onNode(t, n, "preloader once (pullVia containerd)", 2*time.Minute, "once", "--config", config, "--docker-config", dockerConfig)
	t.Logf("preloader once, pullVia containerd (%v, exit %d):\n%s", res.took.Round(time.Millisecond), res.code, res.out)
	if res.code != 0 || !strings.Contains(res.out, "pulled") {
		t.Fatalf("preloader once, pullVia containerd: exit %d, want 0 and %s pulled:\n%s", res.code, img.Ref, res.out)
	}

	created := time.Now()
	createPod(t, n, tolerateNotReady(hostPod(n, name+"-after", img.Ref, corev1.PullNever)))
	p = n.WaitPodRunning(t, "default", name+"-after", time.Minute)
	took := time.Since(created)

	// The CRI's view (what the kubelet reads) and containerd's records, side
	// by side with the CRI's own pull of the sibling.
	is := runtimeapi.NewImageServiceClient(n.Containerd.Conn(t))
	if _, err := is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: viaCRI.Ref},
		Auth: &runtimeapi.AuthConfig{Username: r.user, Password: r.password}}); err != nil {
		t.Fatalf("CRI PullImage %s: %v", viaCRI.Ref, err)
	}
	list, err := is.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatalf("CRI ListImages: %v", err)
	}
	cc, err := client.New(n.Containerd.Path(n.Containerd.Address), client.WithDefaultNamespace("k8s.io"))
	if err != nil {
		t.Fatalf("containerd client: %v", err)
	}
	defer cc.Close()
	var labels []map[string]string
	for _, ti := range []harness.TestImage{viaCRI, img} {
		st, err := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ti.Ref}})
		if err != nil || st.Image == nil {
			t.Fatalf("CRI ImageStatus %s: %v %v", ti.Ref, st, err)
		}
		cfg, err := ti.Image.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		repo := ti.Ref[:strings.LastIndex(ti.Ref, ":")]
		got := st.Image
		if got.Id != cfg.String() || !slices.Equal(got.RepoTags, []string{ti.Ref}) ||
			!slices.Equal(got.RepoDigests, []string{repo + "@" + ti.Digest}) || got.GetSize() != uint64(ti.Size) {
			t.Errorf("CRI ImageStatus %s: id %s tags %v digests %v size %d; want %s [%s] [%s@%s] %d",
				ti.Ref, got.Id, got.RepoTags, got.RepoDigests, got.GetSize(), cfg, ti.Ref, repo, ti.Digest, ti.Size)
		}
		listed := slices.IndexFunc(list.Images, func(i *runtimeapi.Image) bool { return i.Id == got.Id })
		if listed < 0 || !slices.Equal(list.Images[listed].RepoTags, got.RepoTags) ||
			!slices.Equal(list.Images[listed].RepoDigests, got.RepoDigests) || list.Images[listed].GetSize() != got.GetSize() {
			t.Errorf("CRI ListImages: %s not listed as ImageStatus shows it", ti.Ref)
		}
		// The three records the CRI keeps per image (reference,
		// repository@digest, image ID), each labelled managed; pins are the
		// preloader's (pin: true), not the pull's.
		recs := map[string]string{}
		for kind, rec := range map[string]string{"ref": ti.Ref, "digest": repo + "@" + ti.Digest, "id": cfg.String()} {
			ci, err := cc.ImageService().Get(ctx, rec)
			if err != nil {
				t.Errorf("containerd image record %s: %v", rec, err)
				continue
			}
			if ci.Labels["io.cri-containerd.image"] != "managed" {
				t.Errorf("containerd image record %s: labels %v, want io.cri-containerd.image=managed", rec, ci.Labels)
			}
			delete(ci.Labels, "io.cri-containerd.pinned")
			delete(ci.Labels, "preloader.io/pinned")
			recs[kind] = fmt.Sprint(harness.DropBookkeeping(ci.Labels))
		}
		labels = append(labels, recs)
	}
	if !maps.Equal(labels[0], labels[1]) {
		t.Errorf("containerd image record labels besides pins: CRI pull %v, containerd client pull %v", labels[0], labels[1])
	}
	verdicts.add(verdict{
		scenario:  r.row(name + " private image, Never, once with pullVia containerd"),
		before:    before,
		after:     fmt.Sprintf("%s; once pulled it in %.1fs; CRI and containerd show it as a CRI pull", p.Status.Phase, res.took.Seconds()),
		toRunning: took,
	})
}

// ---------------------------------------------------------------------
// helpers

func (r *run) row(s string) string { return r.kind.row(s) }

// row names a verdict row's scenario with the node kind, but for the
// primary one's.
func (k nodeKind) row(s string) string {
	if k == primary {
		return s
	}
	return s + " [" + strings.TrimPrefix(k.kubelet, "v") + ", " + k.runtimeName() + "]"
}

func tolerateNotReady(p *corev1.Pod) *corev1.Pod {
	p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: notReadyTaint, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule})
	return p
}

func createPod(t *testing.T, n *harness.Node, p *corev1.Pod) {
	t.Helper()
	if _, err := n.Client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", p.Name, err)
	}
}

func getPod(t *testing.T, n *harness.Node, ns, name string) *corev1.Pod {
	t.Helper()
	p, err := n.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func getNode(t *testing.T, n *harness.Node) *corev1.Node {
	t.Helper()
	node, err := n.Client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return node
}

func hasTaint(node *corev1.Node, key string) bool {
	for _, tn := range node.Spec.Taints {
		if tn.Key == key {
			return true
		}
	}
	return false
}

func waitNode(t *testing.T, n *harness.Node, timeout time.Duration, what string, cond func(*corev1.Node) bool) *corev1.Node {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		node := getNode(t, n)
		if cond(node) {
			return node
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s not %s after %v: taints %v labels %v annotations %v\n%s", n.Name, what, timeout,
				node.Spec.Taints, node.Labels, node.Annotations, n.Logs(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitPodEvent waits for an Event with reason about the pod and returns its
// message.
func waitPodEvent(t *testing.T, n *harness.Node, ns, pod, reason string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, e := range n.PodEvents(ns, pod) {
			if msg, ok := strings.CutPrefix(e, reason+": "); ok {
				return msg
			}
		}
		if time.Now().After(deadline) {
			p, _ := n.Client.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
			t.Fatalf("pod %s/%s: no %s Event after %v; events %q; %s\n%s", ns, pod, reason, timeout,
				n.PodEvents(ns, pod), harness.DescribePod(p), n.Logs(30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func waitingOr(p *corev1.Pod, dflt string) string {
	if w := harness.WaitingReason(p); w != "" {
		return w
	}
	return dflt
}

// deployment is a Deployment of hostNetwork pods on the test node.
func deployment(n *harness.Node, name, image string, policy corev1.PullPolicy, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	grace := int64(2)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					HostNetwork:                   true,
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name:            "app",
						Image:           image,
						ImagePullPolicy: policy,
						Env:             n.APIServerEnv(),
					}},
				},
			},
		},
	}
}

// waitDeploymentPods waits until the Deployment has want pods.
func waitDeploymentPods(t *testing.T, n *harness.Node, name string, want int, timeout time.Duration) []corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pods, err := n.Client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err == nil && len(pods.Items) == want {
			return pods.Items
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment %s: want %d pods after %v: %v", name, want, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitDeploymentRolledOut waits until every replica of the Deployment runs
// image, is ready and available, and no old pod is left.
func waitDeploymentRolledOut(t *testing.T, n *harness.Node, name, image string, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		d, err := n.Client.AppsV1().Deployments("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods, err := n.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			t.Fatal(err)
		}
		want := *d.Spec.Replicas
		st := d.Status
		done := st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == want && st.ReadyReplicas == want &&
			st.AvailableReplicas == want && st.Replicas == want && len(pods.Items) == int(want)
		var desc []string
		for _, p := range pods.Items {
			running := p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil
			for _, c := range p.Status.ContainerStatuses {
				running = running && c.Ready
			}
			if !running || p.Spec.Containers[0].Image != image {
				done = false
			}
			desc = append(desc, p.Name+" "+p.Spec.Containers[0].Image+": "+harness.DescribePod(&p))
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment %s not rolled out to %s after %v: status %+v\n%s\n%s", name, image, timeout, st,
				strings.Join(desc, "\n"), n.Logs(30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func write(t *testing.T, path, content string) { writeMode(t, path, content, 0o644) }

func writeMode(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func indent(s, prefix string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(s, "\n") {
		if line != "" {
			b.WriteString(prefix + line)
		}
	}
	return b.String()
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
