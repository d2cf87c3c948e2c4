package main

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestBuildAndPush builds the image around a small static binary, pushes it
// to a plain-HTTP registry on 127.0.0.1 and reads it back.
func TestBuildAndPush(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hello\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() { println(\"hello\") }\n"), 0o644)
	bin := filepath.Join(dir, "hello")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/kube-preloader/preloader:test"

	var out bytes.Buffer
	args := []string{"--image", ref, "--binary", bin, "--version", "v9.9.9", "--revision", "abc123", "--arch", runtime.GOARCH}
	if err := run(context.Background(), args, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "pushed "+ref+"@sha256:") {
		t.Fatalf("output %q", out.String())
	}
	r, _ := name.ParseReference(ref, name.Insecure)
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/preloader" ||
		cf.Config.Labels["org.opencontainers.image.version"] != "v9.9.9" || cf.Config.Labels["org.opencontainers.image.revision"] != "abc123" {
		t.Fatalf("config: %+v", cf)
	}
	files := map[string]*tar.Header{}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	var binData []byte
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
	if h := files["preloader"]; h == nil || h.Mode&0o777 != 0o755 || h.Uid != 0 || !bytes.Equal(binData, want) {
		t.Fatalf("/preloader: %+v", h)
	}
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil && files["etc/ssl/certs/ca-certificates.crt"] == nil {
		t.Fatalf("no CA bundle in %v", files)
	}

	// Reproducible: the same inputs push the same digest.
	d1, _ := img.Digest()
	out.Reset()
	if err := run(context.Background(), append(args[2:], "--image", host+"/kube-preloader/preloader:again"), &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), d1.String()) {
		t.Fatalf("second build %q, want digest %s", out.String(), d1)
	}
}
