// Package bench compares kube-preloader with the peers a user would
// otherwise use, in the same run: for pulls a real `crictl pull` of each
// image in turn, for archives `ctr images import`. Run with `make bench`.
package bench

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// rounds of the archive benchmark's compressed variants.
const rounds = 3

// pullRounds of each way in BenchmarkPull: its loopback and LAN-like
// rounds, seconds or less on shared cores, vary more than 3 can settle.
const pullRounds = 5

var preloaderBin = os.Getenv("PRELOADER_BIN")

// snapshotter is what nodes run: overlayfs where this kernel allows it.
var snapshotter = harness.NodeSnapshotter()

// CrictlVersion is the crictl that `scripts/install-deps.sh crictl` builds
// into harness.CacheDir()/bin as crictl-CrictlVersion.
const CrictlVersion = "v1.37.0"

func crictlPath() string {
	return filepath.Join(harness.CacheDir(), "bin", "crictl-"+CrictlVersion)
}

// requireCrictl is crictlPath, once it is there (harness.Require).
func requireCrictl(b *testing.B) string {
	crictl := crictlPath()
	harness.Require(b, "crictl "+CrictlVersion+" (scripts/install-deps.sh crictl)", crictl)
	return crictl
}

// preloaderPath is the absolute path of the preloader that `make bench`
// built.
func preloaderPath(b *testing.B) string {
	if preloaderBin == "" {
		b.Fatal("PRELOADER_BIN is not set: run `make bench`")
	}
	bin, err := filepath.Abs(preloaderBin)
	if err != nil {
		b.Fatal(err)
	}
	return bin
}

// pullImages is the image set: ten images of three 4 MiB layers of their
// own on a 1 MiB base layer they all share, 13 MiB each, 121 MiB in all.
func pullImages() []harness.ImageSpec {
	var specs []harness.ImageSpec
	for i := range 10 {
		specs = append(specs, harness.ImageSpec{Repo: fmt.Sprintf("bench/app%d", i), Tag: "1",
			BaseLayers: 1, BaseLayerSize: 1 << 20, OwnLayers: 3, LayerSize: 4 << 20})
	}
	return specs
}

// pullLink is the link between the node and the registry.
type pullLink struct {
	name string
	opts *harness.ProxyOptions // nil: loopback, no proxy
}

var pullLinks = []pullLink{
	{"remote-like", &harness.ProxyOptions{Latency: 25 * time.Millisecond, BytesPerSec: 10 << 20}},
	{"LAN-like", &harness.ProxyOptions{Latency: time.Millisecond, BytesPerSec: 100 << 20}},
	{"loopback", nil},
}

// pullTarget is the target for the default config's ratio to the
// crictl loop; false where there is none (loopback, containerd 1.6).
func pullTarget(flavor harness.Flavor, link string) (float64, bool) {
	if flavor != harness.Containerd2 {
		return 0, false // legacy: reported, no target
	}
	switch link {
	case "remote-like":
		return 0.35, true
	case "LAN-like":
		return 0.55, true
	}
	return 0, false
}

// The ways of one row; the first is the peer the others are compared with.
const (
	wayCrictl = iota
	wayDefault
	wayCRI
	wayContainerd
	numWays
)

