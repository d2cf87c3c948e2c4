// Package bench compares kube-preloader with the peers a user would
// otherwise use, in the same run: a sequential loop of CRI pulls, as
// `for i in …; do crictl pull $i; done` does. Run with `make bench`.
package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

const rounds = 3

var preloaderBin = os.Getenv("PRELOADER_BIN")

// snapshotter is what nodes run: overlayfs where this kernel allows it.
var snapshotter = harness.NodeSnapshotter()

// BenchmarkPull pulls a 10-image set with shared base layers into a fresh
// runtime each round, both ways, and reports the ratio of medians.
func BenchmarkPull(b *testing.B) {
	if preloaderBin == "" {
		b.Fatal("PRELOADER_BIN is not set: run `make bench`")
	}
	bin, err := filepath.Abs(preloaderBin)
	if err != nil {
		b.Fatal(err)
	}
	reg := harness.StartRegistry(b, harness.RegistryOptions{})
	var specs []harness.ImageSpec
	for i := range 10 {
		// ~11 MiB each: a 6 MiB base shared by all, 5 MiB of their own.
		specs = append(specs, harness.ImageSpec{Repo: fmt.Sprintf("bench/app%d", i), Tag: "1", BaseLayers: 3, OwnLayers: 5, LayerSize: 1 << 20})
	}
	links := []struct {
		name string
		opts *harness.ProxyOptions
	}{
		{"remote-like", &harness.ProxyOptions{Latency: 25 * time.Millisecond, BytesPerSec: 10 << 20}},
		{"loopback", nil},
	}
	for _, flavor := range []harness.Flavor{harness.Containerd16, harness.Containerd2} {
		for _, link := range links {
			b.Run(fmt.Sprintf("%s/%s", flavor, link.name), func(b *testing.B) {
				host := reg.Host
				if link.opts != nil {
					host = harness.StartProxy(b, reg.Host, *link.opts).Host
				}
				// Push through the registry itself; pull through the link.
				imgs := harness.PushTestImages(b, reg, specs)
				var refs []string
				for _, img := range imgs {
					refs = append(refs, strings.Replace(img.Ref, reg.Host, host, 1))
				}
				var seq, pre []time.Duration
				for range rounds {
					seq = append(seq, sequentialCRIPulls(b, flavor, refs))
					pre = append(pre, preloaderOnce(b, bin, flavor, refs))
				}
				ms, mp := median(seq), median(pre)
				ratio := mp.Seconds() / ms.Seconds()
				b.ReportMetric(ms.Seconds(), "seq-s")
				b.ReportMetric(mp.Seconds(), "preloader-s")
				b.ReportMetric(ratio, "ratio")
				fmt.Printf("pull %s/%s: sequential CRI %s, preloader once %s, ratio %.2f (medians of %d; rounds %v vs %v)\n",
					flavor, link.name, ms.Round(time.Millisecond), mp.Round(time.Millisecond), ratio, rounds, seq, pre)
			})
		}
	}
}

// sequentialCRIPulls is what a crictl pull loop does: one image after the
// other, each pull waiting for the last.
func sequentialCRIPulls(b *testing.B, flavor harness.Flavor, refs []string) time.Duration {
	ctrd := harness.StartContainerd(b, harness.ContainerdOptions{Flavor: flavor, Snapshotter: snapshotter})
	defer ctrd.Stop()
	ctx := context.Background()
	c, err := cri.Connect(ctx, ctrd.Endpoint)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	for _, ref := range refs {
		if _, err := c.PullImage(ctx, ref, nil); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

func preloaderOnce(b *testing.B, bin string, flavor harness.Flavor, refs []string) time.Duration {
	ctrd := harness.StartContainerd(b, harness.ContainerdOptions{Flavor: flavor, Snapshotter: snapshotter})
	defer ctrd.Stop()
	dir := b.TempDir()
	cfg := "sandboxImage: none\nimages:\n"
	for _, r := range refs {
		cfg += "  - image: " + r + "\n"
	}
	path := filepath.Join(dir, "images.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "once", "--config", path, "--cri-endpoint", ctrd.Endpoint)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("preloader once: %v\n%s", err, out)
	}
	return time.Since(start)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
