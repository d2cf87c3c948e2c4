package credprovider

import (
	"context"
	"errors"
	"testing"
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
