package harness

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// The agent's namespace, ConfigMap and ServiceAccount, as manifests/ names
// them.
const (
	AgentNamespace      = "kube-preloader"
	AgentConfigMap      = "preloader-config"
	AgentServiceAccount = "preloader"
)

// BuildPreloader builds the preloader binary into dir, exactly as users
// build it (CGO_ENABLED=0), and returns its path. The package path works
// from any directory of the module, so every test package can call it.
func BuildPreloader(dir string) (string, error) {
	bin := filepath.Join(dir, "preloader")
	build := exec.Command("go", "build", "-o", bin, "github.com/kube-preloader/kube-preloader/cmd/preloader")
	build.Stderr = os.Stderr
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build preloader: %w", err)
	}
	return bin, nil
}

// AgentOptions configure StartAgent. All fields but Hosts are required.
type AgentOptions struct {
	Bin        string // the preloader binary (BuildPreloader)
	Kubeconfig string // the identity the agent acts as
	Node       string // --node-name
	// Containerd is the runtime the agent is pointed at with
	// --cri-endpoint, --containerd-address and PRELOADER_CONTAINERD_CONFIG;
	// one with a Layout is instead found by the agent, run inside its
	// namespace with none of them, as on a node of that distribution.
	Containerd *Containerd
	// CRIO, instead of Containerd, is a CRI-O the agent is pointed at
	// with --cri-endpoint alone.
	CRIO *CRIO
	// Args are added to the agent's command line.
	Args []string
	// Hosts, if set, is the /etc/hosts the agent and its credential
	// provider plugins see, in a mount namespace of their own (WithHosts).
	Hosts string
}

// Agent is `preloader agent` running as its own process, the way the
// DaemonSet runs it, with its output in a file.
type Agent struct {
	LogPath string
	Metrics string // http://ADDR of /metrics, /healthz, /readyz

	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid once done is closed
}

// StartAgent runs the agent on the ConfigMap AgentNamespace/AgentConfigMap
// against the API server of opts.Kubeconfig and opts.Containerd, and waits
// until it serves /healthz. It is stopped with SIGTERM when the test ends,
// if not before.
func StartAgent(t T, opts AgentOptions) *Agent {
	t.Helper()
	a := &Agent{LogPath: filepath.Join(t.TempDir(), "agent.log"), done: make(chan struct{})}
	f, err := os.Create(a.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"agent",
		"--configmap", AgentNamespace + "/" + AgentConfigMap,
		"--node-name", opts.Node,
		"--kubeconfig", opts.Kubeconfig,
		"--metrics-addr", "127.0.0.1:0"}
	args = append(args, opts.Args...)
	ctrd := opts.Containerd
	command := func(bin string, args ...string) *exec.Cmd {
		if opts.CRIO != nil {
			cmd := exec.Command(bin, args...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			return cmd
		}
		return ctrd.Command(bin, args...)
	}
	if opts.Hosts != "" {
		plain := command
		command = func(bin string, args ...string) *exec.Cmd {
			name, argv := WithHosts(opts.Hosts, bin, args...)
			return plain(name, argv...)
		}
	}
	switch {
	case opts.CRIO != nil:
		a.cmd = command(opts.Bin, append(args, "--cri-endpoint", opts.CRIO.Endpoint)...)
		a.cmd.Env = DiscoveryEnv()
	case ctrd.Layout != "":
		a.cmd = command(opts.Bin, args...)
		a.cmd.Env = DiscoveryEnv()
	default:
		a.cmd = command(opts.Bin, append(args, "--cri-endpoint", ctrd.Endpoint, "--containerd-address", ctrd.Address)...)
		// containerd 2.x does not report its sandbox image over the CRI; the
		// documented fallback reads this containerd's config file.
		a.cmd.Env = append(os.Environ(), noderuntime.ContainerdConfigEnv+"="+ctrd.ConfigFile)
	}
	a.cmd.Stdout, a.cmd.Stderr = f, f
	if err := a.cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	go func() {
		a.err = a.cmd.Wait()
		f.Close()
		close(a.done)
	}()
	t.Cleanup(func() {
		if err := a.Stop(15 * time.Second); err != nil {
			t.Errorf("agent: %v", err)
		}
		if f, ok := t.(interface{ Failed() bool }); ok && f.Failed() {
			t.Logf("agent log (tail):\n%s", a.Tail(60))
		}
	})

	// --metrics-addr 127.0.0.1:0: the agent logs the port it got.
	addr := regexp.MustCompile(`msg="serving metrics".* addr=(\S+)`)
	deadline := time.Now().Add(30 * time.Second)
	for a.Metrics == "" {
		if m := addr.FindStringSubmatch(a.Log()); m != nil {
			a.Metrics = "http://" + m[1]
			break
		}
		select {
		case <-a.done:
			t.Fatalf("agent exited: %v\n%s", a.err, a.Log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent does not serve metrics after 30s:\n%s", a.Log())
		}
	}
	return a
}

// DiscoveryEnv is the test's environment without what would point the
// preloader at a runtime (CONTAINER_RUNTIME_ENDPOINT,
// PRELOADER_CONTAINERD_CONFIG), so that it finds one as on a node.
func DiscoveryEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != "CONTAINER_RUNTIME_ENDPOINT" && k != noderuntime.ContainerdConfigEnv {
			env = append(env, kv)
		}
	}
	return env
}

