package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/kube-preloader/kube-preloader/integration/harness/daemons"
)

// NodeOptions shape a one-node cluster.
type NodeOptions struct {
	// Kube is the API server (StartKube). Required.
	Kube *Kube
	// NodeName is the Node's name (kubelet --hostname-override); default
	// "preloader-node".
	NodeName string
	// Runtime is the kubelet's runtime: RuntimeContainerd (the default) or
	// RuntimeCRIO, a StartCRIO with SandboxImage as its pause_image and
	// Registries reachable, which the kubelet and the caller's hooks reach
	// at CRIO.Endpoint. Flavor, Layout, Snapshotter and Containerd are
	// containerd's and must be unset with RuntimeCRIO; StorageDriver is
	// CRI-O's and must be unset with containerd.
	Runtime NodeRuntime
	// StorageDriver is the CRI-O's (CRIOOptions.StorageDriver): default
	// vfs; "overlay" for pods that mount image volumes.
	StorageDriver string
	// Containerd is an already started runtime for the kubelet (its
	// SandboxImage, Snapshotter and Flavor are then its own). Nil: StartNode
	// starts one with Flavor, Snapshotter and SandboxImage.
	Containerd *Containerd
	// Flavor of the containerd StartNode starts; default Containerd2.
	Flavor Flavor
	// Layout of the containerd StartNode starts (ContainerdOptions.Layout);
	// the kubelet then runs in its namespace too, so that a pod's hostPath
	// of that distribution's paths (/run/k3s/containerd, …) resolves for
	// the kubelet's checks and containerd's mounts. With Containerd given,
	// the kubelet joins that one's namespace, if it has one.
	Layout string
	// Snapshotter of the containerd StartNode starts; default overlayfs
	// where the kernel lets root mount an overlay, else native.
	Snapshotter string
	// SandboxImage is the pod-infra image of the containerd StartNode
	// starts. Empty: the harness builds its pause program (pauseSource),
	// pushes it as pause:3.10 to a registry of its own (StartRegistry), and
	// containerd pulls it on the first sandbox.
	SandboxImage string
	// Registries are trusted in the containerd (Registry.TrustIn) before
	// the kubelet starts; later ones with reg.TrustIn(node.Containerd).
	Registries []*Registry
	// RegisterWithTaints are the taints the kubelet registers the Node with.
	RegisterWithTaints []corev1.Taint
	// KubeletVersion is the kubelet's release (a binary scripts/build-kube.sh
	// built); default KubeVersion, the control plane's.
	KubeletVersion string
	// KubeletConfig is merged into the KubeletConfiguration the harness
	// writes (e.g. imagePullCredentialsVerificationPolicy).
	KubeletConfig map[string]any
	// KubeletDropIns are files written to the kubelet's --config-dir
	// (name -> content) before it starts.
	KubeletDropIns map[string]string
	// ImageCredentialProviderConfig and ImageCredentialProviderBinDir are
	// the kubelet's --image-credential-provider-config and -bin-dir, as the
	// kubelet sees them (inside the Layout's namespace, if any). The
	// kubelet does not start when a binary the config names is missing:
	// write them before, in BeforeKubelet at the latest.
	ImageCredentialProviderConfig string
	ImageCredentialProviderBinDir string
	// Labels are extra Node labels (kubelet --node-labels).
	Labels map[string]string
	// BeforeKubelet runs once containerd answers and before the kubelet
	// starts: the node bootstrap hook's moment.
	BeforeKubelet func(n *Node)
	// NoWaitReady returns as soon as the kubelet runs, without waiting for
	// the Node to be Ready.
	NoWaitReady bool
}

// NodeRuntime is the container runtime a Node's kubelet runs on.
type NodeRuntime string

const (
	RuntimeContainerd NodeRuntime = "containerd"
	RuntimeCRIO       NodeRuntime = "cri-o"
)

