package bench

import (
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// aiImage is the large image of BenchmarkPullLarge: about 1 GiB in five
// layers, one of 512 MiB, as an inference image's one big layer dominates
// its pull.
var aiImage = bigImage{name: "ai", layers: []int64{512 << 20, 256 << 20, 160 << 20, 64 << 20, 32 << 20}}

// largeLink is a registry far from the node: 25 ms a request and 20 MB/s
// per response, as a per-connection-limited link to a cloud registry.
var largeLink = harness.ProxyOptions{Latency: 25 * time.Millisecond, BytesPerSec: 20 << 20}

// rangedCRI is what the preloader advises for containerd 2.x's CRI
// pulls, which go through its transfer service: ranges of 16 MiB, 8
// requests at once.
const rangedCRI = `
[plugins."io.containerd.transfer.v1.local"]
  concurrent_layer_fetch_buffer = 16777216
  max_concurrent_downloads = 8
`

// noBudget turns the disk budget off in the large benchmarks: a shared
// benchmark machine's disk is not a node's image filesystem, and how full
// it is would decide instead of the pull. With room to spare the budget
// costs no request through containerd's client.
const noBudget = "diskBudget: none\n"

// largeRounds of each way in BenchmarkPullLarge: each takes tens of
// seconds, which vary less than the small images' rounds.
const largeRounds = 3

// largeTarget is the default config's ratio to `crictl pull` the
// benchmark is held to.
const largeTarget = 0.40

// The ways of BenchmarkPullLarge.
const (
	largeCrictl  = iota // crictl pull through largeLink: the peer
	largeDefault        // preloader once, default config, through largeLink
	largeFloor          // crictl pull straight from the registry
	largeTuned          // crictl pull through largeLink, ranged fetch on
	numLargeWays
)

// BenchmarkPullLarge pulls aiImage into a fresh containerd 2.4.2 (the
// nodes' snapshotter) each round, four ways: `crictl pull` through a
// remote link (the peer), `preloader once` with the default config through
// the same link, and `crictl pull` with no link at all, whose ratio to the
// peer is the floor: what unpacking alone costs; and `crictl pull` through
// the link into a containerd with the settings the preloader advises
// (rangedCRI). Medians of largeRounds; the preloader's peak RSS beside
// them.
func BenchmarkPullLarge(b *testing.B) {
	bin, crictl := preloaderPath(b), requireCrictl(b)
	began := time.Now()
	reg, ref, layers := servedBigImage(b, aiImage)
	proxy := harness.StartProxy(b, reg.Host, largeLink)
	far := strings.Replace(ref, reg.Host, proxy.Host, 1)

	var times [numLargeWays][]time.Duration
	var peak int64
	var path string
	for r := range largeRounds {
		for i := range numLargeWays {
			switch w := (i + r) % numLargeWays; w {
			case largeCrictl:
				times[w] = append(times[w], crictlPulls(b, crictl, harness.Containerd2, []string{far}, ""))
			case largeFloor:
				times[w] = append(times[w], crictlPulls(b, crictl, harness.Containerd2, []string{ref}, ""))
			case largeTuned:
				times[w] = append(times[w], crictlPulls(b, crictl, harness.Containerd2, []string{far}, rangedCRI))
			case largeDefault:
				run := preloaderOnce(b, bin, harness.Containerd2, []string{far}, noBudget)
				times[w] = append(times[w], run.took)
				path, peak = run.path, max(peak, run.peakRSS)
			}
		}
	}
	row := largeRow{path: path, peakRSS: peak}
	row.raw, row.compressed, row.largest = layerSums(layers)
	for w := range numLargeWays {
		row.med[w] = median(times[w])
	}
	b.ReportMetric(row.med[largeCrictl].Seconds(), "crictl-s")
	b.ReportMetric(row.med[largeDefault].Seconds(), "default-s")
	b.ReportMetric(row.ratio(largeDefault), "default-ratio")
	b.ReportMetric(row.ratio(largeFloor), "floor-ratio")
	b.ReportMetric(row.ratio(largeTuned), "crictl-ranged-ratio")
	b.ReportMetric(mib(peak), "peak-rss-MiB")
	fmt.Printf("large pull: rounds crictl %v, default (%s) %v, crictl unlimited %v, crictl ranged %v\n",
		roundAll(times[largeCrictl]), path, roundAll(times[largeDefault]), roundAll(times[largeFloor]), roundAll(times[largeTuned]))
	printLargeTable(os.Stdout, row, time.Since(began))
}

// largeRow is BenchmarkPullLarge's result.
type largeRow struct {
	raw, compressed, largest int64
	med                      [numLargeWays]time.Duration
	path                     string
	peakRSS                  int64
}

func (r largeRow) ratio(w int) float64 { return r.med[w].Seconds() / r.med[largeCrictl].Seconds() }

func printLargeTable(w io.Writer, r largeRow, took time.Duration) {
	fmt.Fprintf(w, "\nlarge image, %.0f MiB (%.0f MiB compressed, largest layer %.0f MiB), containerd %s on %s, +%v a request and %d MiB/s a response, medians of %d (%s in all):\n",
		mib(r.raw), mib(r.compressed), mib(r.largest), strings.TrimPrefix(harness.Containerd2Version, "v"), snapshotter,
		largeLink.Latency, largeLink.BytesPerSec>>20, largeRounds, took.Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "crictl pull\tdefault\t\tpath\ttarget\tfloor (unlimited crictl)\t\tpeak RSS\tcrictl, ranged fetch on\t")
	fmt.Fprintf(tw, "%.2fs\t%.2fs\t%.2f\t%s\t<= %.2f %s\t%.2fs\t%.2f\t%.1f MiB\t%.2fs\t%.2f\n", r.med[largeCrictl].Seconds(),
		r.med[largeDefault].Seconds(), r.ratio(largeDefault), r.path, largeTarget, pullVerdict(r.ratio(largeDefault) <= largeTarget),
		r.med[largeFloor].Seconds(), r.ratio(largeFloor), mib(r.peakRSS), r.med[largeTuned].Seconds(), r.ratio(largeTuned))
	tw.Flush()
}

// hugeLayer is BenchmarkPullHugeLayer's image: one layer of 4 GiB.
var hugeLayer = bigImage{name: "huge", layers: []int64{4 << 30}}

// agentLimit is the DaemonSet's memory limit, and agentGoMemLimit the
// GOMEMLIMIT it sets below it.
const (
	agentLimit      = 128 << 20
	agentGoMemLimit = "112MiB"
)

// BenchmarkPullHugeLayer pulls an image of one 4 GiB layer from a
// registry on loopback, where memory, not the link, is what is measured:
// `preloader once` with the default config and with pullVia containerd
// (every byte through the preloader) at the default and the highest
// maxDownloads, each in the agent's environment
// (GOMEMLIMIT), and reports their peak RSS against the agent's memory
// limit.
func BenchmarkPullHugeLayer(b *testing.B) {
	bin := preloaderPath(b)
	began := time.Now()
	_, ref, layers := servedBigImage(b, hugeLayer)
	raw, _, _ := layerSums(layers)
	env := "GOMEMLIMIT=" + agentGoMemLimit
	// maxDownloads at its bound: the most ranges in flight, whatever the
	// config.
	ways := []struct{ name, config string }{{"default", ""}, {"pullVia containerd", "pullVia: containerd\n"},
		{"pullVia containerd, maxDownloads 64", "pullVia: containerd\nmaxDownloads: 64\n"}}
	fmt.Printf("\nhuge layer, %.0f MiB (%.0f MiB compressed), loopback, containerd %s on %s, %s:\n",
		mib(raw), mib(layers[0].Size), strings.TrimPrefix(harness.Containerd2Version, "v"), snapshotter, env)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "config\tpath\ttime\tpeak RSS\tlimit\tunder limit")
	for _, w := range ways {
		run := preloaderOnce(b, bin, harness.Containerd2, []string{ref}, noBudget+w.config, env)
		fmt.Fprintf(tw, "%s\t%s\t%.1fs\t%.1f MiB\t%d MiB\t%s\n", w.name, run.path, run.took.Seconds(), mib(run.peakRSS),
			agentLimit>>20, pullVerdict(run.peakRSS < agentLimit))
		b.ReportMetric(mib(run.peakRSS), strings.NewReplacer(" ", "-", ",", "").Replace(w.name)+"-peak-rss-MiB")
	}
	tw.Flush()
	fmt.Printf("(%s in all)\n", time.Since(began).Round(time.Second))
}

