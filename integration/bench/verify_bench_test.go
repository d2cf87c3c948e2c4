package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	digest "github.com/opencontainers/go-digest"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/signature"
	"github.com/kube-preloader/kube-preloader/signature/signaturetest"
)

// verifyImages is the verify benchmark's bundle: ten images on a shared
// 8 MiB base, 4 MiB of their own each (48 MiB in all), small enough that
// the signature check's fixed cost per image weighs as much as it ever
// does against the import.
const verifyImages = 10

// BenchmarkArchiveVerify imports one ten-image OCI layout bundle that
// carries a cosign signature for each image into a fresh containerd 2.4.2
// each round, with `preloader once` and verify (the bundle's signing key)
// and without, rounds alternating, and reports verification's share of
// the import (ratio of medians, minus one).
func BenchmarkArchiveVerify(b *testing.B) {
	bin := preloaderPath(b)
	signer := signaturetest.NewKey(b)
	key := signer.Public
	layer := func(seed uint64, size int, text bool) v1.Layer {
		l, err := archivetest.Layer(seed, size, text)
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	base := []v1.Layer{layer(1, 4<<20, false), layer(2, 4<<20, true)}
	var imgs []archivetest.Image
	var sigs []archivetest.Signature
	for i := range verifyImages {
		img, err := archivetest.NewImage("linux/"+runtime.GOARCH, append(base[:len(base):len(base)], layer(uint64(100+i), 2<<20, false), layer(uint64(200+i), 2<<20, true))...)
		if err != nil {
			b.Fatal(err)
		}
		repo := fmt.Sprintf("registry.example/bench/app%d", i)
		imgs = append(imgs, archivetest.Image{Names: []string{repo + ":1"}, Image: img})
		d, err := img.Digest()
		if err != nil {
			b.Fatal(err)
		}
		sig := signer.SignImage(b, repo, digest.Digest(d.String()))
		sigs = append(sigs, archivetest.Signature{Name: repo + ":" + signature.Tag(digest.Digest(d.String()), "sig"), Payload: sig.Payload, Base64: sig.Base64})
	}
	var buf bytes.Buffer
	if err := archivetest.WriteSigned(&buf, imgs, sigs); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bundle.tar"), buf.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
	fmt.Printf("verify bundle: %d images, %.1f MiB\n", verifyImages, float64(buf.Len())/(1<<20))
	buf = bytes.Buffer{}

	var plain, verified, checks, imports []time.Duration
	for range importRounds {
		took, _ := verifyImport(b, bin, dir, "")
		plain = append(plain, took)
		took, log := verifyImport(b, bin, dir, key)
		verified = append(verified, took)
		// The same run's own account: the signature check, and the whole
		// import of the archive it is part of (open, inspect, check,
		// write), which the machine's other load slows alike.
		checks = append(checks, logSeconds(b, log, "signatures checked"))
		imports = append(imports, logSeconds(b, log, "imported"))
	}
	mp, mv := median(plain), median(verified)
	var shares []time.Duration // in millionths, for median
	for i := range checks {
		shares = append(shares, time.Duration(1e6*checks[i].Seconds()/imports[i].Seconds()))
	}
	share := float64(median(shares)) / 1e4
	b.ReportMetric(mp.Seconds(), "import-s")
	b.ReportMetric(mv.Seconds(), "verified-s")
	b.ReportMetric(share, "verify-%")
	fmt.Printf("import of %d signed images: the signature check takes %.2f%% of the import in the same run (target <= 5%%; median of %d; checks %v of imports %v)\n",
		verifyImages, share, importRounds, checks, imports)
	fmt.Printf("import of %d signed images, whole runs: without verify %s, with verify %s (%+.1f%%, medians of %d; rounds %v vs %v; the machine's load moves these more than the check does)\n",
		verifyImages, mp.Round(time.Millisecond), mv.Round(time.Millisecond), 100*(mv.Seconds()/mp.Seconds()-1), importRounds, plain, verified)
}

// logSeconds is the seconds= of the log line with message msg.
func logSeconds(b *testing.B, log, msg string) time.Duration {
	b.Helper()
	for line := range strings.Lines(log) {
		if !strings.Contains(line, "msg=\""+msg+"\"") && !strings.Contains(line, "msg="+msg+" ") {
			continue
		}
		_, rest, ok := strings.Cut(line, " seconds=")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			b.Fatalf("%q: %v", line, err)
		}
		return time.Duration(f * float64(time.Second))
	}
	b.Fatalf("no %q with seconds in the log:\n%s", msg, log)
	return 0
}