// Node is a one-node cluster on 127.0.0.1: kube-controller-manager,
// kube-scheduler, a kubelet and containerd or CRI-O, on the API server of
// a Kube.
// Pods must use hostNetwork: true (the CNI network is loopback only) and,
// to reach the API server, APIServerEnv() in each container's env.
type Node struct {
	Name string
	// Dir holds the kubelet's, controller-manager's and scheduler's state,
	// configuration and logs (Dir/COMPONENT/COMPONENT.log); containerd's
	// are in Containerd.Dir.
	Dir  string
	Kube *Kube
	// Client is the Kube's admin client.
	Client kubernetes.Interface
	// Containerd is the kubelet's runtime (Endpoint, Address, ConfigFile);
	// nil on a CRI-O node.
	Containerd *Containerd
	// CRIO is the kubelet's runtime on a CRI-O node (RuntimeCRIO), else nil.
	CRIO *CRIO
	// CRIOSocketDir, on a CRI-O node, holds CRI-O's socket alone, as
	// crio.sock (a bind mount of CRIO.Address in the runtime's namespace),
	// as /run/crio does on a real node: a pod's hostPath for the socket.
	// One of CRIO.Dir would include CRI-O's storage root, for which CRI-O
	// forces HostToContainer propagation, and the namespace's private
	// mounts refuse that.
	CRIOSocketDir string
	// SandboxImage is the runtime's pod-infra image (empty when
	// NodeOptions.Containerd was given: it is then the caller's).
	SandboxImage string
	// PodLogsDir is the kubelet's podLogsDir (PodLogs reads it).
	PodLogsDir string
	// KubeletVersion is the kubelet's release.
	KubeletVersion string
	// KubeletConfigFile is the kubelet's --config and KubeletConfigDir its
	// --config-dir (drop-ins), as on a kubeadm node.
	KubeletConfigFile string
	KubeletConfigDir  string
	// KubeletStarted is when the kubelet was started; ReadyAfter is how long
	// the Node took from there to Ready (zero with NoWaitReady).
	KubeletStarted time.Time
	ReadyAfter     time.Duration

	t           T
	opts        NodeOptions
	kubeletPort int
	healthzPort int
	mu          sync.Mutex
	procs       map[string]*daemons.Process
}

const defaultNodeName = "preloader-node"

// StartNode starts the runtime (containerd unless given, or CRI-O),
// kube-controller-manager, kube-scheduler and the kubelet on opts.Kube,
// each with its own directory and log, and waits until the Node is Ready. Missing binaries skip the
// test (fail it under CI=true). Everything is stopped, unmounted and
// removed when the test ends (PRELOADER_KEEP_KUBE=1 keeps a failed test's
// directory).
func StartNode(t T, opts NodeOptions) *Node {
	t.Helper()
	if opts.Kube == nil {
		t.Fatal("StartNode: NodeOptions.Kube is required")
	}
	if opts.KubeletVersion == "" {
		opts.KubeletVersion = KubeVersion
	}
	for _, b := range []string{"kube-controller-manager", "kube-scheduler"} {
		Require(t, b+" (scripts/build-kube.sh "+b+")", KubeBinary(b))
	}
	Require(t, "kubelet "+opts.KubeletVersion+" (KUBE_VERSION="+opts.KubeletVersion+" scripts/build-kube.sh kubelet)", kubeletBinary(opts.KubeletVersion))
	if err := checkDevNull(); err != nil {
		t.Fatalf("StartNode: %v", err)
	}
	if opts.NodeName == "" {
		opts.NodeName = defaultNodeName
	}
	k := opts.Kube
	n := &Node{Name: opts.NodeName, Kube: k, Client: k.Client, KubeletVersion: opts.KubeletVersion, t: t, opts: opts, procs: map[string]*daemons.Process{}}

	if opts.Runtime == "" {
		opts.Runtime = RuntimeContainerd
	}
	crio := opts.Runtime == RuntimeCRIO
	if crio && (opts.Containerd != nil || opts.Flavor != "" || opts.Layout != "" || opts.Snapshotter != "") {
		t.Fatal("StartNode: Containerd, Flavor, Layout and Snapshotter are containerd's, not CRI-O's")
	}
	if !crio && opts.StorageDriver != "" {
		t.Fatal("StartNode: StorageDriver is CRI-O's, not containerd's (Snapshotter)")
	}
	if opts.Containerd == nil {
		if opts.SandboxImage == "" {
			reg := StartRegistry(t, RegistryOptions{})
			opts.SandboxImage = PushTestImages(t, reg, []ImageSpec{PauseImageSpec(t, "pause", "3.10")})[0].Ref
			opts.Registries = append(opts.Registries, reg)
		}
		n.SandboxImage = opts.SandboxImage
		if crio {
			// CRI-O reads its registries.conf once, at start: every
			// registry now.
			n.CRIO = StartCRIO(t, CRIOOptions{PauseImage: opts.SandboxImage, Registries: opts.Registries, StorageDriver: opts.StorageDriver})
			if err := hideHugepages(n.CRIO.Namespace); err != nil {
				t.Fatalf("node: %v", err)
			}
		} else {
			if opts.Snapshotter == "" {
				opts.Snapshotter = NodeSnapshotter()
			}
			opts.Containerd = StartContainerd(t, ContainerdOptions{Flavor: opts.Flavor, SandboxImage: opts.SandboxImage, Snapshotter: opts.Snapshotter, Layout: opts.Layout})
		}
	}
	n.Containerd = opts.Containerd
	if !crio {
		for _, reg := range opts.Registries {
			reg.TrustIn(n.Containerd)
		}
	}

	// Registered after the containerd's cleanup, so it runs before it: the
	// kubelet stops before its runtime does.
	dir, err := os.MkdirTemp("", "preloader-node-")
	if err != nil {
		t.Fatal(err)
	}
	n.Dir = dir
	t.Cleanup(func() { n.cleanup() })
	if n.CRIO != nil {
		if err := n.bindCRIOSocket(); err != nil {
			t.Fatalf("node: %v", err)
		}
	}

	if err := n.startControllers(); err != nil {
		t.Fatalf("node: %v", err)
	}
	if opts.BeforeKubelet != nil {
		opts.BeforeKubelet(n)
	}
	if err := n.startKubelet(); err != nil {
		t.Fatalf("node: %v", err)
	}
	n.initializeNode(t, time.Minute)
	if !opts.NoWaitReady {
		n.WaitReady(t, 2*time.Minute)
	}
	return n
}

