package daemons

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRIOVersion is the CRI-O release scripts/install-deps.sh builds (the
// version tools/crio/go.mod requires).
const CRIOVersion = "v1.36.3"

// CRIOBinaries returns the crio and pinns executables install-deps builds.
func CRIOBinaries() (crio, pinns string) {
	bin := filepath.Join(CacheDir(), "bin")
	return filepath.Join(bin, "crio-"+CRIOVersion), filepath.Join(bin, "pinns-"+CRIOVersion)
}

// Debian's conmon and runc run CRI-O's containers.
const (
	ConmonBinary = "/usr/bin/conmon"
	RuncBinary   = "/usr/bin/runc"
)

// certsDirInNamespace is where CRI-O (containers/image) looks for
// <host:port>/ca.crt: it has no setting for another directory, so the
// harness binds CRIO.CertsDir here in CRI-O's own mount namespace.
const certsDirInNamespace = "/etc/containers/certs.d"

// CRIOOptions configure StartCRIO. The zero value is valid.
type CRIOOptions struct {
	PauseImage string // [crio.image] pause_image; default "registry.k8s.io/pause:3.10"
	// Registries are reachable from the start: a TLS registry's test CA
	// in CertsDir, a plain-HTTP one as an insecure registry in
	// registries.conf.d (CRI-O reads registries.conf once, at start).
	Registries []*Registry
	// ConfigDropIn is a crio.conf.d drop-in, read after crio.conf: TOML
	// tables whose keys override the harness's, e.g. [crio.image]
	// pull_progress_timeout.
	ConfigDropIn string
	// RegistriesDropIn is a registries.conf.d drop-in, e.g. a
	// [[registry.mirror]] of a registry.
	RegistriesDropIn string
	// StorageDriver is containers/storage's driver: "vfs" (the default),
	// which works on any filesystem, or "overlay", which CRI-O needs to
	// mount image volumes (vfs has no mount options) and which needs a
	// kernel that lets root mount an overlay on Dir's filesystem.
	StorageDriver string
}

// CRIO is a CRI-O daemon confined to its own directory: config, storage
// (StorageDriver), run state, the paths it writes on the host by default
// (version files, namespaces, exits, attach sockets, pod logs), its registries
// config and the CAs it trusts. It runs in a MountNamespace of its own,
// where CertsDir is bound at the path CRI-O reads CAs from, so parallel
// daemons see only their own registries.
type CRIO struct {
	Binary     string
	Dir        string // everything below lives here and is removed on cleanup
	Endpoint   string // CRI endpoint, "unix://" + Address
	Address    string // the CRI socket
	ConfigFile string
	ConfigDir  string // crio.conf.d: drop-ins after ConfigFile
	// RegistriesConf and RegistriesConfDir are the registries.conf and
	// registries.conf.d it reads; CertsDir holds <host:port>/ca.crt.
	RegistriesConf    string
	RegistriesConfDir string
	CertsDir          string
	Root, RunRoot     string
	LogPath           string
	PauseImage        string
	StorageDriver     string
	// CgroupParent is for the test's pods (LinuxPodSandboxConfig): with
	// the cgroupfs manager the kubelet makes and removes pod cgroups, so
	// the harness removes this one, with what CRI-O left in it.
	CgroupParent string
	Namespace    *MountNamespace

	t    T
	proc *Process
}

// StartCRIO writes a config into a fresh directory, starts CRI-O and waits
// until its CRI answers. It skips or fails the test (see Require) when
// crio, pinns, conmon, runc or root are missing. The daemon, its
// containers, anything it left mounted and its directory go when the test
// ends.
//
// The config suits this host: cgroup v1 with the cgroupfs manager;
// drop_infra_ctr, since root here lacks CAP_SYS_RESOURCE and an infra
// container's negative oom_score_adj would fail (CRI-O has no
// restrict_oom_score_adj), which for the same reason leaves Guaranteed
// pods out; vfs storage unless StorageDriver says otherwise.
func StartCRIO(t T, opts CRIOOptions) *CRIO {
	t.Helper()
	if opts.PauseImage == "" {
		opts.PauseImage = "registry.k8s.io/pause:3.10"
	}
	switch opts.StorageDriver {
	case "":
		opts.StorageDriver = "vfs"
	case "vfs", "overlay":
	default:
		t.Fatalf("cri-o: StorageDriver %q: want vfs or overlay", opts.StorageDriver)
	}
	bin, pinns := CRIOBinaries()
	Require(t, "CRI-O "+CRIOVersion, bin)
	Require(t, "pinns "+CRIOVersion, pinns)
	Require(t, "conmon (Debian package conmon)", ConmonBinary)
	Require(t, "runc (Debian package runc)", RuncBinary)

	// Not t.TempDir(): its path can push the socket paths past the 108-byte
	// limit of unix socket addresses.
	dir, err := os.MkdirTemp("/tmp", "crio")
	if err != nil {
		t.Fatalf("cri-o: %v", err)
	}
	c := &CRIO{
		Binary:            bin,
		Dir:               dir,
		Address:           filepath.Join(dir, "crio.sock"),
		ConfigFile:        filepath.Join(dir, "crio.conf"),
		ConfigDir:         filepath.Join(dir, "crio.conf.d"),
		RegistriesConf:    filepath.Join(dir, "registries.conf"),
		RegistriesConfDir: filepath.Join(dir, "registries.conf.d"),
		CertsDir:          filepath.Join(dir, "certs.d"),
		Root:              filepath.Join(dir, "root"),
		RunRoot:           filepath.Join(dir, "runroot"),
		LogPath:           filepath.Join(dir, "crio.log"),
		PauseImage:        opts.PauseImage,
		StorageDriver:     opts.StorageDriver,
		CgroupParent:      "/harness-" + filepath.Base(dir),
		t:                 t,
	}
	c.Endpoint = "unix://" + c.Address
	// The namespace first, so that its cleanup (which kills what is left
	// in it) runs after the daemon's.
	c.Namespace = NewMountNamespace(t)
	t.Cleanup(c.cleanup)
	if err := c.writeFiles(opts, pinns); err != nil {
		t.Fatalf("cri-o: %v", err)
	}
	for _, r := range opts.Registries {
		if err := c.trust(r); err != nil {
			t.Fatalf("cri-o: %v", err)
		}
	}
	if err := os.MkdirAll(c.Namespace.Path(certsDirInNamespace), 0o755); err != nil {
		t.Fatalf("cri-o: %v", err)
	}
	name, args := c.Namespace.Wrap("/bin/mount", "--bind", c.CertsDir, certsDirInNamespace)
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("cri-o: bind its certs directory at %s: %v: %s", certsDirInNamespace, err, out)
	}
	c.Start()
	return c
}

