package preload_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
)

// failingImports fails the first imports with err, then imports.
type failingImports struct {
	*critest.Containerd
	fail  int
	err   error
	calls int
}

func (f *failingImports) Import(ctx context.Context, c *archive.Contents, imgs []archive.Image) error {
	f.calls++
	if f.calls <= f.fail {
		return f.err
	}
	return f.Containerd.Import(ctx, c, imgs)
}

func TestImportRetry(t *testing.T) {
	const a = "registry.example/a:1"
	// What the containerd client returns while containerd restarts: gRPC
	// Unavailable as an errdefs error, whose text names a connection.
	unavailable := fmt.Errorf("write blob sha256:1: %w", fmt.Errorf("connection error: desc = \"transport: Error while dialing: dial unix /run/containerd/containerd.sock: connect: connection refused\": %w", errdefs.ErrUnavailable))
	tests := []struct {
		name        string
		err         error
		fail        int
		maxAttempts int
		want        outcome
		wantCalls   int
	}{
		{"containerd restarting: retried until it answers", unavailable, 2, 0, outcome{preload.StatusImported, failure.Reason{}}, 3},
		{"containerd restarting, one attempt (the agent)", unavailable, 2, 1, outcome{preload.StatusFailed, failure.Runtime}, 1},
		{"no space: final", errors.New("write /var/lib/containerd/x: no space left on device"), 1, 0, outcome{preload.StatusFailed, failure.NoSpace}, 1},
		{"anything else: final", errors.New("unpack: invalid layer"), 1, 0, outcome{preload.StatusFailed, failure.Import}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			dir := t.TempDir()
			testArchive(t, dir, "a.tar", archivetest.OCILayout, []string{a})
			cfg := testConfig()
			cfg.ArchiveDir = dir
			ctrd := &failingImports{Containerd: critest.NewContainerd(s), fail: tt.fail, err: tt.err}
			e := &preload.Engine{Store: noderuntime.WithContainerd(connect(t, s), ctrd), MaxAttempts: tt.maxAttempts}
			results, err := e.Run(context.Background(), cfg, images(a))
			if err != nil {
				t.Fatal(err)
			}
			if got := outcomes(results)[a]; got != tt.want {
				t.Errorf("%s: %+v, want %+v", a, got, tt.want)
			}
			if ctrd.calls != tt.wantCalls {
				t.Errorf("%d imports, want %d", ctrd.calls, tt.wantCalls)
			}
		})
	}
}

// cancelingImports is containerd's stream cut by the end of the run: the
// run's context ends during the import, and the client reports what the
// broken stream said, not the context's error.
type cancelingImports struct {
	*critest.Containerd
	cancel context.CancelFunc
}

func (c *cancelingImports) Import(context.Context, *archive.Contents, []archive.Image) error {
	c.cancel()
	return errors.New("write blob sha256:1: failed to get status: error getting writer status: EOF")
}

func TestImportCutByTheRunIsCanceled(t *testing.T) {
	const a = "registry.example/a:1"
	s := critest.Start(t)
	dir := t.TempDir()
	testArchive(t, dir, "a.tar", archivetest.OCILayout, []string{a})
	cfg := testConfig()
	cfg.ArchiveDir = dir
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := &preload.Engine{Store: noderuntime.WithContainerd(connect(t, s), &cancelingImports{Containerd: critest.NewContainerd(s), cancel: cancel})}
	results, err := e.Run(ctx, cfg, images(a))
	if err != nil {
		t.Fatal(err)
	}
	if got := outcomes(results)[a]; got != (outcome{preload.StatusFailed, failure.Canceled}) {
		t.Errorf("%s: %+v, want failed, canceled", a, got)
	}
}
