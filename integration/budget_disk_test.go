package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
)

// usedBytes is what statfs says is in use on the filesystem of path.
func usedBytes(t *testing.T, path string) int64 {
	t.Helper()
	n, err := statUsed(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func statUsed(path string) (int64, error) {
	var st unix.Statfs_t
	err := unix.Statfs(path, &st)
	return int64(st.Blocks-st.Bfree) * st.Bsize, err
}

// roomTaken is the budget's decision for an image as the log says it:
// its need, its blobs and their unpacked size, in MiB, and whether its
// layers told the unpacked size.
type roomTaken struct {
	need, blobs, unpacked float64
	told                  bool
}

var roomTakenLine = regexp.MustCompile(`msg="disk budget: room taken" .*need="([0-9.]+) MiB" how="([0-9.]+) MiB of blobs, ([0-9.]+) MiB unpacked([^"]*)"`)

func parseRoomTaken(t *testing.T, stderr string) roomTaken {
	t.Helper()
	m := roomTakenLine.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("no budget decision in the log:\n%s", stderr)
	}
	f := func(s string) float64 {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	return roomTaken{need: f(m[1]), blobs: f(m[2]), unpacked: f(m[3]), told: m[4] == " as its layers tell"}
}

// TestDiskBudgetMeasured checks the budget's estimate against what an
// image of compressible content really takes on containerd 2.4.2's
// overlayfs snapshotter, whose root is a tmpfs that statfs measures: the
// compressed blobs in the content store and the unpacked snapshots. The
// estimate is read from the layers' gzip trailers, and is within 5 % of
// the real use on both pull paths.
func TestDiskBudgetMeasured(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	// About 336 MiB unpacked in three compressible layers, and one of
	// random bytes (which does not compress).
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "ai/model", Tag: "1", OwnLayers: 3, LayerSize: 112 << 20, Compressible: true, BaseLayers: 1, BaseLayerSize: 8 << 20},
	})
	for _, via := range []string{"containerd", "cri"} {
		t.Run(via, func(t *testing.T) {
			ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, Snapshotter: "overlayfs",
				SandboxImage: "registry.example/unused/pause:0", RootSize: 2 << 30})
			path := filepath.Join(t.TempDir(), "images.yaml")
			if err := os.WriteFile(path, []byte("sandboxImage: none\npullVia: "+via+"\nimages:\n  - image: "+imgs[0].Ref+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			before := usedBytes(t, ctrd.Root)
			out, r := onceJSON(t, []string{noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}, path,
				"--cri-endpoint", ctrd.Endpoint, "--containerd-address", ctrd.Address)
			if len(out.Images) != 1 || out.Images[0].Status != preload.StatusPulled {
				t.Fatalf("want the image pulled:\n%s", r)
			}
			real := float64(usedBytes(t, ctrd.Root)-before) / (1 << 20)
			got := parseRoomTaken(t, r.stderr)
			if !got.told {
				t.Errorf("the layers' unpacked size was estimated, want told by their gzip trailers:\n%s", r.stderr)
			}
			t.Logf("pullVia %s: estimate %.1f MiB (%.1f MiB of blobs + %.1f MiB unpacked); real %.1f MiB; the compressed size times three: %.1f MiB",
				via, got.need, got.blobs, got.unpacked, real, 3*got.blobs)
			if got.need < real*0.95 || got.need > real*1.05 {
				t.Errorf("estimate %.1f MiB, real use %.1f MiB: more than 5 %% apart", got.need, real)
			}
		})
	}
}

// TestDiskBudgetBeforeFirstByte: an image the node's image filesystem
// cannot hold is refused before any of its layers is downloaded, on both
// pull paths, with what it needs and what is free. A proxy in front of
// the registry counts the blob bytes it serves: only the last 8 bytes of
// each layer (its gzip trailer, which tells the unpacked size) go out.
// The image compresses by about four: the compressed size times three
// would fit in the budget, its real size does not.
func TestDiskBudgetBeforeFirstByte(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	pushed := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "ai/big", Tag: "1", OwnLayers: 1, LayerSize: 48 << 20, Compressible: true},
	})
	img := pushed[0]
	for _, via := range []string{"cri", "containerd"} {
		t.Run(via, func(t *testing.T) {
			var mu sync.Mutex
			var served []string
			var layerBytes, fullGets atomic.Int64
			proxy := harness.StartProxy(t, reg.Host, harness.ProxyOptions{Served: func(r *http.Request, status int, n int64) {
				if r.Method != http.MethodGet || !slices.ContainsFunc(img.Layers, func(l string) bool { return strings.HasSuffix(r.URL.Path, l) }) {
					return
				}
				layerBytes.Add(n)
				if r.Header.Get("Range") == "" {
					fullGets.Add(1)
				}
				mu.Lock()
				served = append(served, fmt.Sprintf("%s Range=%q: %d, %d bytes", r.URL.Path, r.Header.Get("Range"), status, n))
				mu.Unlock()
			}})
			ref := proxy.Host + "/" + img.Spec.Repo + ":" + img.Spec.Tag
			ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: "registry.example/unused/pause:0", RootSize: 64 << 20})
			path := filepath.Join(t.TempDir(), "images.yaml")
			if err := os.WriteFile(path, []byte("sandboxImage: none\npullVia: "+via+"\nimages:\n  - image: "+ref+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			out, r := onceJSON(t, []string{noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}, path,
				"--cri-endpoint", ctrd.Endpoint, "--containerd-address", ctrd.Address)
			if len(out.Images) != 1 || out.Images[0].Status != preload.StatusFailed || out.Images[0].Reason != failure.DiskBudget {
				t.Fatalf("want the image held back by the disk budget:\n%s", r)
			}
			msg := out.Images[0].Error
			for _, want := range []string{"needs about", "as its layers tell", "is left of 64.0 MiB", "was free when the run began"} {
				if !strings.Contains(msg, want) {
					t.Errorf("the message lacks %q: %s", want, msg)
				}
			}
			mu.Lock()
			t.Logf("pullVia %s: %s\nlayer requests served: %s", via, msg, strings.Join(served, "; "))
			defer mu.Unlock()
			if fullGets.Load() != 0 || layerBytes.Load() > int64(8*len(img.Layers)) {
				t.Errorf("the proxy served %d layer bytes (%d whole-blob requests), want at most the %d-byte trailers:\n%s",
					layerBytes.Load(), fullGets.Load(), 8*len(img.Layers), strings.Join(served, "\n"))
			}
			if r.code != 1 {
				t.Errorf("exit %d, want 1", r.code)
			}
			reportFault(faultRow{scenario: "containerd-2: an image of compressible content larger than the disk budget (64 MiB tmpfs root), pullVia " + via,
				outcome: "held back, reason disk budget, with what it needs and what is free; no layer byte served but its 8-byte gzip trailer; exit 1"})
		})
	}
}