func (n *Node) bindCRIOSocket() error {
	n.CRIOSocketDir = filepath.Join(n.Dir, "crio-run")
	sock := filepath.Join(n.CRIOSocketDir, "crio.sock")
	if err := os.MkdirAll(n.CRIOSocketDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		return err
	}
	name, args := n.CRIO.Namespace.Wrap("/bin/mount", "--bind", n.CRIO.Address, sock)
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("bind CRI-O's socket into %s: %v: %s", n.CRIOSocketDir, err, out)
	}
	return nil
}

// hideHugepages covers /sys/kernel/mm/hugepages with an empty directory in
// ns, where the kubelet runs beside CRI-O, on a cgroup v1 host whose
// hugetlb controller is in the kernel but mounted nowhere (as on the test
// machines). The kubelet gives every container a hugepage limit, 0 unless
// requested, for each page size listed there; CRI-O passes the limits on
// since /proc/cgroups lists the controller, and runc then fails every
// container with "cannot set hugetlb limit". containerd drops them itself
// (disable_hugetlb_controller, on by default).
func hideHugepages(ns *MountNamespace) error {
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(info), "\n") {
		_, after, ok := strings.Cut(line, " - ")
		f := strings.Fields(after)
		if !ok || len(f) < 3 {
			continue
		}
		if f[0] == "cgroup2" && strings.Fields(line)[4] == "/sys/fs/cgroup" {
			return nil
		}
		if f[0] == "cgroup" && slices.Contains(strings.Split(f[2], ","), "hugetlb") {
			return nil
		}
	}
	name, args := ns.Wrap("/bin/mount", "-t", "tmpfs", "-o", "ro,size=4k", "hugepages-hidden", "/sys/kernel/mm/hugepages")
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("hide /sys/kernel/mm/hugepages from the kubelet: %v: %s", err, out)
	}
	return nil
}

// checkDevNull fails fast on a machine whose /dev/null is no longer the
// null device (a program renamed a file over it): containerd 1.6 then hands
// its contents to every shim as runtime options, and sandboxes fail now and
// then with "start failed: io.containerd.runc.v2: proto: illegal wireType".
func checkDevNull() error {
	fi, err := os.Stat(os.DevNull)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return fmt.Errorf("%s is not a character device (mode %v): something replaced it; "+
			"restore it with: rm %s && mknod -m 666 %s c 1 3", os.DevNull, fi.Mode(), os.DevNull, os.DevNull)
	}
	return nil
}

// NodeSnapshotter is overlayfs, what real nodes use, where the kernel lets root mount an
// overlay under /tmp, else native.
func NodeSnapshotter() string {
	probe, err := os.MkdirTemp("", "overlay-probe")
	if err != nil {
		return "native"
	}
	defer os.RemoveAll(probe)
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(probe, d), 0o755); err != nil {
			return "native"
		}
	}
	opts := fmt.Sprintf("lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work", probe, probe, probe)
	if err := syscall.Mount("overlay", filepath.Join(probe, "merged"), "overlay", 0, opts); err != nil {
		return "native"
	}
	_ = syscall.Unmount(filepath.Join(probe, "merged"), syscall.MNT_DETACH)
	return "overlayfs"
}

// APIServerEnv is what a container needs in its env to reach the API
// server from the node: the kubelet sets KUBERNETES_SERVICE_HOST/PORT to
// the kubernetes Service's ClusterIP (10.96.0.1:443), which nothing routes
// here (no kube-proxy), and a container's own env wins over it. With
// hostNetwork the pod shares the node's 127.0.0.1. rest.InClusterConfig and
// the pod's mounted token and kube-root-ca.crt then work unchanged.
func (n *Node) APIServerEnv() []corev1.EnvVar {
	return []corev1.EnvVar{
		{Name: "KUBERNETES_SERVICE_HOST", Value: "127.0.0.1"},
		{Name: "KUBERNETES_SERVICE_PORT", Value: strconv.Itoa(n.Kube.apiPort)},
		{Name: "KUBERNETES_SERVICE_PORT_HTTPS", Value: strconv.Itoa(n.Kube.apiPort)},
	}
}

