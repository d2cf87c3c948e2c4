package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// archiveImages is the benchmark's archive: 8 images on a shared 40 MiB
// base, 20 MiB of their own each, about 200 MiB in all, half random and
// half text so that compression has something to do, as with real images.
const archiveImages = 8

// importRounds: the import's disk-bound rounds vary more than pulls do.
const importRounds = 5

func benchArchive(b *testing.B) []archivetest.Image {
	b.Helper()
	layer := func(seed uint64, size int, text bool) v1.Layer {
		l, err := archivetest.Layer(seed, size, text)
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	base := []v1.Layer{layer(1, 20<<20, false), layer(2, 20<<20, true)}
	var imgs []archivetest.Image
	for i := range archiveImages {
		own := []v1.Layer{layer(uint64(100+i), 10<<20, false), layer(uint64(200+i), 10<<20, true)}
		img, err := archivetest.NewImage("linux/"+runtime.GOARCH, append(base[:len(base):len(base)], own...)...)
		if err != nil {
			b.Fatal(err)
		}
		imgs = append(imgs, archivetest.Image{Names: []string{fmt.Sprintf("registry.example/bench/app%d:1", i)}, Image: img})
	}
	return imgs
}

// BenchmarkArchiveImport imports one ~200 MiB docker save archive of
// several images into a fresh containerd each round, with `preloader once`
// (archiveDir) and with `ctr images import` (--local on ctr 2.x, which
// otherwise hands the stream to the daemon's transfer service), and
// reports the ratio of medians; then the preloader's import of the same
// archive as plain tar, gzip and zstd.
func BenchmarkArchiveImport(b *testing.B) {
	if preloaderBin == "" {
		b.Fatal("PRELOADER_BIN is not set: run `make bench`")
	}
	bin, err := filepath.Abs(preloaderBin)
	if err != nil {
		b.Fatal(err)
	}
	var tarball bytes.Buffer
	if err := archivetest.Write(&tarball, archivetest.DockerSave, benchArchive(b)); err != nil {
		b.Fatal(err)
	}
	files := make(map[string]string)
	for _, c := range []string{archivetest.Plain, archivetest.Gzip, archivetest.Zstd} {
		data, err := archivetest.Compress(tarball.Bytes(), c)
		if err != nil {
			b.Fatal(err)
		}
		// One file per directory: the preloader imports all of archiveDir.
		dir := b.TempDir()
		files[c] = filepath.Join(dir, "images.tar")
		if err := os.WriteFile(files[c], data, 0o644); err != nil {
			b.Fatal(err)
		}
		fmt.Printf("archive %s: %.1f MiB\n", c, float64(len(data))/(1<<20))
	}
	tarball = bytes.Buffer{}

	ctrs := map[harness.Flavor][]string{
		harness.Containerd16: {"/usr/bin/ctr"},
		harness.Containerd2:  {filepath.Join(harness.CacheDir(), "bin", "ctr-"+harness.Containerd2Version), "--local"},
	}
	for _, flavor := range []harness.Flavor{harness.Containerd2, harness.Containerd16} {
		b.Run(string(flavor)+"/vs-ctr", func(b *testing.B) {
			ctr := ctrs[flavor]
			harness.Require(b, "ctr for "+string(flavor), ctr[0])
			var ctrTimes, preTimes []time.Duration
			for range importRounds {
				ctrTimes = append(ctrTimes, ctrImport(b, flavor, ctr, files[archivetest.Plain]))
				preTimes = append(preTimes, preloaderImport(b, bin, flavor, files[archivetest.Plain]))
			}
			mc, mp := median(ctrTimes), median(preTimes)
			ratio := mp.Seconds() / mc.Seconds()
			b.ReportMetric(mc.Seconds(), "ctr-s")
			b.ReportMetric(mp.Seconds(), "preloader-s")
			b.ReportMetric(ratio, "ratio")
			fmt.Printf("import %s: ctr images import %s, preloader once %s, ratio %.2f (medians of %d; rounds %v vs %v)\n",
				flavor, mc.Round(time.Millisecond), mp.Round(time.Millisecond), ratio, importRounds, ctrTimes, preTimes)
		})
		b.Run(string(flavor)+"/compression", func(b *testing.B) {
			for _, c := range []string{archivetest.Plain, archivetest.Gzip, archivetest.Zstd} {
				var times []time.Duration
				for range rounds {
					times = append(times, preloaderImport(b, bin, flavor, files[c]))
				}
				m := median(times)
				b.ReportMetric(m.Seconds(), c+"-s")
				fmt.Printf("import %s %s: preloader once %s (median of %d; rounds %v)\n", flavor, c, m.Round(time.Millisecond), rounds, times)
			}
		})
	}
}

// ctrImport runs `ctr images import` into the CRI's namespace and
// snapshotter of a fresh containerd.
func ctrImport(b *testing.B, flavor harness.Flavor, ctr []string, file string) time.Duration {
	ctrd := harness.StartContainerd(b, harness.ContainerdOptions{Flavor: flavor})
	defer discard(ctrd)
	args := append([]string{"-a", ctrd.Address, "-n", "k8s.io", "images", "import"}, ctr[1:]...)
	args = append(args, "--snapshotter", "native", file)
	cmd := exec.Command(ctr[0], args...)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("ctr %v: %v\n%s", args, err, out)
	}
	return time.Since(start)
}

// preloaderImport runs `preloader once` with the archive's directory as
// archiveDir against a fresh containerd.
func preloaderImport(b *testing.B, bin string, flavor harness.Flavor, file string) time.Duration {
	ctrd := harness.StartContainerd(b, harness.ContainerdOptions{Flavor: flavor})
	defer discard(ctrd)
	cfg := filepath.Join(b.TempDir(), "images.yaml")
	if err := os.WriteFile(cfg, []byte("sandboxImage: none\narchiveDir: "+filepath.Dir(file)+"\nimages: []\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "once", "--config", cfg, "--cri-endpoint", ctrd.Endpoint)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("preloader once: %v\n%s", err, out)
	}
	return time.Since(start)
}

// discard stops containerd and frees its gigabyte of snapshots now rather
// than when the benchmark ends; the harness's cleanup then finds nothing.
func discard(ctrd *harness.Containerd) {
	ctrd.Stop()
	os.RemoveAll(ctrd.Dir)
}
