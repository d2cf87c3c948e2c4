package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
)

// TestDiskBudget is the disk budget on containerd 2.x whose root is a
// 64 MiB tmpfs, with the kubelet's default thresholds (image GC at 85 %,
// eviction below 15 % free: 54.4 MiB may be used): three images of 12 MiB
// of random bytes each, which need 24 MiB on disk (the blob and its
// unpacked layer, as its gzip trailer tells), do not all fit. The last in config
// order is held back with the reason "disk budget", whatever order the
// list gives, and the others are pulled.
func TestDiskBudget(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/one", Tag: "1", OwnLayers: 1, LayerSize: 12 << 20},
		{Repo: "team/two", Tag: "1", OwnLayers: 1, LayerSize: 12 << 20},
		{Repo: "team/three", Tag: "1", OwnLayers: 1, LayerSize: 12 << 20},
	})
	for _, tc := range []struct {
		order []int
		via   string
	}{
		{[]int{0, 1, 2}, "cri"},
		{[]int{2, 0, 1}, "cri"},
		// containerd's client decides once the pull has read its
		// manifest, before any layer.
		{[]int{0, 1, 2}, "containerd"},
		{[]int{1, 2, 0}, "containerd"},
	} {
		order := tc.order
		ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: "registry.example/unused/pause:0", RootSize: 64 << 20})
		dir := t.TempDir()
		y := "sandboxImage: none\npullVia: " + tc.via + "\nimages:\n"
		for _, i := range order {
			y += "  - image: " + imgs[i].Ref + "\n"
		}
		path := filepath.Join(dir, "images.yaml")
		if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		env := []string{noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}
		out, r := onceJSON(t, env, path, "--cri-endpoint", ctrd.Endpoint, "--containerd-address", ctrd.Address)
		last := imgs[order[2]].Ref
		for _, res := range out.Images {
			switch {
			case res.Image == last && (res.Status != preload.StatusFailed || res.Reason != failure.DiskBudget):
				t.Errorf("order %v: %s is %s (%s), want held back by the disk budget:\n%s", order, res.Image, res.Status, res.Reason, r)
			case res.Image != last && res.Status != preload.StatusPulled:
				t.Errorf("order %v: %s is %s (%s), want pulled: an earlier image keeps its room:\n%s", order, res.Image, res.Status, res.Reason, r)
			}
			if res.Image == last {
				t.Logf("pullVia %s, order %v: %s held back: %s", tc.via, order, short(res.Image), res.Error)
				reportFault(faultRow{scenario: fmt.Sprintf("containerd-2: a list larger than the disk budget (64 MiB tmpfs root), pullVia %s, order %v", tc.via, order),
					outcome: "the last image in config order held back, reason disk budget; the earlier ones pulled; exit 1"})
			}
		}
		if r.code != 1 || !strings.Contains(r.stderr, `reason="disk budget"`) {
			t.Errorf("order %v: want exit 1 and the budget in the log:\n%s", order, r)
		}
	}
}

func short(ref string) string { return ref[strings.LastIndex(ref, "/")+1:] }

// TestDiskBudgetSameImageByTagAndDigest: one image named twice, by tag
// then by digest, pulled through containerd's client under the disk
// budget. The pull by tag is held at its resolution until the pull by
// digest has either read the manifest (so containerd's unpacker holds its
// lock on it while asking the budget for room) or says it waits for the
// images before it. Both names are pulled; the run does not hang until
// its timeout waiting for a decision that a lock holds up.
func TestDiskBudgetSameImageByTagAndDigest(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	img := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "team/twice", Tag: "1", OwnLayers: 1, LayerSize: 1 << 20}})[0]
	tagPath := "/v2/team/twice/manifests/1"
	manifestPath := "/v2/team/twice/manifests/" + img.Digest
	release := make(chan struct{})
	manifestRead := make(chan struct{})
	readOnce := sync.OnceFunc(func() { close(manifestRead) })
	proxy := harness.StartProxy(t, reg.Host, harness.ProxyOptions{
		Fault: func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == tagPath {
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}
			return false
		},
		Served: func(r *http.Request, status int, n int64) {
			if r.Method == http.MethodGet && r.URL.Path == manifestPath && status == http.StatusOK {
				readOnce()
			}
		},
	})
	byTag := proxy.Host + "/team/twice:1"
	byDigest := proxy.Host + "/team/twice@" + img.Digest
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: "registry.example/unused/pause:0", RootSize: 64 << 20})
	path := writeFile(t, t.TempDir(), "images.yaml", "sandboxImage: none\npullVia: containerd\nconcurrency: 2\nimages:\n  - image: "+byTag+"\n  - image: "+byDigest+"\n")

	cmd := exec.Command(preloaderBin, "once", "--config", path, "-o", "json", "--timeout", "60s",
		"--cri-endpoint", ctrd.Endpoint, "--containerd-address", ctrd.Address)
	cmd.Env = append(os.Environ(), noderuntime.ContainerdConfigEnv+"="+ctrd.ConfigFile)
	var stdout bytes.Buffer
	var stderr harness.LockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var err error
	go func() { err = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})

	waiting := `msg="disk budget: waiting for the images before it to be decided" image=` + byDigest
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(90 * time.Second)
	var released string
	for released == "" {
		select {
		case <-manifestRead:
			released = "the pull by digest had read the manifest"
		case <-tick.C:
			if strings.Contains(stderr.String(), waiting) {
				released = "the pull by digest waited for the one by tag"
			}
		case <-done:
			close(release)
			t.Fatalf("the run ended (%v) before the pull by tag was let go:\n%s", err, stderr.String())
		case <-deadline:
			close(release)
			t.Fatalf("neither did the pull by digest read the manifest nor wait for the pull by tag:\n%s", stderr.String())
		}
	}
	close(release)
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the run outlived its --timeout:\n%s", stderr.String())
	}
	r := run{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("the pull by tag was let go once %s", released)
	var out onceOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("once -o json: %v\n%s", err, r)
	}
	if r.code != 0 || len(out.Images) != 2 {
		t.Fatalf("want exit 0 and both names pulled:\n%s", r)
	}
	for _, res := range out.Images {
		if res.Status != preload.StatusPulled {
			t.Errorf("%s is %s (%s: %s), want pulled:\n%s", res.Image, res.Status, res.Reason, res.Error, r)
		}
	}
	reportFault(faultRow{scenario: "containerd-2: one image by tag and by digest, pullVia containerd, disk budget on; the tag's resolution held until the pull by digest reads the manifest or waits",
		outcome: "both pulled, exit 0: the later name waits for the earlier's room decision before its pull takes containerd's lock on the manifest"})
}
