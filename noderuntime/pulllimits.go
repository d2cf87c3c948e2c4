package noderuntime

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// containerd 2.x's defaults for a pull's downloads (plugins/transfer and
// internal/cri/config in v2.4.2), and the chunk size under which it
// fetches a blob over one connection (core/remotes/docker/fetcher.go).
const (
	defaultCRIDownloads = 3
	minFetchBuffer      = 512
)

// What the advice asks for: 16 MiB ranges, 8 requests at once. containerd
// holds up to max_concurrent_downloads ranges of a blob in memory at once.
const (
	adviseFetchBuffer = 16 << 20
	adviseDownloads   = 8
)

// Sections of containerd 2.x's config that bound CRI pulls: the transfer
// service's, which the CRI pulls through by default, and the CRI image
// service's own, used with use_local_image_pull.
const (
	transferSection = `[plugins."io.containerd.transfer.v1.local"]`
	imagesSection   = `[plugins."io.containerd.cri.v1.images"]`
)

// CRIPullLimits is what of containerd 2.x's config bounds the downloads
// of pulls through its CRI: the kubelet's, and the preloader's with
// pullVia cri.
type CRIPullLimits struct {
	Known       bool   // containerd 2.x; false for other runtimes
	Section     string // the config table whose keys apply
	Downloads   int    // HTTP requests for blobs at once on the node, ranges of one blob included
	FetchBuffer int    // bytes of one range of a blob; below 512, one connection per blob
}

// RangedFetch says whether the CRI fetches a blob as parallel ranges.
func (l CRIPullLimits) RangedFetch() bool {
	return l.Known && l.FetchBuffer >= minFetchBuffer && l.Downloads > 1
}

// Advice is the settings to change so that CRI pulls fetch big blobs as
// parallel ranges, each with what it is now; "" when they already do.
func (l CRIPullLimits) Advice() string {
	if !l.Known {
		return ""
	}
	var set []string
	if l.FetchBuffer < minFetchBuffer {
		set = append(set, fmt.Sprintf("concurrent_layer_fetch_buffer = %d (now %d: one connection per layer)", adviseFetchBuffer, l.FetchBuffer))
	}
	if l.Downloads < adviseDownloads && (len(set) > 0 || l.Downloads <= 1) {
		set = append(set, fmt.Sprintf("max_concurrent_downloads = %d (now %d on the node)", adviseDownloads, l.Downloads))
	}
	if len(set) == 0 {
		return ""
	}
	return l.Section + " " + strings.Join(set, ", ")
}

// criPullLimits reads the limits of containerd 2.x's CRI pulls from its
// config file; a node without one runs containerd's defaults.
func criPullLimits(cfg *containerdConfigFile) CRIPullLimits {
	l := CRIPullLimits{Known: true, Section: transferSection, Downloads: defaultCRIDownloads}
	if cfg == nil {
		return l
	}
	p := cfg.Plugins
	set := p.Transfer
	if p.Images.UseLocalImagePull {
		l.Section = imagesSection
		set.MaxConcurrentDownloads = firstNonZero(p.Images.MaxConcurrentDownloads, p.CRI.MaxConcurrentDownloads)
		set.ConcurrentLayerFetchBuffer = p.Images.ConcurrentLayerFetchBuffer
	}
	if set.MaxConcurrentDownloads > 0 {
		l.Downloads = set.MaxConcurrentDownloads
	}
	l.FetchBuffer = set.ConcurrentLayerFetchBuffer
	return l
}

func firstNonZero(v ...int) int {
	for _, n := range v {
		if n != 0 {
			return n
		}
	}
	return 0
}

// gzipTools are the programs containerd decompresses gzip layers with
// when it finds them on its PATH, in the order it looks, each with the
// variable that turns it off (pkg/archive/compression in v2.4.2); without
// them it decompresses in one goroutine.
var gzipTools = []struct{ name, disable string }{
	{"igzip", "CONTAINERD_DISABLE_IGZIP"},
	{"unpigz", "CONTAINERD_DISABLE_PIGZ"},
}

// defaultPath is the PATH of a process that was given none, as systemd
// starts a service.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// gzipTool is the program the containerd serving the socket at address
// decompresses gzip layers with, "" for none; known is false where the
// preloader cannot see containerd's process (another PID namespace, as in
// the agent's pod) or its files.
func gzipTool(address string) (tool string, known bool) {
	pid, err := socketPeer(address)
	if err != nil || pid <= 0 {
		return "", false
	}
	proc := fmt.Sprintf("/proc/%d", pid)
	environ, err := os.ReadFile(proc + "/environ")
	if err != nil {
		return "", false
	}
	env := map[string]string{}
	for _, kv := range bytes.Split(environ, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	path, ok := env["PATH"]
	if !ok {
		path = defaultPath
	}
	if _, err := os.Stat(proc + "/root/"); err != nil {
		return "", false
	}
	for _, t := range gzipTools {
		if off, _ := strconv.ParseBool(env[t.disable]); off {
			continue
		}
		for _, dir := range filepath.SplitList(path) {
			if !filepath.IsAbs(dir) {
				continue
			}
			if st, err := os.Stat(filepath.Join(proc, "root", dir, t.name)); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				return t.name, true
			}
		}
	}
	return "", true
}

// decompressAdvice is what to do when containerd decompresses in one
// goroutine.
const decompressAdvice = "install igzip (isa-l) or unpigz (pigz) on containerd's PATH: containerd decompresses gzip layers with either when it finds one, else in one goroutine"
