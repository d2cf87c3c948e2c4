package bench

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

func compressibleLayer(b *testing.B, seed int64, size int) v1.Layer {
	dir := filepath.Join(os.Getenv("HOME"), ".cache/kube-preloader/measure")
	os.MkdirAll(dir, 0o755)
	f := filepath.Join(dir, fmt.Sprintf("layer-%d-%d.tar.gz", seed, size))
	if _, err := os.Stat(f); err == nil {
		l, err := tarball.LayerFromFile(f)
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	out, _ := os.Create(f)
	gz, _ := gzip.NewWriterLevel(out, 1)
	tw := tar.NewWriter(gz)
	tw.WriteHeader(&tar.Header{Name: "data.bin", Mode: 0o644, Size: int64(size)})
	r := rand.New(rand.NewSource(seed))
	words := []string{"tensor ", "weight ", "layer ", "cuda ", "model ", "bias ", "float16 ", "attention "}
	buf := make([]byte, 0, 1<<20)
	written := 0
	for written < size {
		buf = buf[:0]
		for len(buf) < 1<<20-64 {
			if r.Intn(3) == 0 {
				var x [8]byte
				r.Read(x[:])
				buf = append(buf, x[:]...)
			} else {
				buf = append(buf, words[r.Intn(len(words))]...)
			}
		}
		n := min(len(buf), size-written)
		tw.Write(buf[:n])
		written += n
	}
	tw.Close()
	gz.Close()
	out.Close()
	l, err := tarball.LayerFromFile(f)
	if err != nil {
		b.Fatal(err)
	}
	return l
}

func BenchmarkZZMeasure(b *testing.B) {
	bin, _ := filepath.Abs(preloaderBin)
	crictl := crictlPath()
	reg := harness.StartRegistry(b, harness.RegistryOptions{})
	img := empty.Image
	for i, sz := range []int{512 << 20, 100 << 20, 80 << 20, 40 << 20, 24 << 20} {
		var err error
		img, err = mutate.AppendLayers(img, compressibleLayer(b, int64(i), sz))
		if err != nil {
			b.Fatal(err)
		}
	}
	ref := reg.Host + "/ai/model:1"
	r, _ := name.ParseReference(ref, name.Insecure)
	if err := remote.Write(r, img, remote.WithTransport(reg.Transport())); err != nil {
		b.Fatal(err)
	}
	proxy := harness.StartProxy(b, reg.Host, harness.ProxyOptions{Latency: 25 * time.Millisecond, BytesPerSec: 20 << 20})
	pref := strings.Replace(ref, reg.Host, proxy.Host, 1)
	settings := strings.Split(os.Getenv("MEASURE_SETTINGS"), ";")
	for round := 0; round < 2; round++ {
		if round == 0 || os.Getenv("MEASURE_CRICTL2") != "" {
			fmt.Printf("crictl: %v\n", crictlPulls(b, crictl, harness.Containerd2, []string{pref}).Round(10*time.Millisecond))
		}
		if round == 0 {
			fmt.Printf("crictl unlimited: %v\n", crictlPulls(b, crictl, harness.Containerd2, []string{ref}).Round(10*time.Millisecond))
		}
		for _, s := range settings {
			os.Setenv("PRELOADER_RANGE_TMP", s)
			run := preloaderOnce(b, bin, harness.Containerd2, []string{pref}, "pullVia: containerd\ndiskBudget: none\n")
			fmt.Printf("setting %s: %v rss %.1f MiB cpu %v\n", s, run.took.Round(10*time.Millisecond), float64(run.peakRSS)/(1<<20), run.cpu.Round(10*time.Millisecond))
		}
	}
	_ = exec.Command
	_ = bytes.MinRead
	_ = io.EOF
	_ = noderuntime.ContainerdConfigEnv
}