// APIServerPort is the API server's port on 127.0.0.1.
func (n *Node) APIServerPort() int { return n.Kube.apiPort }

// RuntimeName is the kubelet's runtime as logs name it: containerd's
// flavor, or cri-o.
func (n *Node) RuntimeName() string {
	if n.CRIO != nil {
		return string(RuntimeCRIO)
	}
	return string(n.Containerd.Flavor)
}

// RuntimeEndpoint is the CRI endpoint the kubelet uses.
func (n *Node) RuntimeEndpoint() string {
	if n.CRIO != nil {
		return n.CRIO.Endpoint
	}
	return n.Containerd.Endpoint
}

// RuntimeConn is a gRPC connection to the kubelet's runtime's CRI, closed
// when the test ends.
func (n *Node) RuntimeConn(t T) *grpc.ClientConn {
	t.Helper()
	if n.CRIO != nil {
		return n.CRIO.Conn(t)
	}
	return n.Containerd.Conn(t)
}

// RuntimeNamespace is the mount namespace the runtime and the kubelet run
// in: CRI-O's own, or containerd's with a Layout; nil for the host's.
func (n *Node) RuntimeNamespace() *MountNamespace {
	if n.CRIO != nil {
		return n.CRIO.Namespace
	}
	return n.Containerd.Namespace
}

func (n *Node) runtimeRunning() bool {
	if n.CRIO != nil {
		return n.CRIO.Running()
	}
	return n.Containerd.Running()
}

// LogFile is the log of a component: "containerd" (the runtime's, CRI-O's
// on a CRI-O node), "kubelet", "kube-controller-manager" or
// "kube-scheduler".
func (n *Node) LogFile(component string) string {
	if component == "containerd" {
		if n.CRIO != nil {
			return n.CRIO.LogPath
		}
		return n.Containerd.LogPath
	}
	return filepath.Join(n.Dir, component, component+".log")
}

// Logs returns the tail (n lines) of every component's log, for failures.
func (n *Node) Logs(lines int) string {
	var b strings.Builder
	for _, c := range []string{"kubelet", "containerd", "kube-controller-manager", "kube-scheduler"} {
		fmt.Fprintf(&b, "--- %s (tail)\n%s\n", c, daemons.LogTail(n.LogFile(c), lines))
	}
	return b.String()
}

func (n *Node) startProcess(name, binary string, args []string) error {
	p, err := daemons.StartProcess(n.LogFile(name), nil, binary, args...)
	if err != nil {
		return fmt.Errorf("start %s: %v", name, err)
	}
	n.mu.Lock()
	n.procs[name] = p
	n.mu.Unlock()
	return nil
}

func (n *Node) startControllers() error {
	k := n.Kube
	ports, err := daemons.FreePorts(2)
	if err != nil {
		return err
	}
	for _, c := range []string{"kube-controller-manager", "kube-scheduler"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, c), 0o700); err != nil {
			return err
		}
	}
	kcm := []string{
		"--kubeconfig=" + k.Kubeconfig,
		"--authentication-kubeconfig=" + k.Kubeconfig,
		"--authorization-kubeconfig=" + k.Kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[0]),
		"--cert-dir=" + filepath.Join(n.Dir, "kube-controller-manager"),
		"--leader-elect=false",
		"--controllers=*",
		"--use-service-account-credentials=true",
		// Pods get kube-root-ca.crt (the API server's serving chain) and
		// legacy token secrets are signed with the API server's key.
		"--root-ca-file=" + k.caFile(),
		"--service-account-private-key-file=" + k.saKeyPath(),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--profiling=false",
		"--v=1",
	}
	if err := n.startProcess("kube-controller-manager", KubeBinary("kube-controller-manager"), kcm); err != nil {
		return err
	}
	sched := []string{
		"--kubeconfig=" + k.Kubeconfig,
		"--authentication-kubeconfig=" + k.Kubeconfig,
		"--authorization-kubeconfig=" + k.Kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[1]),
		"--cert-dir=" + filepath.Join(n.Dir, "kube-scheduler"),
		"--leader-elect=false",
		"--profiling=false",
		"--v=1",
	}
	return n.startProcess("kube-scheduler", KubeBinary("kube-scheduler"), sched)
}