// BenchmarkPull pulls the image set (pullImages) into a fresh containerd
// each round, on containerd 2.4.2 and 1.6 and through three links (a
// remote-like and a LAN-like proxy, loopback), four ways: a real `crictl
// pull` of each image in turn (the peer), `preloader once` with the default
// config (no pullVia, no concurrency: what users get), with `pullVia: cri`
// and with `pullVia: containerd`. It prints one table of the medians, their
// ratios to the crictl loop and the targets for the default.
//
// PRELOADER_BENCH_PULLVIA appends YAML lines to the pullVia containerd
// config (e.g. "concurrency: 10\nmaxDownloads: 16"), to try other limits;
// select one row with -bench 'BenchmarkPull/containerd-2/remote-like'.
func BenchmarkPull(b *testing.B) {
	bin, crictl := preloaderPath(b), requireCrictl(b)
	extra := strings.ReplaceAll(os.Getenv("PRELOADER_BENCH_PULLVIA"), `\n`, "\n")
	began := time.Now()
	reg := harness.StartRegistry(b, harness.RegistryOptions{})
	// Pushed once, straight to the registry; pulled through each link.
	imgs := harness.PushTestImages(b, reg, pullImages())
	var table []pullRow
	for _, flavor := range []harness.Flavor{harness.Containerd2, harness.Containerd16} {
		for _, link := range pullLinks {
			b.Run(fmt.Sprintf("%s/%s", flavor, link.name), func(b *testing.B) {
				host := reg.Host
				if link.opts != nil {
					host = harness.StartProxy(b, reg.Host, *link.opts).Host
				}
				var refs []string
				for _, img := range imgs {
					refs = append(refs, strings.Replace(img.Ref, reg.Host, host, 1))
				}
				configs := [numWays]string{
					wayDefault:    "",
					wayCRI:        "pullVia: cri\n",
					wayContainerd: "pullVia: containerd\n" + extra + "\n",
				}
				var times, cpus [numWays][]time.Duration
				var peaks [numWays]int64
				var paths [numWays]string
				for r := range pullRounds {
					// Each round starts with another way, so that none is
					// always first after the previous row's.
					for i := range numWays {
						w := (i + r) % numWays
						if w == wayCrictl {
							times[w] = append(times[w], crictlPulls(b, crictl, flavor, refs, ""))
							continue
						}
						run := preloaderOnce(b, bin, flavor, refs, configs[w])
						times[w], cpus[w] = append(times[w], run.took), append(cpus[w], run.cpu)
						paths[w], peaks[w] = run.path, max(peaks[w], run.peakRSS)
					}
				}
				row := pullRow{name: fmt.Sprintf("%s, %s", flavorName(flavor), link.name), path: paths[wayDefault]}
				row.target, row.hasTarget = pullTarget(flavor, link.name)
				for w := range numWays {
					row.med[w] = median(times[w])
				}
				table = append(table, row)
				b.ReportMetric(row.med[wayCrictl].Seconds(), "crictl-s")
				b.ReportMetric(row.med[wayDefault].Seconds(), "default-s")
				b.ReportMetric(row.med[wayCRI].Seconds(), "pullvia-cri-s")
				b.ReportMetric(row.med[wayContainerd].Seconds(), "pullvia-containerd-s")
				b.ReportMetric(row.ratio(wayDefault), "default-ratio")
				b.ReportMetric(row.ratio(wayCRI), "cri-ratio")
				b.ReportMetric(row.ratio(wayContainerd), "containerd-ratio")
				fmt.Printf("pull %s: rounds crictl %v, default (%s) %v, pullVia cri (%s) %v, pullVia containerd (%s) %v\n", row.name,
					roundAll(times[wayCrictl]), paths[wayDefault], roundAll(times[wayDefault]),
					paths[wayCRI], roundAll(times[wayCRI]), paths[wayContainerd], roundAll(times[wayContainerd]))
				fmt.Printf("pull %s: preloader CPU (user+system), medians: default %v, pullVia cri %v, pullVia containerd %v\n", row.name,
					median(cpus[wayDefault]).Round(time.Millisecond), median(cpus[wayCRI]).Round(time.Millisecond),
					median(cpus[wayContainerd]).Round(time.Millisecond))
				// The engine the agent runs, with maxDownloads downloads
				// busy: what the DaemonSet's memory limit must hold.
				fmt.Printf("pull %s: preloader peak RSS (VmHWM, highest of the rounds): default %.1f MiB, pullVia cri %.1f MiB, pullVia containerd %.1f MiB\n", row.name,
					float64(peaks[wayDefault])/(1<<20), float64(peaks[wayCRI])/(1<<20), float64(peaks[wayContainerd])/(1<<20))
			})
		}
	}
	printPullTable(os.Stdout, table, extra, time.Since(began))
}

// pullRow is one runtime and link of BenchmarkPull: the medians of the ways.
type pullRow struct {
	name      string
	med       [numWays]time.Duration
	path      string // the default's: via/concurrency from its "pull path" line
	target    float64
	hasTarget bool
}

func (r pullRow) ratio(w int) float64 { return r.med[w].Seconds() / r.med[wayCrictl].Seconds() }

func printPullTable(w io.Writer, rows []pullRow, extra string, took time.Duration) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\npulls, medians of %d, ratios to the crictl loop (pullVia containerd config extra: %q; %s in all):\n",
		pullRounds, extra, took.Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tcrictl loop\tdefault\t\tpath\ttarget\tpullVia cri\t\tpullVia containerd\t")
	for _, r := range rows {
		target := "-"
		if r.hasTarget {
			target = fmt.Sprintf("<= %.2f %s", r.target, pullVerdict(r.ratio(wayDefault) <= r.target))
		}
		fmt.Fprintf(tw, "%s\t%.2fs\t%.2fs\t%.2f\t%s\t%s\t%.2fs\t%.2f\t%.2fs\t%.2f\n", r.name, r.med[wayCrictl].Seconds(),
			r.med[wayDefault].Seconds(), r.ratio(wayDefault), r.path, target,
			r.med[wayCRI].Seconds(), r.ratio(wayCRI), r.med[wayContainerd].Seconds(), r.ratio(wayContainerd))
	}
	tw.Flush()
}

func pullVerdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT met"
}

// flavorName is the runtime as the table names it: containerd and its
// version.
func flavorName(flavor harness.Flavor) string {
	if flavor == harness.Containerd2 {
		return "containerd " + strings.TrimPrefix(harness.Containerd2Version, "v")
	}
	bin, _ := flavor.Binaries()
	out, err := exec.Command(bin, "--version").Output()
	// "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1"
	if f := strings.Fields(string(out)); err == nil && len(f) >= 3 {
		v, _, _ := strings.Cut(strings.TrimPrefix(f[2], "v"), "~")
		return "containerd " + v
	}
	return string(flavor)
}

// crictlPulls is the peer: `crictl pull` of each image in turn into a
// fresh containerd, with config added to its config file, each waiting
// for the last, as `for i in …; do crictl pull $i; done` does.
func crictlPulls(b *testing.B, crictl string, flavor harness.Flavor, refs []string, config string) time.Duration {
	ctrd := harness.StartContainerd(b, harness.ContainerdOptions{Flavor: flavor, Snapshotter: snapshotter, Config: config})
	defer discard(ctrd)
	// An empty config file: nothing of the machine's /etc/crictl.yaml, and
	// no warning that there is none.
	cfg := filepath.Join(ctrd.Dir, "crictl.yaml")
	if err := os.WriteFile(cfg, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for _, ref := range refs {
		cmd := exec.Command(crictl, "--config", cfg, "--runtime-endpoint", ctrd.Endpoint, "--timeout", "10m", "pull", ref)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("crictl pull %s: %v\n%s", ref, err, out)
		}
	}
	return time.Since(start)
}

var pullPathLine = regexp.MustCompile(`msg="pull path" via=(\S+) concurrency=(\d+)`)

// onceRun is one `preloader once`: how long it took, the CPU it used
// (user and system), and the path its "pull path" line names
// (via/concurrency).
type onceRun struct {
	took, cpu time.Duration
	path      string
	peakRSS   int64 // bytes, the kernel's maxrss
}

// watchPeakRSS samples the VmHWM of process pid every few milliseconds
// until it exits, and returns the last it read. Not the kernel's maxrss of
// the child: that keeps the high-water mark of the test binary it was
// forked from across exec.
func watchPeakRSS(pid int) func() int64 {
	var peak atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if kib := procStatusKiB(pid)["VmHWM"]; kib > 0 {
				peak.Store(kib << 10)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() int64 {
		close(stop)
		<-done
		return peak.Load()
	}
}

// preloaderOnce runs `preloader once` with refs and the config lines
// extra (pullVia) against a fresh containerd, with env added to its
// environment.
func preloaderOnce(b *testing.B, bin string, flavor harness.Flavor, refs []string, extra string, env ...string) onceRun {
	ctrd := harness.StartContainerd(b, harness.ContainerdOptions{Flavor: flavor, Snapshotter: snapshotter})
	defer discard(ctrd)
	cfg := "sandboxImage: none\n" + extra + "images:\n"
	for _, r := range refs {
		cfg += "  - image: " + r + "\n"
	}
	path := filepath.Join(ctrd.Dir, "images.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "once", "--config", path, "--cri-endpoint", ctrd.Endpoint, "--containerd-address", ctrd.Address)
	// containerd 2.x does not report its registry config_path; as on a
	// node, the preloader reads it from containerd's config file.
	cmd.Env = append(append(os.Environ(), noderuntime.ContainerdConfigEnv+"="+ctrd.ConfigFile), env...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	peak := watchPeakRSS(cmd.Process.Pid)
	err := cmd.Wait()
	d := time.Since(start)
	out := buf.Bytes()
	if err != nil {
		b.Fatalf("preloader once: %v\n%s", err, out)
	}
	m := pullPathLine.FindSubmatch(out)
	if m == nil {
		b.Fatalf("preloader once logged no pull path:\n%s", out)
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return onceRun{took: d, cpu: cpu, path: string(m[1]) + "/" + string(m[2]), peakRSS: peak()}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// procStatusKiB is the numeric fields of /proc/pid/status (VmRSS, VmHWM,
// RssAnon, …) by name, in KiB; nil when the process is gone.
func procStatusKiB(pid int) map[string]int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	fields := make(map[string]int64)
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64); err == nil {
			fields[k] = n
		}
	}
	return fields
}
