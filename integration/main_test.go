// Package integration tests kube-preloader against real components started
// on 127.0.0.1: containerd with its CRI plugin, the distribution registry,
// kube-apiserver and etcd. See integration/harness.
package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// preloaderBin is the binary under test, built once by TestMain exactly as
// users build it.
var preloaderBin string

func TestMain(m *testing.M) {
	// The harness keeps its runtimes' images under /tmp.
	if err := harness.CheckDiskBudget("/tmp"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "preloader-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	preloaderBin, err = harness.BuildPreloader(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run is one invocation of the binary: what a user sees.
type run struct {
	code           int
	stdout, stderr string
}

func (r run) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", r.code, r.stdout, r.stderr)
}

func preloader(t *testing.T, timeout time.Duration, env []string, args ...string) run {
	t.Helper()
	return runPreloader(t, timeout, env, preloaderBin, args...)
}

// runPreloader runs the preloader through name, a program that execs it
// in its place (harness.WithHosts), or name itself when that is the
// preloader.
func runPreloader(t *testing.T, timeout time.Duration, env []string, name string, args ...string) run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := run{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.code = ee.ExitCode()
	default:
		t.Fatalf("preloader %v: %v\n%s", args, err, r)
	}
	return r
}
