package integration

import (
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// rangedTransfer turns on ranged fetches of containerd 2.x's CRI pulls,
// which go through its transfer service.
const rangedTransfer = `
[plugins."io.containerd.transfer.v1.local"]
  concurrent_layer_fetch_buffer = 4194304
  max_concurrent_downloads = 4
`

// `once` on containerd 2.4.2 says once what of containerd's settings
// holds back its CRI pulls, naming the setting to change; with that
// setting on, it says nothing, and the CRI's pull of a big layer is
// fetched in ranges, which shows the setting named is the one that works.
func TestRuntimeSettingsAdvice(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	img := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "ai/model", Tag: "1", OwnLayers: 1, LayerSize: 24 << 20}})[0]
	var ranged atomic.Int32
	proxy := harness.StartProxy(t, reg.Host, harness.ProxyOptions{Fault: func(_ http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/blobs/") && r.Header.Get("Range") != "" {
			ranged.Add(1)
		}
		return false
	}})
	ref := strings.Replace(img.Ref, reg.Host, proxy.Host, 1)
	// containerd runs with the test's PATH, and its own directory first.
	_, igzipErr := exec.LookPath("igzip")
	_, unpigzErr := exec.LookPath("unpigz")
	oneGoroutine := igzipErr != nil && unpigzErr != nil

	tests := []struct {
		name, config string
		advice       string // the settings line's set=, "" for none
		ranges       bool
	}{
		{"defaults", "", `set="[plugins.\"io.containerd.transfer.v1.local\"] concurrent_layer_fetch_buffer = 16777216 (now 0: one connection per layer), max_concurrent_downloads = 8 (now 3 on the node)"`, false},
		{"ranged fetch on", rangedTransfer, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ranged.Store(0)
			ctrd := harness.StartContainerd(t, harness.ContainerdOptions{SandboxImage: "registry.example/unused/pause:0", Config: tt.config})
			node := &testNode{ctrd: ctrd, dir: t.TempDir(),
				env: []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}}
			// The budget is not what this test is about, and a shared
			// machine's disk would decide it.
			r := node.once(t, pullViaConfig("cri", "diskBudget: none\n", ref))
			if r.code != 0 {
				t.Fatalf("want exit 0:\n%s", r)
			}
			lines := logLines(r.stderr, `msg="containerd's settings hold back CRI pulls of big layers"`)
			switch {
			case tt.advice == "" && len(lines) != 0:
				t.Errorf("advice with the settings on:\n%s", r.stderr)
			case tt.advice != "" && (len(lines) != 1 || !strings.Contains(lines[0], tt.advice)):
				t.Errorf("want one line of advice with %s:\n%s", tt.advice, r.stderr)
			}
			if got := len(logLines(r.stderr, `msg="containerd decompresses layers in one goroutine"`)); got != map[bool]int{true: 1}[oneGoroutine] {
				t.Errorf("decompression advice %d times, want it once exactly when neither igzip nor unpigz is on containerd's PATH (%v):\n%s", got, oneGoroutine, r.stderr)
			}
			if got := ranged.Load() > 1; got != tt.ranges {
				t.Errorf("the CRI's pull made %d ranged blob requests; ranged fetch want %v", ranged.Load(), tt.ranges)
			}
		})
	}
}

// logLines are the lines of log that contain s.
func logLines(log, s string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}