func (c *CRIO) writeFiles(opts CRIOOptions, pinns string) error {
	cniDir := filepath.Join(c.Dir, "cni")
	for _, d := range []string{c.ConfigDir, c.RegistriesConfDir, c.CertsDir, cniDir, filepath.Join(c.Dir, "hooks"), filepath.Join(c.Dir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// A loopback-only network is enough for NetworkReady; test pods use
	// the host's network.
	const conflist = `{"cniVersion": "0.4.0", "name": "harness-loopback", "plugins": [{"type": "loopback"}]}` + "\n"
	files := map[string]string{
		filepath.Join(cniDir, "10-loopback.conflist"): conflist,
		c.ConfigFile: crioConfig(c, pinns, cniDir),
		// Signatures are not what the tests are about; the host's
		// policy.json is left alone.
		filepath.Join(c.Dir, "policy.json"): `{"default": [{"type": "insecureAcceptAnything"}]}` + "\n",
		// No unqualified search: references in tests are fully qualified,
		// and a short name must not reach out to a public registry.
		c.RegistriesConf: "unqualified-search-registries = []\n",
		// containers/storage reads this, not the host's
		// /etc/containers/storage.conf, for what crio.conf leaves unset.
		c.storageConf(): "[storage]\ndriver = " + strconv.Quote(c.StorageDriver) + "\ngraphroot = " + strconv.Quote(c.Root) + "\nrunroot = " + strconv.Quote(c.RunRoot) + "\n",
	}
	if opts.ConfigDropIn != "" {
		files[filepath.Join(c.ConfigDir, "50-test.conf")] = opts.ConfigDropIn
	}
	if opts.RegistriesDropIn != "" {
		files[filepath.Join(c.RegistriesConfDir, "50-test.conf")] = opts.RegistriesDropIn
	}
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", filepath.Base(path), err)
		}
	}
	return nil
}

