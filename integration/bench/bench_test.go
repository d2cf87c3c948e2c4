// Package bench compares kube-preloader with the peers a user would
// otherwise use, in the same run: a sequential loop of CRI pulls, as
// `for i in …; do crictl pull $i; done` does. Run with `make bench`.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

const rounds = 3

var preloaderBin = os.Getenv("PRELOADER_BIN")

// snapshotter is what nodes run: overlayfs where this kernel allows it.
var snapshotter = harness.NodeSnapshotter()

// BenchmarkPull pulls a 10-image set with shared base layers into a fresh
// runtime each round, three ways: a sequential CRI pull loop, `preloader
// once` with pullVia cri and with pullVia containerd. It prints one table of
// the medians and their ratios to the loop against issue 8's targets.
//
// PRELOADER_BENCH_PULLVIA appends YAML lines to the pullVia containerd
// config (e.g. "concurrency: 10\nmaxDownloads: 16"), to try other limits;
// select one row with -bench 'BenchmarkPull/containerd-2/remote-like'.
func BenchmarkPull(b *testing.B) {
	if preloaderBin == "" {
		b.Fatal("PRELOADER_BIN is not set: run `make bench`")
	}
	bin, err := filepath.Abs(preloaderBin)
	if err != nil {
		b.Fatal(err)
	}
	extra := strings.ReplaceAll(os.Getenv("PRELOADER_BENCH_PULLVIA"), `\n`, "\n")
	reg := harness.StartRegistry(b, harness.RegistryOptions{})
	var specs []harness.ImageSpec
	for i := range 10 {
		// 8 MiB each: a 3 MiB base shared by all, 5 MiB of their own.
		specs = append(specs, harness.ImageSpec{Repo: fmt.Sprintf("bench/app%d", i), Tag: "1", BaseLayers: 3, OwnLayers: 5, LayerSize: 1 << 20})
	}
	links := []struct {
		name   string
		opts   *harness.ProxyOptions
		target float64 // issue 8: pullVia containerd / sequential loop
	}{
		{"remote-like", &harness.ProxyOptions{Latency: 25 * time.Millisecond, BytesPerSec: 10 << 20}, 0.45},
		{"loopback", nil, 1.10},
	}
	var table []pullRow
	for _, flavor := range []harness.Flavor{harness.Containerd2, harness.Containerd16} {
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
				var seq, viaCRI, viaCtrd []time.Duration
				for range rounds {
					seq = append(seq, sequentialCRIPulls(b, flavor, refs))
					viaCRI = append(viaCRI, preloaderOnce(b, bin, flavor, refs, "pullVia: cri\n"))
					viaCtrd = append(viaCtrd, preloaderOnce(b, bin, flavor, refs, "pullVia: containerd\n"+extra+"\n"))
				}
				row := pullRow{name: fmt.Sprintf("%s, %s", flavor, link.name), target: link.target,
					seq: median(seq), cri: median(viaCRI), ctrd: median(viaCtrd)}
				table = append(table, row)
				b.ReportMetric(row.seq.Seconds(), "seq-s")
				b.ReportMetric(row.cri.Seconds(), "pullvia-cri-s")
				b.ReportMetric(row.ctrd.Seconds(), "pullvia-containerd-s")
				b.ReportMetric(row.ratio(row.cri), "cri-ratio")
				b.ReportMetric(row.ratio(row.ctrd), "containerd-ratio")
				fmt.Printf("pull %s: rounds sequential %v, pullVia cri %v, pullVia containerd %v\n", row.name, seq, viaCRI, viaCtrd)
			})
		}
	}
	printPullTable(os.Stdout, table, extra)
}

// pullRow is one runtime and link of BenchmarkPull: medians of the three ways.
type pullRow struct {
	name           string
	seq, cri, ctrd time.Duration
	target         float64
}

func (r pullRow) ratio(d time.Duration) float64 { return d.Seconds() / r.seq.Seconds() }

func printPullTable(w io.Writer, rows []pullRow, extra string) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\npulls, medians of %d (pullVia containerd config extra: %q):\n", rounds, extra)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tsequential CRI\tpullVia cri\tratio\tpullVia containerd\tratio\ttarget")
	for _, r := range rows {
		verdict := "met"
		if r.ratio(r.ctrd) > r.target {
			verdict = "NOT met"
		}
		fmt.Fprintf(tw, "%s\t%.2fs\t%.2fs\t%.2f\t%.2fs\t%.2f\t<= %.2f %s\n", r.name,
			r.seq.Seconds(), r.cri.Seconds(), r.ratio(r.cri), r.ctrd.Seconds(), r.ratio(r.ctrd), r.target, verdict)
	}
	tw.Flush()
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

// preloaderOnce runs `preloader once` with refs and the config lines
// extra (pullVia) against a fresh containerd.
func preloaderOnce(b *testing.B, bin string, flavor harness.Flavor, refs []string, extra string) time.Duration {
	ctrd := harness.StartContainerd(b, harness.ContainerdOptions{Flavor: flavor, Snapshotter: snapshotter})
	defer ctrd.Stop()
	dir := b.TempDir()
	cfg := "sandboxImage: none\n" + extra + "images:\n"
	for _, r := range refs {
		cfg += "  - image: " + r + "\n"
	}
	path := filepath.Join(dir, "images.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "once", "--config", path, "--cri-endpoint", ctrd.Endpoint, "--containerd-address", ctrd.Address)
	// containerd 2.x does not report its registry config_path; as on a
	// node, the preloader reads it from containerd's config file.
	cmd.Env = append(os.Environ(), noderuntime.ContainerdConfigEnv+"="+ctrd.ConfigFile)
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
