package daemons

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// Flavor selects which containerd binary StartContainerd runs.
type Flavor string

const (
	// Containerd16 is the Debian 12 package, /usr/bin/containerd (1.6.x):
	// end of life, and served by kubelets up to 1.35 only; legacy coverage.
	Containerd16 Flavor = "containerd-1.6"
	// Containerd2 is containerd Containerd2Version, built by
	// scripts/install-deps.sh into CacheDir()/bin.
	Containerd2 Flavor = "containerd-2"
)

// Containerd2Version is the containerd 2.x release scripts/install-deps.sh builds.
const Containerd2Version = "v2.4.2"

// CacheDir is where scripts/install-deps.sh puts binaries built from source:
// $PRELOADER_CACHE, or $HOME/.cache/kube-preloader.
func CacheDir() string {
	if d := os.Getenv("PRELOADER_CACHE"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "kube-preloader")
}

// Binaries returns the containerd and containerd-shim-runc-v2 executables of
// a flavor.
func (f Flavor) Binaries() (containerd, shim string) {
	if f == Containerd2 {
		bin := filepath.Join(CacheDir(), "bin")
		return filepath.Join(bin, "containerd-"+Containerd2Version),
			filepath.Join(bin, "containerd-shim-runc-v2-"+Containerd2Version)
	}
	return "/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2"
}

// ContainerdOptions configure StartContainerd. The zero value is valid.
type ContainerdOptions struct {
	Flavor       Flavor // default Containerd2
	SandboxImage string // CRI sandbox_image; default "registry.k8s.io/pause:3.10"
	Snapshotter  string // default "native", which works on any filesystem
	// RootSize, when set, puts containerd's root (content store, snapshots,
	// metadata) on a tmpfs of that many bytes, for disk-full tests.
	RootSize int64
	// Layout, a name of noderuntime.Layouts (kubeadm, talos, k3s, rke2,
	// microk8s), runs containerd in a MountNamespace of its own with its
	// socket, config file (in that distribution's style) and registry
	// hosts directory at the layout's real paths; root and state stay in
	// Dir. Address, Endpoint, ConfigFile and ConfigPath are then paths in
	// the namespace: Path reaches them from the test, Command runs a
	// program where they resolve.
	Layout string
	// Config is appended to the config file: TOML tables of a version 2
	// config, e.g. the transfer service's download limits.
	Config string
}

// Containerd is a containerd daemon with its CRI plugin, confined to its own
// directory: config, root, state, sockets, CNI config, registry hosts and log.
type Containerd struct {
	Flavor     Flavor
	Binary     string
	Dir        string // everything below lives here and is removed on cleanup
	Endpoint   string // CRI endpoint, "unix://" + Address
	Address    string // gRPC socket path, for the containerd Go client
	ConfigPath string // CRI registry config_path: <host>/hosts.toml files go here
	ConfigFile string // the config.toml containerd runs with
	Root       string
	State      string
	LogPath    string
	// Layout is ContainerdOptions.Layout; Namespace is its mount
	// namespace, nil without a layout.
	Layout    string
	Namespace *MountNamespace

	// rootInConfig is the root containerd is told, when it is not Root:
	// the layout's, inside Namespace, bound to Root.
	rootInConfig string

	t    T
	env  []string
	proc *Process
}

// Path is where the test process reaches path of this containerd's
// filesystem view: path itself, or through its Namespace.
func (c *Containerd) Path(path string) string {
	if c.Namespace == nil {
		return path
	}
	return c.Namespace.Path(path)
}

// WriteHosts writes host's hosts.toml in ConfigPath: the mirror at url
// (trusted with the CA file ca, if not ""), then server.
func (c *Containerd) WriteHosts(host, server, url, ca string) error {
	hosts := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n", server, url)
	if ca != "" {
		hosts += fmt.Sprintf("  ca = %q\n", ca)
	}
	dir := c.Path(filepath.Join(c.ConfigPath, host))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("hosts.toml of %s: %w", host, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		return fmt.Errorf("hosts.toml of %s: %w", host, err)
	}
	return nil
}

