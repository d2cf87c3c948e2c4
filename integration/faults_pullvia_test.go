package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// TestFaultPullViaContainerd: a pull cut off while a layer is
// downloading, by the run's deadline, SIGTERM or containerd dying under it,
// leaves no image record, nothing the CRI lists and no lease of the
// preloader's; after a restart the retry completes it.
func TestFaultPullViaContainerd(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) {
			reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
			img := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "team/stalled", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 256 << 10}})[0]
			var stalled atomic.Int32
			proxy := harness.StartProxy(t, reg.Host, harness.ProxyOptions{Fault: func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method != http.MethodGet || !slices.ContainsFunc(img.Layers, func(l string) bool { return strings.HasSuffix(r.URL.Path, l) }) {
					return false
				}
				stalled.Add(1)
				w.Header().Set("Content-Length", "262144")
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				return true
			}})
			node := newTestNode(t, flavor)
			node.env = append(node.env, noderuntime.ContainerdConfigEnv+"="+node.ctrd.ConfigFile)
			ref := proxy.Host + "/team/stalled:1.0"
			before := leaseIDs(t, node.containerd(t))
			creds := writeFile(t, node.dir, "config.json", harness.DockerConfigJSON(proxy.Host, testUser, testPassword))
			leftover := func(t *testing.T) {
				t.Helper()
				if refs := node.refs(t); len(refs) != 0 {
					t.Errorf("CRI lists %v after an interrupted pull, want nothing", refs)
				}
				if _, err := node.containerd(t).ImageService().Get(context.Background(), ref); !errdefs.IsNotFound(err) {
					t.Errorf("image record of %s: %v, want not found", ref, err)
				}
				if after := leaseIDs(t, node.containerd(t)); !slices.Equal(before, after) {
					t.Errorf("leases %v before, %v after: the pull's lease was left behind", before, after)
				}
			}

			t.Run("deadline", func(t *testing.T) {
				start := time.Now()
				r := node.once(t, pullViaConfig("containerd", "pullTimeout: 1m\n", ref), "--timeout", "3s", "--docker-config", creds)
				took := time.Since(start)
				if r.code != 1 || stalled.Load() == 0 {
					t.Fatalf("want exit 1 after a stalled layer download (%d stalled):\n%s", stalled.Load(), r)
				}
				if st, reason := parseOnce(t, r).status(ref); st != "failed" || reason == "" {
					t.Errorf("%s: %s %q, want failed with a reason", ref, st, reason)
				}
				if took > 10*time.Second {
					t.Errorf("run took %v with --timeout 3s", took)
				}
				leftover(t)
				reportFault(faultRow{scenario: string(flavor) + ": pullVia containerd, run deadline mid-download",
					outcome: fmt.Sprintf("exit %d after %s (--timeout 3s), 0 listed, 0 leases left", r.code, took.Round(10*time.Millisecond)), leaked: leakedIn(r.stdout + r.stderr)})
			})

			t.Run("SIGTERM", func(t *testing.T) {
				stalled.Store(0)
				path := writeFile(t, node.dir, "sigterm.yaml", pullViaConfig("containerd", "pullTimeout: 1m\n", ref))
				cmd := exec.Command(preloaderBin, "once", "--config", path, "-o", "json", "--docker-config", creds)
				cmd.Env = append(os.Environ(), node.env...)
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				deadline := time.Now().Add(time.Minute)
				for stalled.Load() == 0 && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				sent := time.Now()
				cmd.Process.Signal(syscall.SIGTERM)
				exited := make(chan error, 1)
				go func() { exited <- cmd.Wait() }()
				select {
				case <-exited:
				case <-time.After(10 * time.Second):
					cmd.Process.Kill()
					t.Fatalf("still running 10s after SIGTERM:\n%s", out.String())
				}
				took := time.Since(sent)
				if code := cmd.ProcessState.ExitCode(); code == 0 || stalled.Load() == 0 {
					t.Errorf("exit %d after SIGTERM mid-download (%d stalled), want non-zero:\n%s", code, stalled.Load(), out.String())
				}
				leftover(t)
				reportFault(faultRow{scenario: string(flavor) + ": pullVia containerd, SIGTERM mid-download",
					outcome: fmt.Sprintf("exit %d in %s, 0 listed, 0 leases left", cmd.ProcessState.ExitCode(), took.Round(10*time.Millisecond)), leaked: leakedIn(out.String())})
			})

			t.Run("containerd restarted", func(t *testing.T) {
				// A held body rather than a stall: the download has
				// started and waits for the test, and once let go after
				// containerd's restart, its next write fails.
				hold := harness.NewHold(64<<10, func(r *http.Request) bool {
					return r.Method == http.MethodGet && slices.ContainsFunc(img.Layers, func(l string) bool { return strings.HasSuffix(r.URL.Path, l) })
				})
				t.Cleanup(hold.Release)
				held := harness.StartProxy(t, reg.Host, harness.ProxyOptions{Hold: hold})
				ref := held.Host + "/team/stalled:1.0"
				heldCreds := writeFile(t, node.dir, "held.json", harness.DockerConfigJSON(held.Host, testUser, testPassword))
				done := make(chan run, 1)
				go func() { done <- node.once(t, pullViaConfig("containerd", "", ref), "--docker-config", heldCreds) }()
				deadline := time.Now().Add(time.Minute)
				for hold.Held() == 0 {
					if time.Now().After(deadline) {
						t.Fatalf("no layer download held within a minute")
					}
					time.Sleep(20 * time.Millisecond)
				}
				node.ctrd.Kill()
				killed := time.Now()
				node.ctrd.Start()
				hold.Release()
				// Nothing of the cut pull may show before the retry.
				if refs := node.refs(t); len(refs) != 0 {
					t.Errorf("CRI lists %v right after the restart, want nothing", refs)
				}
				r := <-done
				if r.code != 0 {
					t.Fatalf("want the retry to complete the pull, exit 0:\n%s", r)
				}
				out := parseOnce(t, r)
				if st, _ := out.status(ref); st != "pulled" || out.Images[0].Attempts < 2 {
					t.Errorf("%s: %s after %d attempts, want pulled by a retry", ref, st, out.Images[0].Attempts)
				}
				assertPresent(t, node.ctrd.Endpoint, ref)
				if after := leaseIDs(t, node.containerd(t)); !slices.Equal(before, after) {
					t.Errorf("leases %v before, %v after the completed pull", before, after)
				}
				reportFault(faultRow{scenario: string(flavor) + ": pullVia containerd, containerd killed mid-download",
					outcome: fmt.Sprintf("exit 0, pulled after %d attempts, 0 leases left", out.Images[0].Attempts), recover: time.Since(killed), leaked: leakedIn(r.stdout + r.stderr)})
			})
		})
	}
}