// TestArchiveImportPeakDisk: importing an archive takes at most the
// archive's blobs and its unpacked layers on disk at any moment, no
// staged copy of the archive or of a layer. containerd's root, the
// archive directory and the preloader's TMPDIR share one tmpfs, whose use
// is sampled while the import runs. The archive stands for the blobs it
// holds, which the content store keeps; metadataSlack is containerd's
// bookkeeping (its database grows by pages, snapshots add directories),
// far less than any staged layer.
func TestArchiveImportPeakDisk(t *testing.T) {
	const layers, layerSize = 3, 40 << 20
	var ls []v1.Layer
	var unpacked int64
	for i := range layers {
		l, err := archivetest.Layer(uint64(100+i), layerSize, true)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		size, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		unpacked += size
		ls = append(ls, l)
	}
	img, err := archivetest.NewImage(nodePlatform, ls...)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		format      archivetest.Format
		compression string
	}{
		{archivetest.DockerSave, "none"},
		{archivetest.OCILayout, "gzip"},
	} {
		t.Run(string(tc.format)+"-"+tc.compression, func(t *testing.T) {
			ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, Snapshotter: "overlayfs",
				SandboxImage: "registry.example/unused/pause:0", RootSize: 1 << 30})
			dir := filepath.Join(ctrd.Root, "preloader-test")
			tmp := filepath.Join(dir, "tmp")
			if err := os.MkdirAll(tmp, 0o755); err != nil {
				t.Fatal(err)
			}
			name := "registry.example/ai/archived:1"
			file := filepath.Join(dir, "model.tar")
			writeArchive(t, file, tc.format, tc.compression, archivetest.Image{Names: []string{name}, Image: img})
			fi, err := os.Stat(file)
			if err != nil {
				t.Fatal(err)
			}
			cfg := filepath.Join(t.TempDir(), "images.yaml")
			if err := os.WriteFile(cfg, []byte(archiveConfig(dir, false, name+" archive=model.tar")), 0o600); err != nil {
				t.Fatal(err)
			}
			before := usedBytes(t, ctrd.Root)
			var peak atomic.Int64
			stop := make(chan struct{})
			sampled := make(chan struct{})
			go func() {
				defer close(sampled)
				for {
					if u, err := statUsed(ctrd.Root); err == nil && u > peak.Load() {
						peak.Store(u)
					}
					select {
					case <-stop:
						return
					case <-time.After(2 * time.Millisecond):
					}
				}
			}()
			r := preloader(t, 3*time.Minute, []string{cri.EndpointEnv + "=" + ctrd.Endpoint, "TMPDIR=" + tmp}, "once", "--config", cfg, "-o", "json")
			close(stop)
			<-sampled
			res := parseArchiveResult(t, r)
			if res.statuses()[name] != string(preload.StatusImported) {
				t.Fatalf("want %s imported:\n%s", name, r)
			}
			const metadataSlack = 1 << 20
			extra := peak.Load() - before
			bound := fi.Size() + unpacked + metadataSlack
			t.Logf("%s archive (%s) of %.1f MiB, %.1f MiB unpacked: peak extra use %.1f MiB",
				tc.format, tc.compression, mibf(fi.Size()), mibf(unpacked), mibf(extra))
			if extra > bound {
				t.Errorf("peak extra use %.1f MiB, more than the archive and its unpacked layers (%.1f MiB) and 1 MiB of metadata", mibf(extra), mibf(fi.Size()+unpacked))
			}
		})
	}
}

func mibf(n int64) float64 { return float64(n) / (1 << 20) }
