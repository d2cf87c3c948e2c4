package credprovider

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A run's Gate runs a failing plugin once per image, however often the
// engine asks, and blocks the image's references; the next run asks
// again.
func TestGateAsksOncePerRun(t *testing.T) {
	ps, dir := setup(t, Provider{Name: "p", MatchImages: []string{"reg.io"}, Env: []EnvVar{{"PLUGIN_MODE", "crash"}}})
	for run := 1; run <= 2; run++ {
		g := ps.Gate(context.Background(), nil)
		for range 3 {
			if auths := g.Auth("reg.io/a:1", "", "reg.io/a:1", "mirror.io/a:1"); len(auths) != 0 {
				t.Fatalf("run %d: %d credentials from a failing plugin", run, len(auths))
			}
		}
		for _, ref := range []string{"reg.io/a:1", "mirror.io/a:1"} {
			var e *Error
			if err := g.Err(ref); !errors.As(err, &e) || e.Kind != Crashed {
				t.Errorf("run %d: Err(%s) = %v, want the plugin's failure", run, ref, err)
			}
		}
		if n := runs(t, dir); n != run {
			t.Errorf("after run %d the plugin ran %d times, want %d", run, n, run)
		}
	}
}

// An image's second lookup in a run, while its first still runs (the
// engine sizes layers, then pulls), waits for the first: a hanging plugin
// costs its timeout once.
func TestGateWaitsForTheRunningLookup(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ps, dir := setup(t, Provider{Name: "p", MatchImages: []string{"reg.io"}, Env: []EnvVar{{"PLUGIN_MODE", "hang"}, {"PLUGIN_FIFO", fifo}}})
	ps.providers[0].opts.Timeout = 300 * time.Millisecond
	g := ps.Gate(t.Context(), nil)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { g.Auth("reg.io/a:1", "", "reg.io/a:1") })
	}
	wg.Wait()
	var e *Error
	if err := g.Err("reg.io/a:1"); !errors.As(err, &e) || e.Kind != TimedOut {
		t.Errorf("Err = %v, want the plugin's timeout", err)
	}
	if n := runs(t, dir); n != 1 {
		t.Errorf("the plugin ran %d times, want 1", n)
	}
}