func (c *CRIO) storageConf() string { return filepath.Join(c.Dir, "storage.conf") }

// trust makes r reachable: its test CA in CertsDir/<host>/ca.crt, as an
// admin of a CRI-O node would put it in /etc/containers/certs.d, or, for
// plain HTTP, a registries.conf.d drop-in marking it insecure.
func (c *CRIO) trust(r *Registry) error {
	if r.CACertPath != "" {
		ca, err := os.ReadFile(r.CACertPath)
		if err != nil {
			return fmt.Errorf("CA of %s: %w", r.Host, err)
		}
		dir := filepath.Join(c.CertsDir, r.Host)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "ca.crt"), ca, 0o644)
	}
	conf := fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", r.Host)
	return os.WriteFile(filepath.Join(c.RegistriesConfDir, r.Host+".conf"), []byte(conf), 0o644)
}

// crioConfig renders crio.conf with every path CRI-O writes below Dir.
func crioConfig(c *CRIO, pinns, cniDir string) string {
	q := strconv.Quote // TOML basic strings accept Go's quoting of paths
	d := func(name string) string { return q(filepath.Join(c.Dir, name)) }
	return `[crio]
root = ` + q(c.Root) + `
runroot = ` + q(c.RunRoot) + `
storage_driver = ` + q(c.StorageDriver) + `
log_dir = ` + d("pods") + `
version_file = ` + d("version") + `
version_file_persist = ` + d("version-persist") + `
clean_shutdown_file = ` + d("clean.shutdown") + `

[crio.api]
listen = ` + q(c.Address) + `
stream_address = "127.0.0.1"
stream_port = "0"

[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
drop_infra_ctr = true
namespaces_dir = ` + d("ns") + `
pinns_path = ` + q(pinns) + `
container_exits_dir = ` + d("exits") + `
container_attach_socket_dir = ` + d("attach") + `
decryption_keys_path = ` + d("keys") + `
hooks_dir = [` + d("hooks") + `]
cdi_spec_dirs = [` + d("cdi") + `]
default_mounts_file = ""
irqbalance_config_file = ` + d("irqbalance") + `
irqbalance_config_restore_file = "disable"
apparmor_profile = "unconfined"
disable_hostport_mapping = true
log_to_journald = false

[crio.runtime.runtimes.runc]
runtime_path = ` + q(RuncBinary) + `
runtime_type = "oci"
runtime_root = ` + d("runc") + `
monitor_path = ` + q(ConmonBinary) + `
monitor_cgroup = "pod"

[crio.image]
pause_image = ` + q(c.PauseImage) + `
signature_policy = ` + d("policy.json") + `
signature_policy_dir = ` + d("policies") + `
namespaced_auth_dir = ` + d("auth") + `
big_files_temporary_dir = ` + d("tmp") + `

[crio.network]
network_dir = ` + q(cniDir) + `
plugin_dirs = ["/usr/lib/cni"]

[crio.metrics]
enable_metrics = false

[crio.nri]
# NRI would listen on the host-wide /var/run/nri/nri.sock.
enable_nri = false
`
}