// kubeletConfig is the KubeletConfiguration that runs on these machines.
type kubeletConfig struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`

	Address            string `json:"address"`
	Port               int    `json:"port"`
	ReadOnlyPort       int    `json:"readOnlyPort"`
	HealthzBindAddress string `json:"healthzBindAddress"`
	HealthzPort        int    `json:"healthzPort"`

	Authentication map[string]any `json:"authentication"`
	Authorization  map[string]any `json:"authorization"`

	ContainerRuntimeEndpoint string `json:"containerRuntimeEndpoint"`
	ImageServiceEndpoint     string `json:"imageServiceEndpoint"`

	CgroupDriver           string   `json:"cgroupDriver"`
	FailCgroupV1           bool     `json:"failCgroupV1"`
	CgroupsPerQOS          bool     `json:"cgroupsPerQOS"`
	EnforceNodeAllocatable []string `json:"enforceNodeAllocatable"`
	FailSwapOn             bool     `json:"failSwapOn"`

	PodLogsDir      string `json:"podLogsDir"`
	VolumePluginDir string `json:"volumePluginDir"`
	ResolvConf      string `json:"resolvConf"`

	RegisterNode        bool              `json:"registerNode"`
	RegisterWithTaints  []corev1.Taint    `json:"registerWithTaints,omitempty"`
	ImageGCHigh         int               `json:"imageGCHighThresholdPercent"`
	ImageGCLow          int               `json:"imageGCLowThresholdPercent"`
	EvictionHard        map[string]string `json:"evictionHard"`
	SerializeImagePulls bool              `json:"serializeImagePulls"`
	MakeIPTablesChains  bool              `json:"makeIPTablesUtilChains"`
}

func (n *Node) startKubelet() error {
	dir := filepath.Join(n.Dir, "kubelet")
	n.PodLogsDir = filepath.Join(dir, "pod-logs")
	for _, d := range []string{dir, n.PodLogsDir, filepath.Join(dir, "root"), filepath.Join(dir, "volume-plugins")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	ports, err := daemons.FreePorts(2)
	if err != nil {
		return err
	}
	n.kubeletPort, n.healthzPort = ports[0], ports[1]
	cfg := kubeletConfig{
		APIVersion:         "kubelet.config.k8s.io/v1beta1",
		Kind:               "KubeletConfiguration",
		Address:            "127.0.0.1",
		Port:               ports[0],
		ReadOnlyPort:       0,
		HealthzBindAddress: "127.0.0.1",
		HealthzPort:        ports[1],
		// Only 127.0.0.1 reaches the kubelet's API.
		Authentication: map[string]any{
			"anonymous": map[string]any{"enabled": true},
			"webhook":   map[string]any{"enabled": false},
		},
		Authorization:            map[string]any{"mode": "AlwaysAllow"},
		ContainerRuntimeEndpoint: n.RuntimeEndpoint(),
		ImageServiceEndpoint:     n.RuntimeEndpoint(),
		// Facts of these machines (cgroup v1, no systemd, no swap setup).
		CgroupDriver:  "cgroupfs",
		FailCgroupV1:  false,
		CgroupsPerQOS: false,
		// "none", not []: with --config-dir the kubelet's merge drops an
		// empty list and defaults it to ["pods"], which cgroupsPerQOS
		// false refuses.
		EnforceNodeAllocatable: []string{"none"},
		FailSwapOn:             false,
		PodLogsDir:             n.PodLogsDir,
		VolumePluginDir:        filepath.Join(dir, "volume-plugins"),
		ResolvConf:             "/etc/resolv.conf",
		RegisterNode:           true,
		RegisterWithTaints:     n.opts.RegisterWithTaints,
		// Image GC stays out of the tests' way (scenarios remove images
		// themselves, through the CRI, as GC would).
		ImageGCHigh: 100,
		ImageGCLow:  99,
		EvictionHard: map[string]string{
			"memory.available":  "1Mi",
			"nodefs.available":  "1%",
			"imagefs.available": "1%",
		},
		SerializeImagePulls: true,
		// Leave the machine's iptables alone (hostNetwork pods need none).
		MakeIPTablesChains: false,
	}
	b, err := mergedKubeletConfig(cfg, n.opts.KubeletConfig)
	if err != nil {
		return err
	}
	n.KubeletConfigFile = filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(n.KubeletConfigFile, b, 0o644); err != nil {
		return err
	}
	n.KubeletConfigDir = filepath.Join(dir, "config.d")
	// Only this start's drop-ins: a restart with others replaces them. The
	// directory itself stays, as a pod's bind mount of it holds its inode.
	if err := os.MkdirAll(n.KubeletConfigDir, 0o755); err != nil {
		return err
	}
	old, err := os.ReadDir(n.KubeletConfigDir)
	if err != nil {
		return err
	}
	for _, e := range old {
		if err := os.RemoveAll(filepath.Join(n.KubeletConfigDir, e.Name())); err != nil {
			return err
		}
	}
	for name, content := range n.opts.KubeletDropIns {
		if err := os.WriteFile(filepath.Join(n.KubeletConfigDir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	kubeconfig := filepath.Join(dir, "kubelet.kubeconfig")
	if err := n.writeNodeKubeconfig(kubeconfig); err != nil {
		return err
	}
	args := []string{
		"--config=" + n.KubeletConfigFile,
		"--config-dir=" + n.KubeletConfigDir,
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + filepath.Join(dir, "root"),
		"--cert-dir=" + filepath.Join(dir, "pki"),
		"--hostname-override=" + n.Name,
		// The kubelet refuses a loopback --node-ip, and would otherwise
		// publish the machine's default-route address. As for a cloud node,
		// addresses come from the cloud controller: initializeNode.
		"--cloud-provider=external",
		"--v=2",
	}
	if c := n.opts.ImageCredentialProviderConfig; c != "" {
		args = append(args, "--image-credential-provider-config="+c, "--image-credential-provider-bin-dir="+n.opts.ImageCredentialProviderBinDir)
	}
	if len(n.opts.Labels) > 0 {
		var ls []string
		for k, v := range n.opts.Labels {
			ls = append(ls, k+"="+v)
		}
		sort.Strings(ls)
		args = append(args, "--node-labels="+strings.Join(ls, ","))
	}
	n.KubeletStarted = time.Now()
	bin := kubeletBinary(n.opts.KubeletVersion)
	// In the runtime's namespace: the runtime must see the kubelet's
	// mounts (projected volumes) to bind them into containers, and the
	// kubelet the hostPaths as the runtime resolves them.
	if ns := n.RuntimeNamespace(); ns != nil {
		bin, args = ns.Wrap(bin, args...)
	}
	return n.startProcess("kubelet", bin, args)
}

// mergedKubeletConfig is cfg with extra's top-level fields set over it.
func mergedKubeletConfig(cfg kubeletConfig, extra map[string]any) ([]byte, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	maps.Copy(m, extra)
	return yaml.Marshal(m)
}

// writeNodeKubeconfig writes the kubelet's kubeconfig: it acts as
// system:node:NAME in system:nodes, so the Node authorizer (and RBAC)
// judge it as they judge a real node.
//
// The test API server has no client CA and only a static token file, so
// the identity is carried by impersonation: the admin token, impersonating
// the node's user and groups. The API server authorizes each request as the
// impersonated user.
func (n *Node) writeNodeKubeconfig(path string) error {
	k := n.Kube
	user := "system:node:" + n.Name
	cfg := clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{"test": {Server: k.URL, CertificateAuthorityData: k.CAData}},
		AuthInfos: map[string]*clientcmdapi.AuthInfo{user: {
			Token:             k.Config.BearerToken,
			Impersonate:       user,
			ImpersonateGroups: []string{"system:nodes", "system:authenticated"},
		}},
		Contexts:       map[string]*clientcmdapi.Context{"test": {Cluster: "test", AuthInfo: user}},
		CurrentContext: "test",
	}
	return clientcmd.WriteToFile(cfg, path)
}

// uninitializedTaint is the taint a kubelet with --cloud-provider=external
// registers with until a cloud controller has initialized the Node.
const uninitializedTaint = "node.cloudprovider.kubernetes.io/uninitialized"

// initializeNode does what a cloud controller manager does for a new Node:
// it sets the Node's addresses, here only InternalIP 127.0.0.1, and removes
// the uninitialized taint. With that, hostNetwork pods get 127.0.0.1 as pod
// and host IP, and the API server reaches the kubelet (kubectl logs, exec)
// on 127.0.0.1: it prefers a Hostname address, which the node name is not
// resolvable as, so there is none.
func (n *Node) initializeNode(t T, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	nodes := n.Client.CoreV1().Nodes()
	for {
		if err := n.exited(); err != nil {
			t.Fatalf("node: %v\n%s", err, n.Logs(40))
		}
		_, err := nodes.Get(ctx, n.Name, metav1.GetOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsNotFound(err) && ctx.Err() == nil {
			t.Logf("node: get %s: %v", n.Name, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %s not registered after %v\n%s", n.Name, timeout, n.Logs(40))
		case <-time.After(50 * time.Millisecond):
		}
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := nodes.Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}
		_, err = nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("node: set addresses: %v", err)
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := nodes.Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var keep []corev1.Taint
		for _, tn := range node.Spec.Taints {
			if tn.Key != uninitializedTaint {
				keep = append(keep, tn)
			}
		}
		if len(keep) == len(node.Spec.Taints) {
			return nil
		}
		node.Spec.Taints = keep
		_, err = nodes.Update(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("node: remove %s taint: %v", uninitializedTaint, err)
	}
}

// WaitReady waits until the kubelet started last answers its /healthz (its
// sync loop and PLEG run) and the Node is Ready.
func (n *Node) WaitReady(t T, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	last := "not registered"
	for {
		if err := n.exited(); err != nil {
			t.Fatalf("node: %v\n%s", err, n.Logs(40))
		}
		node, err := n.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err == nil && !n.kubeletHealthy() {
			last = "kubelet /healthz not ok"
		} else if err == nil {
			last = "no Ready condition"
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					// After a restart the old kubelet's Ready lingers: count
					// only what this kubelet posted (heartbeats have second
					// precision).
					fresh := !c.LastHeartbeatTime.Time.Before(n.KubeletStarted.Truncate(time.Second))
					if c.Status == corev1.ConditionTrue && fresh {
						n.ReadyAfter = time.Since(n.KubeletStarted)
						t.Logf("node %s (%s) Ready %v after the kubelet started", n.Name, n.RuntimeName(), n.ReadyAfter.Round(time.Millisecond))
						return
					}
					last = fmt.Sprintf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
				}
			}
		} else if !apierrors.IsNotFound(err) {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %s not Ready after %v: %s\n%s", n.Name, timeout, last, n.Logs(40))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// kubeletHealthy reports whether the kubelet's /healthz answers ok.
func (n *Node) kubeletHealthy() bool {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", n.healthzPort))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// exited reports a component that has stopped on its own.
func (n *Node) exited() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, p := range n.procs {
		if err := p.ExitError(); err != nil {
			return fmt.Errorf("%s exited: %v", name, err)
		}
	}
	if !n.runtimeRunning() {
		return fmt.Errorf("%s is not running", n.RuntimeName())
	}
	return nil
}

// StopKubelet stops the kubelet (its pods keep running, as on a real node).
func (n *Node) StopKubelet() {
	n.mu.Lock()
	p := n.procs["kubelet"]
	delete(n.procs, "kubelet")
	n.mu.Unlock()
	if p != nil {
		p.Stop(10 * time.Second)
	}
}

// RestartKubelet stops and starts the kubelet with the same configuration
// and waits for Ready.
func (n *Node) RestartKubelet(t T) {
	t.Helper()
	n.StopKubelet()
	if err := n.startKubelet(); err != nil {
		t.Fatal(err)
	}
	n.WaitReady(t, 2*time.Minute)
}

// RestartKubeletWith restarts the kubelet with config merged into the
// harness's KubeletConfiguration and dropIns as its --config-dir, each
// replacing what the last start had, and waits for Ready.
func (n *Node) RestartKubeletWith(t T, config map[string]any, dropIns map[string]string) {
	t.Helper()
	n.opts.KubeletConfig, n.opts.KubeletDropIns = config, dropIns
	n.RestartKubelet(t)
}

// PodLogs is what a container of a pod on this node has written so far
// (every attempt, oldest first), read from the kubelet's pod log files as
// `kubectl logs` would return it (the CRI log format's prefixes removed).
func (n *Node) PodLogs(namespace, pod, container string) (string, error) {
	pattern := filepath.Join(n.PodLogsDir, namespace+"_"+pod+"_*", container, "*.log")
	files, err := filepath.Glob(pattern)
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", fmt.Errorf("no log of %s/%s container %s under %s", namespace, pod, container, n.PodLogsDir)
	}
	sort.Slice(files, func(i, j int) bool {
		ai, _ := strconv.Atoi(strings.TrimSuffix(filepath.Base(files[i]), ".log"))
		aj, _ := strconv.Atoi(strings.TrimSuffix(filepath.Base(files[j]), ".log"))
		return ai < aj
	})
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		// TIMESTAMP STREAM P|F CONTENT
		for _, line := range strings.Split(string(data), "\n") {
			parts := strings.SplitN(line, " ", 4)
			if len(parts) < 4 {
				continue
			}
			b.WriteString(parts[3])
			if parts[2] == "F" {
				b.WriteByte('\n')
			}
		}
	}
	return b.String(), nil
}

// WaitPod waits until cond is true of the pod (or fails the test with the
// pod's status and the node's logs) and returns the pod.
func (n *Node) WaitPod(t T, namespace, name string, timeout time.Duration, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last *corev1.Pod
	for {
		p, err := n.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			last = p
			if cond(p) {
				return p
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod %s/%s: not %s after %v: %s\n%s", namespace, name, what, timeout, DescribePod(last), n.Logs(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitPodRunning waits until every container of the pod has started.
func (n *Node) WaitPodRunning(t T, namespace, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	return n.WaitPod(t, namespace, name, timeout, "Running", func(p *corev1.Pod) bool {
		if p.Status.Phase != corev1.PodRunning {
			return false
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Running == nil {
				return false
			}
		}
		return true
	})
}

// WaitContainerWaiting waits until a container of the pod is waiting with
// the reason (ErrImageNeverPull, ImagePullBackOff, ...) and returns the pod.
func (n *Node) WaitContainerWaiting(t T, namespace, name, reason string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	return n.WaitPod(t, namespace, name, timeout, "waiting with "+reason, func(p *corev1.Pod) bool {
		return WaitingReason(p) == reason
	})
}

// WaitingReason is the first waiting reason among the pod's containers
// (init containers first), or "".
func WaitingReason(p *corev1.Pod) string {
	for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for _, cs := range list {
			if cs.State.Waiting != nil && cs.State.Waiting.Reason != "" {
				return cs.State.Waiting.Reason
			}
		}
	}
	return ""
}

// DescribePod is a one-paragraph account of a pod's status, for messages.
func DescribePod(p *corev1.Pod) string {
	if p == nil {
		return "not found"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "phase=%s node=%q", p.Status.Phase, p.Spec.NodeName)
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue {
			fmt.Fprintf(&b, " %s=%s(%s: %s)", c.Type, c.Status, c.Reason, c.Message)
		}
	}
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		switch {
		case cs.State.Waiting != nil:
			fmt.Fprintf(&b, " [%s waiting %s: %s]", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
		case cs.State.Running != nil:
			fmt.Fprintf(&b, " [%s running]", cs.Name)
		case cs.State.Terminated != nil:
			fmt.Fprintf(&b, " [%s terminated %s exit %d: %s]", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode, cs.State.Terminated.Message)
		}
	}
	return b.String()
}

// PodEvents are the Events about a pod, oldest first, as "Reason: message".
func (n *Node) PodEvents(namespace, name string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := n.Client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.kind=Pod,involvedObject.name=" + name,
	})
	if err != nil {
		return []string{err.Error()}
	}
	sort.Slice(list.Items, func(i, j int) bool {
		return list.Items[i].LastTimestamp.Before(&list.Items[j].LastTimestamp)
	})
	var out []string
	for _, e := range list.Items {
		out = append(out, e.Reason+": "+e.Message)
	}
	return out
}

// WaitServiceAccount waits until the controller-manager has made the
// namespace's ServiceAccount and kube-root-ca.crt (pods are refused until the
// ServiceAccount exists).
func (n *Node) WaitServiceAccount(t T, namespace, name string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		_, errSA := n.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
		_, errCM := n.Client.CoreV1().ConfigMaps(namespace).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		if errSA == nil && errCM == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("namespace %s: ServiceAccount %s or kube-root-ca.crt missing after %v: %v\n%s", namespace, name, timeout, errors.Join(errSA, errCM), n.Logs(20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cleanup deletes nothing in the API (the Kube goes away with its test):
// it stops the kubelet, then the controllers, unmounts what the kubelet
// mounted (projected volumes) and removes the directory. The Containerd's
// own cleanup, which runs next, removes the pods' sandboxes, containerd and
// its shims.
func (n *Node) cleanup() {
	n.StopKubelet()
	n.mu.Lock()
	procs := n.procs
	n.procs = map[string]*daemons.Process{}
	n.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(10 * time.Second) }()
	}
	wg.Wait()
	if ns := n.RuntimeNamespace(); ns != nil {
		if err := ns.UnmountBelow(n.Dir); err != nil {
			n.t.Logf("node cleanup: %v", err)
		}
	}
	if err := daemons.UnmountBelow(n.Dir); err != nil {
		n.t.Logf("node cleanup: %v", err)
	}
	removeContainerLogLinks(n.Dir)
	if f, ok := n.t.(interface{ Failed() bool }); ok && f.Failed() && os.Getenv("PRELOADER_KEEP_KUBE") != "" {
		n.t.Logf("node dir kept: %s", n.Dir)
		return
	}
	if err := os.RemoveAll(n.Dir); err != nil {
		n.t.Logf("node cleanup: %v", err)
	}
}

// removeContainerLogLinks removes the symlinks the kubelet makes in
// /var/log/containers (a fixed path) that point into dir.
func removeContainerLogLinks(dir string) {
	ents, _ := os.ReadDir("/var/log/containers")
	for _, e := range ents {
		p := filepath.Join("/var/log/containers", e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			os.Remove(p)
		}
	}
}
