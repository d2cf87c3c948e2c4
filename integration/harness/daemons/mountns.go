package daemons

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MountNamespace is a private mount namespace in which /etc, /var and /run
// are overlays of the host's, with their upper directories in Dir: files a
// test writes there at a distribution's real paths (/run/k3s/containerd,
// /var/lib/rancher/..., /etc/cri/...) are seen only by the processes in
// it, and vanish with it. The runtime paths of every noderuntime layout
// start out empty in it, whatever the host has there, so that discovery
// inside finds only what the test put there.
//
// A holder process keeps the namespace alive; Command and StartProcess
// run others in it (nsenter). When the test ends every process in it is
// killed, which takes its mounts with it, and Dir is removed.
type MountNamespace struct {
	Dir    string
	holder *Process
	mntns  string // the namespace's /proc/PID/ns/mnt link, to tell its processes
}

// layoutRuntimePaths are emptied in a namespace: every layout's socket,
// config and hosts directories, and CRI-O's and cri-dockerd's sockets.
var layoutRuntimePaths = []string{
	"/run/containerd", "/etc/containerd",
	"/etc/cri",
	"/run/k3s", "/var/lib/rancher",
	"/var/snap/microk8s",
	"/run/crio", "/run/cri-dockerd.sock",
}

// NewMountNamespace creates the namespace; it fails the test where
// unshare, nsenter or overlayfs are missing.
func NewMountNamespace(t T) *MountNamespace {
	t.Helper()
	Require(t, "unshare (util-linux)", "/usr/bin/unshare")
	Require(t, "nsenter (util-linux)", "/usr/bin/nsenter")
	dir, err := os.MkdirTemp("/tmp", "mntns")
	if err != nil {
		t.Fatalf("mount namespace: %v", err)
	}
	ns := &MountNamespace{Dir: dir}
	t.Cleanup(func() {
		if err := ns.close(); err != nil {
			t.Errorf("mount namespace: %v", err)
		}
	})
	// set -e: a failed overlay mount must never reach the rm -rf, which
	// on the host's own /etc, /var and /run would remove real files. The
	// stat check says each is an overlay before anything is removed; rm
	// on an overlay only writes whiteouts into its upper directory.
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, d := range []string{"etc", "var", "run"} {
		up, work := filepath.Join(dir, d+"-upper"), filepath.Join(dir, d+"-work")
		fmt.Fprintf(&script, "mkdir -p %s %s\nmount -t overlay overlay -o lowerdir=/%s,upperdir=%s,workdir=%s /%s\n", up, work, d, up, work, d)
		fmt.Fprintf(&script, "[ \"$(stat -f -c %%T /%s)\" = overlayfs ]\n", d)
	}
	fmt.Fprintf(&script, "rm -rf %s\n", strings.Join(layoutRuntimePaths, " "))
	ready := filepath.Join(dir, "ready")
	fmt.Fprintf(&script, "touch %s\nexec sleep infinity\n", ready)
	p, err := StartProcess(filepath.Join(dir, "holder.log"), os.Environ(), "/usr/bin/unshare",
		"--mount", "--propagation", "private", "--", "/bin/sh", "-c", script.String())
	if err != nil {
		t.Fatalf("mount namespace: %v", err)
	}
	ns.holder = p
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if done, err := p.Exited(); done || time.Now().After(deadline) {
			t.Fatalf("mount namespace: holder did not get ready (exited %v: %v):\n%s", done, err, LogTail(filepath.Join(dir, "holder.log"), 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The holder's ns link only once it has unshared, which the ready file
	// says it has.
	if ns.mntns, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", ns.pid())); err != nil {
		t.Fatalf("mount namespace: %v", err)
	}
	return ns
}

func (ns *MountNamespace) pid() int { return ns.holder.cmd.Process.Pid }

// Path is where the test process reaches path as the namespace sees it
// (through /proc/PID/root): for writing config files, and for dialing
// sockets, at a layout's paths.
func (ns *MountNamespace) Path(path string) string {
	return fmt.Sprintf("/proc/%d/root%s", ns.pid(), path)
}

// Wrap returns the program and arguments that run bin with args inside
// the namespace: nsenter, which enters it and execs bin in its place, so
// the process's pid, signals and exit status are bin's.
func (ns *MountNamespace) Wrap(bin string, args ...string) (string, []string) {
	return "/usr/bin/nsenter", append([]string{"--mount=/proc/" + strconv.Itoa(ns.pid()) + "/ns/mnt", "--", bin}, args...)
}

// Command is exec.Command of bin inside the namespace. The process is
// killed if the test binary dies.
func (ns *MountNamespace) Command(bin string, args ...string) *exec.Cmd {
	name, argv := ns.Wrap(bin, args...)
	cmd := exec.Command(name, argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// UnmountBelow lazily unmounts, inside the namespace, every mount below
// dir, as unmountBelow does on the host: what a kubelet or containerd in
// the namespace mounted there.
func (ns *MountNamespace) UnmountBelow(dir string) error {
	mounts, err := mountsBelow(fmt.Sprintf("/proc/%d/mountinfo", ns.pid()), dir)
	if err != nil || len(mounts) == 0 {
		return err
	}
	name, argv := ns.Wrap("/bin/umount", append([]string{"--lazy"}, mounts...)...)
	if out, err := exec.Command(name, argv...).CombinedOutput(); err != nil {
		return fmt.Errorf("unmount below %s in the namespace: %v: %s", dir, err, out)
	}
	return nil
}

// inside says whether pid's mount namespace is this one.
func (ns *MountNamespace) inside(pid int) bool {
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	return err == nil && link == ns.mntns
}

// close kills every process in the namespace, the holder last, so that
// the namespace and its mounts go away, then removes Dir.
func (ns *MountNamespace) close() error {
	if ns.holder == nil {
		return os.RemoveAll(ns.Dir)
	}
	if ns.mntns != "" {
		stats, _ := filepath.Glob("/proc/[0-9]*")
		for _, p := range stats {
			pid, err := strconv.Atoi(filepath.Base(p))
			if err == nil && pid != ns.pid() && ns.inside(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	ns.holder.Kill()
	// The namespace is freed once its last process is reaped; the
	// overlays' work directories are busy until then.
	var err error
	for range 50 {
		if err = os.RemoveAll(ns.Dir); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("remove %s: %w", ns.Dir, err)
}