// Pid is the agent's process ID, for reading /proc/PID.
func (a *Agent) Pid() int { return a.cmd.Process.Pid }

// Done is closed once the process has exited; Err then says how.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Err is the process's exit error, valid once Done is closed.
func (a *Agent) Err() error { return a.err }

// Log is everything the agent printed so far.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.LogPath)
	return string(b)
}

// Tail is the last n lines of Log.
func (a *Agent) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(a.Log(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Stop sends SIGTERM and waits for a clean exit, as the kubelet does when
// it deletes the pod.
func (a *Agent) Stop(grace time.Duration) error {
	select {
	case <-a.done:
		return nil // already stopped (and judged) by the test
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		if a.err != nil {
			return fmt.Errorf("exited after SIGTERM: %v", a.err)
		}
		return nil
	case <-time.After(grace):
		_ = a.cmd.Process.Kill()
		<-a.done
		return fmt.Errorf("ignored SIGTERM for %v, killed", grace)
	}
}

// Get fetches path from the agent's metrics server.
func (a *Agent) Get(t T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(a.Metrics + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Eventually polls cond until it returns "" or timeout passes; then the
// test fails with cond's last explanation and the agent's log.
func (a *Agent) Eventually(t T, timeout time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := cond()
		if why == "" {
			return
		}
		select {
		case <-a.done:
			t.Fatalf("%s: the agent exited (%v); last: %s\nagent log:\n%s", what, a.err, why, a.Tail(60))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v: %s\nagent log (tail):\n%s", what, timeout, why, a.Tail(60))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// SetImagesYAML replaces the agent's ConfigMap's images.yaml, as `kubectl
// edit` would, and returns the config hash the agent will report for it.
func SetImagesYAML(t T, c kubernetes.Interface, data string) string {
	t.Helper()
	cms := c.CoreV1().ConfigMaps(AgentNamespace)
	var hash string
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		cm, err := cms.Get(context.Background(), AgentConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data["images.yaml"] = data
		updated, err := cms.Update(context.Background(), cm, metav1.UpdateOptions{})
		if err == nil {
			hash = workloads.Hash(updated.Data, "images.yaml")
		}
		return err
	})
	if err != nil {
		t.Fatalf("edit ConfigMap: %v", err)
	}
	return hash
}

// NodeView is what `kubectl get node -o yaml` shows of the agent's work.
type NodeView struct {
	Node    *corev1.Node
	Ready   string // label preloader.io/ready
	Status  *nodestatus.Status
	Tainted bool // preloader.io/not-ready
	// Condition is the preloader.io/ImagesReady condition, nil without one.
	Condition *corev1.NodeCondition
	Err       string
}

// ViewNode reads the Node; a failed read or an annotation that is not JSON
// is in Err.
func ViewNode(c kubernetes.Interface, name string) NodeView {
	n, err := c.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return NodeView{Err: err.Error()}
	}
	v := NodeView{Node: n, Ready: n.Labels[nodestatus.LabelReady]}
	for _, tn := range n.Spec.Taints {
		if tn.Key == nodestatus.TaintNotReady {
			v.Tainted = true
		}
	}
	if c, ok := nodestatus.ConditionFrom(n.Status.Conditions); ok {
		v.Condition = &c
	}
	if a, ok := n.Annotations[nodestatus.AnnotationStatus]; ok {
		var st nodestatus.Status
		if err := json.Unmarshal([]byte(a), &st); err != nil {
			v.Err = fmt.Sprintf("annotation %s is not JSON: %v: %s", nodestatus.AnnotationStatus, err, a)
		} else {
			v.Status = &st
		}
	}
	return v
}

func (v NodeView) String() string {
	if v.Err != "" {
		return v.Err
	}
	ann := "<none>"
	if v.Node != nil {
		if a, ok := v.Node.Annotations[nodestatus.AnnotationStatus]; ok {
			ann = a
		}
	}
	cond := "<none>"
	if c := v.Condition; c != nil {
		cond = fmt.Sprintf("%s %s %q", c.Status, c.Reason, c.Message)
	}
	return fmt.Sprintf("label %s=%q, taint %s: %v, condition %s: %s, annotation %s", nodestatus.LabelReady, v.Ready, nodestatus.TaintNotReady, v.Tainted,
		nodestatus.ConditionImagesReady, cond, ann)
}

// ConditionAgrees says whether the Node's condition says what its label
// says, with the counts of its status; "" when it does.
func (v NodeView) ConditionAgrees() string {
	c := v.Condition
	switch {
	case c == nil:
		return fmt.Sprintf("no condition %s; node shows %s", nodestatus.ConditionImagesReady, v)
	case v.Status == nil:
		return fmt.Sprintf("a condition but no status; node shows %s", v)
	case (c.Status == corev1.ConditionTrue) != (v.Ready == "true"):
		return fmt.Sprintf("condition %s and label %q disagree; node shows %s", c.Status, v.Ready, v)
	case !strings.HasPrefix(c.Message, fmt.Sprintf("%d/%d images present", v.Status.Present, v.Status.Total)):
		return fmt.Sprintf("condition message %q does not count the status's %d/%d; node shows %s", c.Message, v.Status.Present, v.Status.Total, v)
	}
	return ""
}

// Shows reports whether the Node shows config hash with present/total and
// the ready label to match; "" when it does, else what it shows.
func (v NodeView) Shows(hash string, present, total int) string {
	switch {
	case v.Err != "":
		return v.Err
	case v.Status == nil || v.Status.ConfigHash != hash || v.Status.Present != present || v.Status.Total != total ||
		v.Ready != fmt.Sprint(present == total):
		return fmt.Sprintf("want config %s with %d/%d; node shows %s", hash, present, total, v)
	}
	return ""
}

// ShowsWithCondition is Shows, and the condition in step with the label
// (ConditionAgrees). The agent writes the condition one request after the
// label: poll for it, do not expect it the moment the label shows.
func (v NodeView) ShowsWithCondition(hash string, present, total int) string {
	if why := v.Shows(hash, present, total); why != "" {
		return why
	}
	return v.ConditionAgrees()
}

// FailedReason is the reason the Node's status gives for image, "" if it
// does not list it as failed.
func (v NodeView) FailedReason(image string) string {
	if v.Status != nil {
		for _, f := range v.Status.Failed {
			if f.Image == image {
				return f.Reason
			}
		}
	}
	return ""
}

// DockerConfigJSON is a docker config.json (also the content of a
// kubernetes.io/dockerconfigjson Secret) for one registry host.
func DockerConfigJSON(host, user, password string) string {
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	return fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, auth)
}

// AssertNoSecret fails the test if any of texts holds password or the
// docker config auth string derived from user and password, and returns how
// many do.
func AssertNoSecret(t T, user, password string, texts ...string) (leaked int) {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	for _, s := range texts {
		if strings.Contains(s, password) || strings.Contains(s, auth) {
			leaked++
			t.Errorf("output contains a credential:\n%s", s)
		}
	}
	return leaked
}