// Command is exec.Command of bin where this containerd's paths resolve:
// inside its Namespace, if it has one. The process is killed if the test
// binary dies.
func (c *Containerd) Command(bin string, args ...string) *exec.Cmd {
	if c.Namespace != nil {
		return c.Namespace.Command(bin, args...)
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// dialEndpoint is Endpoint as the test process dials it.
func (c *Containerd) dialEndpoint() string { return "unix://" + c.Path(c.Address) }

// StartContainerd writes a config into a fresh directory, starts containerd
// and waits until its CRI answers. It skips or fails the test (see Require)
// when the flavor's binaries or root are missing. The daemon, anything it
// left mounted and its directory are removed when the test ends.
//
// Start, Stop and Kill report failures through t, so call them from the
// goroutine of the test that started the daemon.
func StartContainerd(t T, opts ContainerdOptions) *Containerd {
	t.Helper()
	if opts.Flavor == "" {
		opts.Flavor = Containerd2
	}
	if opts.SandboxImage == "" {
		opts.SandboxImage = "registry.k8s.io/pause:3.10"
	}
	if opts.Snapshotter == "" {
		opts.Snapshotter = "native"
	}
	if opts.Layout != "" && opts.RootSize > 0 {
		// The tmpfs would be mounted on the host, after the namespace
		// was made private.
		t.Fatal("containerd: RootSize and Layout together are not supported")
	}
	bin, shim := opts.Flavor.Binaries()
	Require(t, string(opts.Flavor), bin)
	Require(t, string(opts.Flavor)+" shim", shim)

	// Not t.TempDir(): its path includes the test name and can push the
	// socket paths past the 108-byte limit of unix socket addresses.
	dir, err := os.MkdirTemp("/tmp", "ctrd")
	if err != nil {
		t.Fatalf("containerd: %v", err)
	}
	c := &Containerd{
		Flavor:     opts.Flavor,
		Binary:     bin,
		Dir:        dir,
		Address:    filepath.Join(dir, "c.sock"),
		ConfigPath: filepath.Join(dir, "certs.d"),
		ConfigFile: filepath.Join(dir, "config.toml"),
		Root:       filepath.Join(dir, "root"),
		State:      filepath.Join(dir, "state"),
		LogPath:    filepath.Join(dir, "containerd.log"),
		t:          t,
		env:        os.Environ(),
	}
	if opts.Layout != "" {
		if err := c.useLayout(t, opts.Layout); err != nil {
			os.RemoveAll(dir)
			t.Fatalf("containerd: %v", err)
		}
	}
	c.Endpoint = "unix://" + c.Address
	t.Cleanup(c.cleanup)

	if err := c.writeFiles(opts, shim); err != nil {
		t.Fatalf("containerd: %v", err)
	}
	if opts.RootSize > 0 {
		// Unmounted by cleanup, with everything else mounted below Dir.
		if err := mountTmpfs(c.Root, opts.RootSize); err != nil {
			t.Fatalf("containerd: %v", err)
		}
	}
	c.Start()
	return c
}

// useLayout puts the socket, config and hosts directory at layout's
// paths in a new mount namespace (registered for cleanup before the
// daemon, so that it goes after it).
func (c *Containerd) useLayout(t T, name string) error {
	i := slices.IndexFunc(noderuntime.Layouts, func(l noderuntime.Layout) bool { return l.Name == name })
	if i < 0 {
		return fmt.Errorf("no layout %q in noderuntime.Layouts", name)
	}
	l := noderuntime.Layouts[i]
	c.Layout = name
	c.Namespace = NewMountNamespace(t)
	c.Address, c.ConfigFile = l.Socket, l.Config
	c.ConfigPath, _, _ = strings.Cut(l.HostsDir, ":") // the first directory containerd looks in
	for _, d := range []string{filepath.Dir(c.Address), filepath.Dir(c.ConfigFile), c.Root} {
		if err := os.MkdirAll(c.Path(d), 0o755); err != nil {
			return err
		}
	}
	// containerd's root at the layout's own path too (the DaemonSet mounts
	// its tmpmounts for the disk budget), bound to Root, so that the data
	// stays on the test's disk rather than in the /var overlay, which an
	// overlayfs snapshotter could not nest in.
	c.rootInConfig = layoutRoots[name]
	if err := os.MkdirAll(c.Path(c.rootInConfig), 0o755); err != nil {
		return err
	}
	bin, args := c.Namespace.Wrap("/bin/mount", "--bind", c.Root, c.rootInConfig)
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("bind containerd's root at %s: %v: %s", c.rootInConfig, err, out)
	}
	return nil
}

// layoutRoots are containerd's root directories in each layout.
var layoutRoots = map[string]string{
	"kubeadm":  "/var/lib/containerd",
	"talos":    "/var/lib/containerd",
	"k3s":      "/var/lib/rancher/k3s/agent/containerd",
	"rke2":     "/var/lib/rancher/rke2/agent/containerd",
	"microk8s": "/var/snap/microk8s/common/var/lib/containerd",
}

// writeFiles writes the config, the CNI config and the shim symlink.
func (c *Containerd) writeFiles(opts ContainerdOptions, shim string) error {
	cniDir := filepath.Join(c.Dir, "cni")
	for _, d := range []string{c.Path(c.ConfigPath), cniDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// A loopback-only network is enough for the CRI to report NetworkReady;
	// test pods use hostNetwork.
	const conflist = `{"cniVersion": "0.4.0", "name": "harness-loopback", "plugins": [{"type": "loopback"}]}` + "\n"
	if err := os.WriteFile(filepath.Join(cniDir, "10-loopback.conflist"), []byte(conflist), 0o644); err != nil {
		return err
	}
	if c.Flavor == Containerd2 {
		// containerd finds its shim as containerd-shim-runc-v2 on PATH; ours
		// must come before the Debian 1.6 shim in /usr/bin.
		binDir := filepath.Join(c.Dir, "bin")
		if err := os.Mkdir(binDir, 0o755); err != nil {
			return err
		}
		if err := os.Symlink(shim, filepath.Join(binDir, "containerd-shim-runc-v2")); err != nil {
			return err
		}
		c.env = append(c.env, "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	files := map[string]string{c.ConfigFile: containerdConfig(c, opts, cniDir, true)}
	if c.Layout == "talos" {
		// As Talos writes it: the base file imports conf.d, which names
		// the sandbox image and the hosts directory.
		files[c.ConfigFile] = "imports = [\"conf.d/*.toml\"]\n" + containerdConfig(c, opts, cniDir, false)
		files[filepath.Join(filepath.Dir(c.ConfigFile), "conf.d", "20-cri.toml")] = criImageSettings(c, opts)
	}
	for path, content := range files {
		if err := os.MkdirAll(c.Path(filepath.Dir(path)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(c.Path(path), []byte(content), 0o644); err != nil {
			return fmt.Errorf("write config: %w", err)
		}
	}
	return nil
}

// criImageSettings is a version 2 file of only what the preloader reads
// of the CRI: the sandbox image and config_path.
func criImageSettings(c *Containerd, opts ContainerdOptions) string {
	return `version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = ` + strconv.Quote(opts.SandboxImage) + `
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ` + strconv.Quote(c.ConfigPath) + `
`
}

// containerdConfig renders a version 2 config. containerd 1.6 reads it as is;
// 2.x migrates it in memory (the CRI keys move to io.containerd.cri.v1.images
// and io.containerd.cri.v1.runtime), so one file serves both flavors.
// images: with the sandbox image and config_path (criImageSettings), in the
// places k3s's, RKE2's and microk8s's version 2 templates put them too.
func containerdConfig(c *Containerd, opts ContainerdOptions, cniDir string, images bool) string {
	q := strconv.Quote // TOML basic strings accept Go's quoting of paths and names
	sandbox, registry := "", ""
	if images {
		sandbox = "  sandbox_image = " + q(opts.SandboxImage) + "\n"
		registry = `
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ` + q(c.ConfigPath) + "\n"
	}
	root := c.Root
	if c.rootInConfig != "" {
		root = c.rootInConfig
	}
	return `version = 2
root = ` + q(root) + `
state = ` + q(c.State) + `
# NRI (enabled by default in 2.x) would listen on the host-wide
# /var/run/nri/nri.sock, colliding between parallel daemons. 1.6 ignores this.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = ` + q(c.Address) + `

[ttrpc]
  address = ` + q(c.Address+".ttrpc") + `

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = ` + q(filepath.Join(c.Dir, "opt")) + `

# 2.x only (1.6 ignores sections of plugins it does not have): keep shim
# sockets and image verifiers in Dir too, and let the transfer service, which
# pulls for the CRI, unpack into our snapshotter; its default is overlayfs
# only, and a CRI pull into "native" fails with "no unpack platforms defined".
[plugins."io.containerd.shim.v1.manager"]
  socket_dir = ` + q(filepath.Join(c.Dir, "s")) + `

[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = ` + q(filepath.Join(c.Dir, "verifiers")) + `

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = ` + q("linux/"+runtime.GOARCH) + `
  snapshotter = ` + q(opts.Snapshotter) + `

[plugins."io.containerd.grpc.v1.cri"]
` + sandbox + `  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  cdi_spec_dirs = [` + q(filepath.Join(c.Dir, "cdi")) + `]

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = ` + q(opts.Snapshotter) + `
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = ` + q(cniDir) + `
` + registry + opts.Config
}

func layoutNote(layout string) string {
	if layout == "" {
		return ""
	}
	return " (layout " + layout + ", in its own mount namespace)"
}

func mountTmpfs(dir string, size int64) error {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0711", size)); err != nil {
		return fmt.Errorf("mount a tmpfs of %d bytes at %s: %w", size, dir, err)
	}
	return nil
}

// Start starts the daemon again after Stop or Kill, on the same root, state
// and sockets, and waits until the CRI answers.
func (c *Containerd) Start() {
	c.t.Helper()
	if c.Running() {
		c.t.Fatalf("containerd: Start while running")
	}
	start := time.Now()
	bin, args := c.Binary, []string{"--config", c.ConfigFile}
	if c.Namespace != nil {
		bin, args = c.Namespace.Wrap(bin, args...)
	}
	p, err := StartProcess(c.LogPath, c.env, bin, args...)
	if err != nil {
		c.t.Fatalf("containerd: %v", err)
	}
	c.proc = p
	if err := c.waitCRI(30 * time.Second); err != nil {
		c.proc.Kill()
		c.t.Fatalf("containerd (%s) did not become ready: %v\nlog %s:\n%s", c.Flavor, err, c.LogPath, LogTail(c.LogPath, 40))
	}
	c.t.Logf("containerd (%s) ready in %s at %s%s", c.Flavor, time.Since(start).Round(time.Millisecond), c.Endpoint, layoutNote(c.Layout))
}

// waitCRI polls the CRI Version call until it answers or the daemon exits.
func (c *Containerd) waitCRI(timeout time.Duration) error {
	conn, err := grpc.NewClient(c.dialEndpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithConnectParams(fastReconnect))
	if err != nil {
		return err
	}
	defer conn.Close()
	return waitVersion(conn, c.proc, timeout)
}

// fastReconnect replaces gRPC's default reconnect backoff, which starts at
// 1 s, most of the wait for a daemon that boots in a fraction of it.
var fastReconnect = grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.2, MaxDelay: 200 * time.Millisecond}}

// waitVersion polls the CRI Version call on conn until it answers or the
// daemon p exits.
func waitVersion(conn *grpc.ClientConn, p *Process, timeout time.Duration) error {
	client := runtimeapi.NewRuntimeServiceClient(conn)
	deadline := time.Now().Add(timeout)
	for {
		if done, err := p.Exited(); done {
			return fmt.Errorf("daemon exited: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.Version(ctx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CRI Version after %s: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits, with SIGKILL after 10 s. Running containers
// (shims) are left alone, as with a real containerd restart.
func (c *Containerd) Stop() {
	c.t.Helper()
	if !c.Running() {
		return
	}
	if err := c.proc.Stop(10 * time.Second); err != nil {
		c.t.Errorf("containerd: stop: %v", err)
	}
}

// Kill kills the daemon with SIGKILL, for fault tests. Start reuses root and
// state afterwards, as a restarted node would.
func (c *Containerd) Kill() {
	if c.Running() {
		c.proc.Kill()
	}
}

// Running reports whether the daemon is up (not stopped, killed or exited).
func (c *Containerd) Running() bool {
	if c.proc == nil {
		return false
	}
	done, _ := c.proc.Exited()
	return !done
}

// Conn returns a gRPC connection to the daemon for CRI clients
// (runtimeapi.NewRuntimeServiceClient, NewImageServiceClient); it is closed
// when the test ends.
func (c *Containerd) Conn(t T) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(c.dialEndpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("containerd: dial %s: %v", c.Endpoint, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// cleanup tears down everything the daemon may have created: pod sandboxes
// (through the CRI while it runs), the daemon, leftover shims, mounts below
// Dir, and Dir itself.
func (c *Containerd) cleanup() {
	if c.Running() {
		removeSandboxes(c.t, "containerd", c.dialEndpoint())
		if err := c.proc.Stop(10 * time.Second); err != nil {
			c.t.Logf("containerd: stop: %v", err)
		}
	}
	if c.Namespace != nil {
		// The layout's socket path is the same in every namespace: only
		// this one's shims are ours.
		killShims(c.Address, c.Namespace.inside)
		if err := c.Namespace.UnmountBelow(c.Dir); err != nil {
			c.t.Errorf("containerd: %v", err)
		}
	} else {
		killShims(c.Address, func(int) bool { return true })
	}
	if err := UnmountBelow(c.Dir); err != nil {
		c.t.Errorf("containerd: %v", err)
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		c.t.Errorf("containerd: remove %s: %v", c.Dir, err)
	}
}

// killShims kills the shims started by the daemon at address (their command
// line has "-address <address>") and that ours says are ours, with their
// containers. Shims outlive the daemon by design, so after Kill they and
// their containers would leak.
func killShims(address string, ours func(pid int) bool) {
	children := map[int][]int{} // ppid -> pids
	var shims []int
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...", where comm may contain spaces.
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		children[ppid] = append(children[ppid], pid)
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		if strings.Contains(args[0], "containerd-shim") && slices.Contains(args, address) && ours(pid) {
			shims = append(shims, pid)
		}
	}
	// Containers first (a container's init is the shim's child, and killing
	// it ends its PID namespace), then the shims.
	var kill func(pid int)
	kill = func(pid int) {
		for _, c := range children[pid] {
			kill(c)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range shims {
		kill(pid)
	}
}

// UnmountBelow lazily unmounts every mount point below dir, deepest first.
func UnmountBelow(dir string) error {
	mounts, err := mountsBelow("/proc/self/mountinfo", dir)
	if err != nil {
		return err
	}
	for _, mp := range mounts {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
	}
	return nil
}

// mountsBelow lists the mount points below dir in a mountinfo file,
// deepest first.
func mountsBelow(mountinfo, dir string) ([]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		// Field 5 is the mount point, with spaces and such octal-escaped.
		mp, err := strconv.Unquote(`"` + strings.ReplaceAll(fields[4], `"`, `\"`) + `"`)
		if err != nil {
			mp = fields[4]
		}
		if strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	// mountinfo lists parents before children.
	slices.Reverse(mounts)
	return mounts, nil
}
