package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	indexMediaType = "application/vnd.oci.image.index.v1+json"
	testEpoch      = "1700000000"
	testCreated    = "2023-11-14T22:13:20Z"
)

func TestParsePlatforms(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: "linux/amd64,linux/arm64", want: []string{"linux/amd64", "linux/arm64"}},
		{in: " linux/arm64 ", want: []string{"linux/arm64"}},
		{in: "linux/arm", want: []string{"linux/arm/v7"}},
		{in: "linux/arm/v6,linux/arm64/v8", want: []string{"linux/arm/v6", "linux/arm64/v8"}},
		{in: "", wantErr: "none given"},
		{in: "windows/amd64", wantErr: "only linux"},
		{in: "linux/mips", wantErr: "unsupported architecture"},
		{in: "linux/amd64/v3", wantErr: "not supported"},
		{in: "linux/amd64,linux/amd64", wantErr: "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ps, err := parsePlatforms(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range ps {
				got = append(got, p.String())
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCheckBinary(t *testing.T) {
	amd64 := buildHello(t, "amd64")
	notELF := filepath.Join(t.TempDir(), "script")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755)
	tests := []struct {
		name    string
		file    string
		arch    string
		wantErr string
	}{
		{name: "static amd64", file: amd64, arch: "amd64"},
		{name: "wrong machine", file: amd64, arch: "arm64", wantErr: "want EM_AARCH64"},
		{name: "not ELF", file: notELF, arch: "amd64", wantErr: "not an ELF"},
	}
	// A distribution's shell is dynamically linked: what CGO_ENABLED=1 or a
	// wrong --binary would give.
	if f, err := elf.Open("/bin/sh"); err == nil {
		if a := goarchOf(f.Machine); a != "" {
			tests = append(tests, struct{ name, file, arch, wantErr string }{"dynamic", "/bin/sh", a, "PT_INTERP"})
		}
		f.Close()
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkBinary(tt.file, v1.Platform{OS: "linux", Architecture: tt.arch})
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func goarchOf(m elf.Machine) string {
	for a, em := range elfMachine {
		if em == m {
			return a
		}
	}
	return ""
}

// TestBuildAndPush assembles the index around small prebuilt static
// binaries, pushes it to an in-process plain-HTTP registry on 127.0.0.1
// and reads every manifest back: fast, no root, no real build.
func TestBuildAndPush(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", testEpoch)
	bins := map[string]string{"amd64": buildHello(t, "amd64"), "arm64": buildHello(t, "arm64")}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/kube-preloader/preloader:test"

	args := []string{"--version", "v9.9.9", "--revision", "abc123",
		"--binary", "linux/amd64=" + bins["amd64"], "--binary", "linux/arm64=" + bins["arm64"]}
	out := runOK(t, append(args, "--image", ref))
	if !strings.Contains(out, "pushed "+ref+"@sha256:") {
		t.Fatalf("output %q", out)
	}
	r, _ := name.ParseReference(ref, name.Insecure)
	idx, err := remote.Index(r)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != types.OCIImageIndex || len(im.Manifests) != 2 {
		t.Fatalf("index %+v", im)
	}
	checkAnnotations(t, "index", im.Annotations)
	for i, arch := range []string{"amd64", "arm64"} {
		desc := im.Manifests[i]
		if desc.Platform == nil || desc.Platform.String() != "linux/"+arch || desc.ArtifactType != "" {
			t.Fatalf("manifest %d: %+v", i, desc)
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		checkImage(t, img, arch, bins[arch])
	}

	// Reproducible: the same inputs push the same digest.
	d1, _ := idx.Digest()
	if out := runOK(t, append(args, "--image", host+"/kube-preloader/preloader:again")); !strings.Contains(out, d1.String()) {
		t.Fatalf("second build %q, want digest %s", out, d1)
	}
}

func checkImage(t *testing.T, img v1.Image, arch, bin string) {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	checkAnnotations(t, arch+" manifest", m.Annotations)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != arch || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/preloader" ||
		cf.Created.UTC().Format("2006-01-02T15:04:05Z") != testCreated {
		t.Fatalf("%s config: %+v", arch, cf)
	}
	checkAnnotations(t, arch+" labels", cf.Config.Labels)
	files := map[string]*tar.Header{}
	var binData []byte
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = h
		if h.Name == "preloader" {
			binData, _ = io.ReadAll(tr)
		}
	}
	want, _ := os.ReadFile(bin)
	if h := files["preloader"]; h == nil || h.Mode&0o777 != 0o755 || h.Uid != 0 || h.Gid != 0 || !bytes.Equal(binData, want) ||
		h.ModTime.UTC().Format("2006-01-02T15:04:05Z") != testCreated {
		t.Fatalf("%s /preloader: %+v", arch, h)
	}
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil && files["etc/ssl/certs/ca-certificates.crt"] == nil {
		t.Fatalf("%s: no CA bundle in %v", arch, files)
	}
}

// checkAnnotations checks the labels and annotations the tests' runs set.
func checkAnnotations(t *testing.T, what string, got map[string]string) {
	t.Helper()
	want := map[string]string{
		"org.opencontainers.image.source":   sourceURL,
		"org.opencontainers.image.title":    "preloader",
		"org.opencontainers.image.created":  testCreated,
		"org.opencontainers.image.version":  "v9.9.9",
		"org.opencontainers.image.revision": "abc123",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q (all: %v)", what, k, got[k], v, got)
		}
	}
}

func runOK(t *testing.T, args []string) string {
	t.Helper()
	var out bytes.Buffer
	if err := run(context.Background(), args, &out); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// buildHello is a tiny static linux/arch binary.
func buildHello(t *testing.T, arch string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hello\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() { println(\"hello\") }\n"), 0o644)
	bin := filepath.Join(dir, "hello-"+arch)
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return bin
}
