package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestIndexWithSkopeo is make image's real path: go build of the agent for
// both default platforms, pushed to the Debian docker-registry on 127.0.0.1,
// read back by skopeo, a client that shares no code with the builder. The
// second build reuses the Go build cache, so warm the test costs about two
// links per platform.
func TestIndexWithSkopeo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent twice for two platforms")
	}
	skopeo := lookPath("skopeo", "/usr/bin/skopeo")
	harness.Require(t, "skopeo", skopeo)
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	t.Setenv("SOURCE_DATE_EPOCH", testEpoch)
	args := []string{"--version", "v9.9.9", "--revision", "abc123"}
	refA, refB := reg.Host+"/preloader:a", reg.Host+"/preloader:b"
	digestA := pushedDigest(t, runOK(t, append(args, "--image", refA)))

	raw := skopeoRun(t, skopeo, "inspect", "--raw", "docker://"+refA)
	if d := "sha256:" + sha256Hex(raw); d != digestA {
		t.Fatalf("index digest %s, imagebuild said %s", d, digestA)
	}
	checkIndexJSON(t, raw)

	var cfg struct {
		Architecture, Os string
		Labels           map[string]string
	}
	decode(t, skopeoRun(t, skopeo, "inspect", "--override-arch", "arm64", "docker://"+refA), &cfg)
	if cfg.Architecture != "arm64" || cfg.Os != "linux" {
		t.Fatalf("skopeo inspect --override-arch arm64: %s/%s", cfg.Os, cfg.Architecture)
	}
	checkAnnotations(t, "arm64 labels (skopeo)", cfg.Labels)

	for arch, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		checkBinaryViaSkopeo(t, skopeo, refA, arch, machine)
	}

	// Reproducible: the same tree, version, revision and epoch give the
	// same index, byte for byte.
	if digestB := pushedDigest(t, runOK(t, append(args, "--image", refB))); digestB != digestA {
		t.Fatalf("second build pushed %s, first %s", digestB, digestA)
	}
	if rawB := skopeoRun(t, skopeo, "inspect", "--raw", "docker://"+refB); !bytes.Equal(rawB, raw) {
		t.Fatalf("second index differs:\n%s\n%s", raw, rawB)
	}
}

func checkIndexJSON(t *testing.T, raw []byte) {
	t.Helper()
	var idx struct {
		MediaType string
		Manifests []struct {
			MediaType string
			Platform  struct{ Architecture, OS string }
		}
		Annotations map[string]string
	}
	decode(t, raw, &idx)
	var plats []string
	for _, m := range idx.Manifests {
		if m.MediaType != "application/vnd.oci.image.manifest.v1+json" {
			t.Errorf("manifest media type %q", m.MediaType)
		}
		plats = append(plats, m.Platform.OS+"/"+m.Platform.Architecture)
	}
	if idx.MediaType != indexMediaType || strings.Join(plats, ",") != "linux/amd64,linux/arm64" {
		t.Fatalf("index: mediaType %q platforms %v\n%s", idx.MediaType, plats, raw)
	}
	checkAnnotations(t, "index (skopeo)", idx.Annotations)
}

// checkBinaryViaSkopeo copies arch's image out of the index with skopeo and
// checks the /preloader in its layers: an ELF for machine, static (no
// PT_INTERP: scratch has no loader), root-owned, 0755.
func checkBinaryViaSkopeo(t *testing.T, skopeo, ref, arch string, machine elf.Machine) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), arch)
	skopeoRun(t, skopeo, "copy", "--quiet", "--src-tls-verify=false", "--override-arch", arch, "docker://"+ref, "dir:"+dir)
	var m struct{ Layers []struct{ Digest string } }
	manifest, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	decode(t, manifest, &m)
	var bin []byte
	for _, l := range m.Layers {
		if b := fileFromLayer(t, filepath.Join(dir, strings.TrimPrefix(l.Digest, "sha256:")), "preloader"); b != nil {
			bin = b
		}
	}
	if bin == nil {
		t.Fatalf("%s: no /preloader in layers %v", arch, m.Layers)
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("%s /preloader: %v", arch, err)
	}
	if f.Machine != machine {
		t.Errorf("%s /preloader: ELF machine %s, want %s", arch, f.Machine, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s /preloader: dynamically linked (PT_INTERP)", arch)
		}
	}
}

// fileFromLayer returns name's content in the gzipped tar blob, nil when
// the layer lacks it; a header other than root 0755 fails the test.
func fileFromLayer(t *testing.T, blob, name string) []byte {
	t.Helper()
	f, err := os.Open(blob)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", blob, err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			t.Fatalf("%s: %v", blob, err)
		}
		if h.Name != name {
			continue
		}
		if h.Uid != 0 || h.Gid != 0 || h.Mode&0o777 != 0o755 {
			t.Errorf("%s: uid %d gid %d mode %o", name, h.Uid, h.Gid, h.Mode)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

func skopeoRun(t *testing.T, skopeo string, args ...string) []byte {
	t.Helper()
	// inspect takes --tls-verify, copy --src-tls-verify: both registries
	// here are plain HTTP on loopback.
	if args[0] == "inspect" {
		args = append([]string{args[0], "--tls-verify=false"}, args[1:]...)
	}
	cmd := exec.Command(skopeo, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

var pushedRE = regexp.MustCompile(`pushed \S+@(sha256:[0-9a-f]{64})`)

func pushedDigest(t *testing.T, out string) string {
	t.Helper()
	m := pushedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no pushed digest in %q", out)
	}
	return m[1]
}

func decode(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// lookPath finds bin on PATH, else def (reported missing by
// harness.Require, which fails under CI=true).
func lookPath(bin, def string) string {
	if p, err := exec.LookPath(bin); err == nil {
		return p
	}
	return def
}