// Start starts the daemon again after Stop or Kill, on the same storage,
// and waits until the CRI answers.
func (c *CRIO) Start() {
	c.t.Helper()
	if c.Running() {
		c.t.Fatalf("cri-o: Start while running")
	}
	start := time.Now()
	env := append(os.Environ(), "CONTAINERS_STORAGE_CONF="+c.storageConf())
	bin, args := c.Namespace.Wrap(c.Binary,
		"--config", c.ConfigFile, "--config-dir", c.ConfigDir,
		"--registries-conf", c.RegistriesConf, "--registries-conf-dir", c.RegistriesConfDir)
	p, err := StartProcess(c.LogPath, env, bin, args...)
	if err != nil {
		c.t.Fatalf("cri-o: %v", err)
	}
	c.proc = p
	if err := c.waitCRI(60 * time.Second); err != nil {
		c.proc.Kill()
		c.t.Fatalf("cri-o did not become ready: %v\nlog %s:\n%s", err, c.LogPath, LogTail(c.LogPath, 40))
	}
	c.t.Logf("cri-o %s ready in %s at %s", CRIOVersion, time.Since(start).Round(time.Millisecond), c.Endpoint)
}

func (c *CRIO) waitCRI(timeout time.Duration) error {
	conn, err := grpc.NewClient(c.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithConnectParams(fastReconnect))
	if err != nil {
		return err
	}
	defer conn.Close()
	return waitVersion(conn, c.proc, timeout)
}

// Stop sends SIGTERM and waits, with SIGKILL after 10 s. Containers (their
// conmon) are left running, as with a real CRI-O restart.
func (c *CRIO) Stop() {
	c.t.Helper()
	if !c.Running() {
		return
	}
	if err := c.proc.Stop(10 * time.Second); err != nil {
		c.t.Errorf("cri-o: stop: %v", err)
	}
}

// Kill kills the daemon with SIGKILL, for fault tests; Start reuses its
// storage afterwards.
func (c *CRIO) Kill() {
	if c.Running() {
		c.proc.Kill()
	}
}

// Running reports whether the daemon is up.
func (c *CRIO) Running() bool {
	if c.proc == nil {
		return false
	}
	done, _ := c.proc.Exited()
	return !done
}

// Conn returns a gRPC connection to the CRI, closed when the test ends.
func (c *CRIO) Conn(t T) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(c.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("cri-o: dial %s: %v", c.Endpoint, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// cleanup removes the pod sandboxes through the CRI while it runs, stops
// the daemon, unmounts what it mounted below Dir in its namespace (overlay
// layers, image volumes), and removes Dir; the namespace's own cleanup then kills any conmon left.
func (c *CRIO) cleanup() {
	if c.Running() {
		removeSandboxes(c.t, "cri-o", c.Endpoint)
		if err := c.proc.Stop(10 * time.Second); err != nil {
			c.t.Logf("cri-o: stop: %v", err)
		}
	}
	if err := c.Namespace.UnmountBelow(c.Dir); err != nil {
		c.t.Errorf("cri-o: %v", err)
	}
	if err := removeCgroup(c.CgroupParent); err != nil {
		c.t.Errorf("cri-o: %v", err)
	}
	// vfs layers hold read-only directories of images; RemoveAll copes.
	if err := os.RemoveAll(c.Dir); err != nil {
		c.t.Errorf("cri-o: remove %s: %v", c.Dir, err)
	}
}

// removeCgroup removes the cgroup parent and everything below it in every
// hierarchy (v1) or the unified one (v2), deepest first: cgroup
// directories go with rmdir alone, their files with them.
func removeCgroup(parent string) error {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*" + parent)
	roots = append(roots, "/sys/fs/cgroup"+parent)
	for _, root := range roots {
		var dirs []string
		err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		if err != nil {
			return err
		}
		slices.Reverse(dirs)
		for _, d := range dirs {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove cgroup %s: %w", d, err)
			}
		}
	}
	return nil
}

// removeSandboxes stops and removes all pod sandboxes of the CRI at
// endpoint, so that their containers end with the test. Best effort.
func removeSandboxes(t T, what, endpoint string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	resp, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Logf("%s: cleanup: list sandboxes: %v", what, err)
		return
	}
	for _, sb := range resp.Items {
		if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			t.Logf("%s: cleanup: stop sandbox %s: %v", what, sb.Id, err)
		}
		if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			t.Logf("%s: cleanup: remove sandbox %s: %v", what, sb.Id, err)
		}
	}
}