// servedBigImage is img in a registry of its own, once there is room
// for it (requireSpace): the registry, the image's reference, its layers.
func servedBigImage(b *testing.B, img bigImage) (*harness.Registry, string, []bigLayer) {
	var raw int64
	for _, n := range img.layers {
		raw += n
	}
	requireSpace(b, raw)
	layers := buildBigImage(b, img)
	reg := harness.StartRegistry(b, harness.RegistryOptions{})
	return reg, pushBigImage(b, reg, "bench/"+img.name, layers), layers
}

// requireSpace skips the benchmark, or fails it in CI, when the cache's
// filesystem or /tmp (the registry's and containerd's) has too little
// free for an image of raw uncompressed bytes: three copies of its blobs
// (the cache's, the registry's, containerd's), which gzip leaves at about
// two thirds, and its unpacked snapshot.
func requireSpace(b *testing.B, raw int64) {
	b.Helper()
	need := raw*3*2/3 + raw + 512<<20
	for _, dir := range []string{harness.CacheDir(), os.TempDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			b.Fatal(err)
		}
		free := int64(st.Bavail) * st.Bsize
		if free >= need {
			continue
		}
		msg := fmt.Sprintf("%s has %.1f GiB free; this benchmark needs %.1f GiB (a cached image, the registry's copy, containerd's)",
			dir, float64(free)/(1<<30), float64(need)/(1<<30))
		if harness.Strict() {
			b.Fatal(msg)
		}
		b.Skip(msg)
	}
}
