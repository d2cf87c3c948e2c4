package preload_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// A sandbox image that is containerd 2.x's compiled-in default, because no
// config names one, is tried once and its failure does not count; one a
// config names is retried until the run ends and counts, as before.
func TestGuessedSandbox(t *testing.T) {
	dir := t.TempDir()
	named := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(named, []byte("version = 3\n[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"registry.k8s.io/pause:3.10.2\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		file        string
		guess       bool
		wantPresent int
		wantTotal   int
	}{
		{name: "no containerd config: a guess", file: filepath.Join(dir, "absent.toml"), guess: true, wantPresent: 1, wantTotal: 1},
		// Its retries hold the one CRI pull slot until the run ends.
		{name: "named in containerd's config", file: named, wantPresent: 0, wantTotal: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			s.Name, s.RuntimeVersion = "containerd", "2.4.2"
			s.Info = map[string]string{"config": `{"containerd":{}}`}
			s.Pull = func(_ context.Context, ref string, _ *runtimeapi.AuthConfig) error {
				if ref == "registry.k8s.io/pause:3.10.2" {
					return critest.Errorf("dial tcp: lookup registry.k8s.io: connection refused")
				}
				return nil
			}
			t.Setenv(noderuntime.ContainerdConfigEnv, tt.file)
			store := noderuntime.CRIOnly(connect(t, s))
			cfg := testConfig()
			cfg.Images = images("reg.example/app:1")
			cfg.PullVia = config.PullViaCRI
			sb, err := preload.ResolveSandbox(context.Background(), store, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if sb.Name != "registry.k8s.io/pause:3.10.2" || sb.Guess != tt.guess {
				t.Fatalf("ResolveSandbox = %+v, want guess %v", sb, tt.guess)
			}
			apply, _ := preload.Plan(cfg, nil, sb)
			// The run's end is what stops a configured sandbox's retries.
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			e := &preload.Engine{Store: store}
			res, err := e.Run(ctx, cfg, apply)
			if err != nil {
				t.Fatal(err)
			}
			r := res[0]
			if r.Image != sb.Name || r.Status != preload.StatusFailed || r.Guess != tt.guess {
				t.Errorf("sandbox result = %+v", r)
			}
			// A configured one's last attempt may end in the run's deadline.
			if tt.guess && r.Reason != failure.Unreachable {
				t.Errorf("guessed sandbox: reason %q, want %q", r.Reason, failure.Unreachable)
			}
			if tt.guess && r.Attempts != 1 {
				t.Errorf("guessed sandbox: %d attempts, want 1", r.Attempts)
			}
			if !tt.guess && r.Attempts < 2 {
				t.Errorf("configured sandbox: %d attempts, want retries until the run ends", r.Attempts)
			}
			if present, total := preload.Count(res); present != tt.wantPresent || total != tt.wantTotal {
				t.Errorf("Count = %d of %d, want %d of %d", present, total, tt.wantPresent, tt.wantTotal)
			}
		})
	}
}