// verifyImport runs `preloader once` on archiveDir dir against a fresh
// containerd 2.4.2, with verify by key unless key is "", checks that
// every image was imported, and returns how long it took and its output.
func verifyImport(b *testing.B, bin, dir, key string) (time.Duration, string) {
	b.Helper()
	ctrd := harness.StartContainerd(b, harness.ContainerdOptions{Flavor: harness.Containerd2})
	defer discard(ctrd)
	cfg := "sandboxImage: none\narchiveDir: " + dir + "\nimages: []\n"
	if key != "" {
		cfg += "verify: {keys: [" + key + "]}\n"
	}
	path := filepath.Join(b.TempDir(), "images.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "once", "--config", path, "--cri-endpoint", ctrd.Endpoint)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil || strings.Count(string(out), " imported ") != verifyImages {
		b.Fatalf("preloader once (verify key %q): %v\n%s", key, err, out)
	}
	return took, string(out)
}

// BenchmarkVerifyPull pulls ten signed images from a registry (TLS, basic
// auth) through containerd 2.4.2's CRI, fresh each round, three ways:
// plainly; with a verifier of containerd's image verifier plugin
// (io.containerd.image-verifier.v1.bindir) that only reads its input and
// allows (the floor of any verifier: one process per pull); and with the
// preloader's verify (the tag's digest, its .sig and payload fetched with
// the pull's credentials, checked in process). It reports each way's
// median against the plain pull.
func BenchmarkVerifyPull(b *testing.B) {
	bin := preloaderPath(b)
	reg := harness.StartRegistry(b, harness.RegistryOptions{Username: "bench", Password: "bench-secret", TLS: true})
	var specs []harness.ImageSpec
	for i := range verifyImages {
		specs = append(specs, harness.ImageSpec{Repo: fmt.Sprintf("bench/signed%d", i), Tag: "1", BaseLayers: 1, BaseLayerSize: 1 << 20, OwnLayers: 2, LayerSize: 1 << 20})
	}
	imgs := harness.PushTestImages(b, reg, specs)
	key := harness.NewCosignKey(b)
	var refs []string
	for _, img := range imgs {
		harness.CosignSign(b, reg, key, img.DigestRef)
		refs = append(refs, img.Ref)
	}
	dir := b.TempDir()
	creds := filepath.Join(dir, "config.json")
	if err := os.WriteFile(creds, []byte(harness.DockerConfigJSON(reg.Host, reg.Username, reg.Password)), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg := "sandboxImage: none\npullVia: cri\nimages:\n"
	for _, r := range refs {
		cfg += "  - image: " + r + "\n"
	}
	ways := []struct {
		name     string
		verifier bool
		config   string
	}{
		{"plain", false, cfg},
		{"verifier-plugin", true, cfg},
		{"preloader-verify", false, cfg + "verify: {keys: [" + key.Public + "]}\n"},
	}
	times := make([][]time.Duration, len(ways))
	for range pullRounds {
		for i, w := range ways {
			ctrd := harness.StartContainerd(b, harness.ContainerdOptions{Flavor: harness.Containerd2})
			reg.TrustIn(ctrd)
			if w.verifier {
				// Where the harness's containerd config points bin_dir.
				vdir := filepath.Join(ctrd.Dir, "verifiers")
				if err := os.MkdirAll(vdir, 0o755); err != nil {
					b.Fatal(err)
				}
				script := "#!/bin/sh\ncat >/dev/null\necho call >> " + filepath.Join(ctrd.Dir, "verifier-calls") + "\necho allowed\n"
				if err := os.WriteFile(filepath.Join(vdir, "allow"), []byte(script), 0o755); err != nil {
					b.Fatal(err)
				}
			}
			path := filepath.Join(b.TempDir(), "images.yaml")
			if err := os.WriteFile(path, []byte(w.config), 0o644); err != nil {
				b.Fatal(err)
			}
			cmd := exec.Command(bin, "once", "--config", path, "--docker-config", creds)
			cmd.Env = append(os.Environ(), cri.EndpointEnv+"="+ctrd.Endpoint)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			times[i] = append(times[i], time.Since(start))
			if err != nil || strings.Count(string(out), " pulled ") != verifyImages {
				b.Fatalf("%s: preloader once: %v\n%s", w.name, err, out)
			}
			if w.verifier {
				calls, _ := os.ReadFile(filepath.Join(ctrd.Dir, "verifier-calls"))
				if n := strings.Count(string(calls), "call"); n != verifyImages {
					b.Fatalf("%s: the verifier ran %d times, want once per pull (%d)", w.name, n, verifyImages)
				}
			}
			discard(ctrd)
		}
	}
	plain := median(times[0])
	for i, w := range ways {
		m := median(times[i])
		b.ReportMetric(m.Seconds(), w.name+"-s")
		fmt.Printf("pull of %d signed images through the CRI, %s: %s (%+.1f%% against plain; median of %d; rounds %v)\n",
			verifyImages, w.name, m.Round(time.Millisecond), 100*(m.Seconds()/plain.Seconds()-1), pullRounds, times[i])
	}
}
