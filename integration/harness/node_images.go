package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// pauseSource is the pod-infra ("pause") program of the test node: it holds
// the sandbox's namespaces and exits on SIGTERM or SIGINT, like
// registry.k8s.io/pause.
const pauseSource = `package main

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
// (CGO_ENABLED=0, GOOS=linux, this GOARCH) and returns its contents.
func BuildGoBinary(t T, dir, pkg string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s in %s: %v\n%s", pkg, dir, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// BuildGoSource builds a one-file main package that imports only the
// standard library as a static binary and returns its contents.
func BuildGoSource(t T, progName, source string) []byte {
	t.Helper()
	dir := t.TempDir()
	mod := "module " + progName + "\n\ngo 1.22\n"
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, progName)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = dir
	// Its own module: not the project's go.work, flags or vendoring.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOWORK=off", "GOFLAGS=-mod=mod")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", progName, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// PauseImageSpec is an image of the pause program (pauseSource) as REPO:TAG,
// for PushTestImages.
func PauseImageSpec(t T, repo, tag string) ImageSpec {
	t.Helper()
	return ImageSpec{
		Repo:       repo,
		Tag:        tag,
		Files:      map[string][]byte{"pause": BuildGoSource(t, "pause", pauseSource)},
		Entrypoint: []string{"/pause"},
	}
}
