package bench

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// memCgroup is a memory cgroup of the benchmark's own holding one process,
// so that its working set can be read the way the kubelet reads a
// container's against its memory limit: usage less the inactive file
// pages, which the kernel reclaims before it would kill anything.
type memCgroup struct {
	dir             string
	usage, inactive string // the usage file, and the memory.stat key
}

// newMemCgroup makes an empty memory cgroup (v1 or v2, whichever this
// machine mounts); a process joins it by writing its pid to procs().
func newMemCgroup(name string) (*memCgroup, error) {
	m := &memCgroup{dir: filepath.Join("/sys/fs/cgroup/memory", name), usage: "memory.usage_in_bytes", inactive: "total_inactive_file"}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		m = &memCgroup{dir: filepath.Join("/sys/fs/cgroup", name), usage: "memory.current", inactive: "inactive_file"}
	}
	if err := os.Mkdir(m.dir, 0o755); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *memCgroup) procs() string { return filepath.Join(m.dir, "cgroup.procs") }

// uncachedCopy copies the binary at path to a new file in dir and drops
// the copy's pages from the page cache, so that the pages of the binary a
// process started from it touches are charged to that process's cgroup,
// as in a pod's first start on a node, not to whoever read them first.
func uncachedCopy(path, dir string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, filepath.Base(path))
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return dst, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// workingSet is usage less inactive file pages, in bytes.
func (m *memCgroup) workingSet() (int64, error) {
	raw, err := os.ReadFile(filepath.Join(m.dir, m.usage))
	if err != nil {
		return 0, err
	}
	usage, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return 0, err
	}
	f, err := os.Open(filepath.Join(m.dir, "memory.stat"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok && k == m.inactive {
			inactive, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, err
			}
			return max(usage-inactive, 0), nil
		}
	}
	return 0, errors.New(m.inactive + " not in memory.stat")
}

// remove removes the cgroup once its process has exited.
func (m *memCgroup) remove() error { return os.Remove(m.dir) }
