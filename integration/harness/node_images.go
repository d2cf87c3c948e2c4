package harness

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// PauseSource is the pod-infra ("pause") program of the test node: it holds
// the sandbox's namespaces and exits on SIGTERM or SIGINT, like
// registry.k8s.io/pause.
const PauseSource = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
`

// BuildGoBinary builds the main package pkg (a path such as ./testdata/app,
// relative to dir, which must be inside a Go module) as a static binary
// (CGO_ENABLED=0, GOOS=linux, this GOARCH) and returns its path, in a
// directory removed when the test ends.
func BuildGoBinary(t testing.TB, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s in %s: %v\n%s", pkg, dir, err, b)
	}
	return out
}

// BuildGoSource builds a one-file main package (no imports outside the
// standard library) as a static binary and returns its path.
func BuildGoSource(t testing.TB, progName, source string) string {
	t.Helper()
	dir := t.TempDir()
	mod := "module " + progName + "\n\ngo 1.22\n"
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, progName), ".")
	cmd.Dir = dir
	// Its own module: not the project's go.work, flags or vendoring.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOWORK=off", "GOFLAGS=-mod=mod")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", progName, err, b)
	}
	return filepath.Join(dir, progName)
}

// BinaryImage is a one-layer OCI image for linux/GOARCH holding the binary
// at /NAME (NAME its base name) as its entrypoint, with empty /tmp and /etc
// and env (KEY=VALUE; different env, different digest).
func BinaryImage(binary string, env ...string) (v1.Image, error) {
	data, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	base := filepath.Base(binary)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// A fixed time keeps the digest a function of the binary alone.
	mtime := time.Unix(0, 0)
	for _, d := range []string{"tmp/", "etc/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o1777, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: base, Mode: 0o755, Size: int64(len(data)), ModTime: mtime}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: mtime}
	cf.Config.Entrypoint = []string{"/" + base}
	cf.Config.Env = append([]string{"PATH=/"}, env...)
	return mutate.ConfigFile(img, cf)
}

// PushedImage is an image in a registry.
type PushedImage struct {
	// Ref is HOST/REPO:TAG, as a pod spec would write it.
	Ref string
	// Digest is the manifest digest, sha256:...
	Digest string
}

// PushImage pushes img to ref (plain HTTP; 127.0.0.1 registries only) with
// optional basic-auth credentials.
func PushImage(t testing.TB, img v1.Image, ref, username, password string) PushedImage {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	opts := []remote.Option{remote.WithContext(context.Background())}
	if username != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: username, Password: password}))
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return PushedImage{Ref: ref, Digest: d.String()}
}

// PushPauseImage builds the pause program (PauseSource) and pushes it as
// HOST/pause:3.10.
func PushPauseImage(t testing.TB, host string) PushedImage {
	t.Helper()
	img, err := BinaryImage(BuildGoSource(t, "pause", PauseSource))
	if err != nil {
		t.Fatal(err)
	}
	return PushImage(t, img, host+"/pause:3.10", "", "")
}

// MemoryRegistry is an in-process registry (go-containerregistry's) on
// 127.0.0.1 with no authentication: a quick home for the node's own images.
type MemoryRegistry struct {
	// Host is 127.0.0.1:PORT.
	Host string
}

// StartMemoryRegistry serves an empty in-memory registry until the test ends.
func StartMemoryRegistry(t testing.TB) *MemoryRegistry {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return &MemoryRegistry{Host: l.Addr().String()}
}
