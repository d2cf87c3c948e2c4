package preload_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/reference"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// containerd2 is a containerd 2.x node whose registries answer in the
// times of answers (an error where it names none).
type containerd2 struct {
	noderuntime.Store
	answers map[string]time.Duration
	layers  map[string]int64 // ref -> its largest layer, compressed
	ranges  bool             // the CRI's concurrent_layer_fetch_buffer is on

	mu    sync.Mutex
	asked []string
}

func (s *containerd2) Facts() noderuntime.Facts {
	limits := noderuntime.CRIPullLimits{Known: true, Downloads: 3}
	if s.ranges {
		limits.FetchBuffer = 16 << 20
	}
	return noderuntime.Facts{Name: "containerd", Version: "2.4.2", CRIPull: limits}
}

func (s *containerd2) LargestLayer(_ context.Context, ref string, _ *runtimeapi.AuthConfig) (int64, error) {
	n, ok := s.layers[ref]
	if !ok {
		return 0, errors.New("manifest unknown")
	}
	return n, nil
}

func (s *containerd2) RegistryNear(_ context.Context, ref string, d time.Duration) (bool, time.Duration, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return false, 0, err
	}
	host := reference.Domain(named)
	s.mu.Lock()
	s.asked = append(s.asked, host)
	s.mu.Unlock()
	took, ok := s.answers[host]
	if !ok {
		return false, 0, errors.New("connection refused")
	}
	return took <= d, took, nil
}

// On containerd 2.x, pullVia auto pulls through the CRI when every
// registry of the images to pull answers within 5 ms, else with
// containerd's client; each registry is timed once, mirrors and present
// images not at all.
func TestRunAutoByRegistryAnswer(t *testing.T) {
	tests := []struct {
		name    string
		answers map[string]time.Duration
		via     string
		why     string
	}{
		{"near", map[string]time.Duration{"near.example": time.Millisecond, "lan.example": 2 * time.Millisecond}, config.PullViaCRI,
			`why="pullVia auto: registry lan.example answers in 2ms, within 5ms: containerd's CRI pulls keep the node busy at less CPU"`},
		{"one far", map[string]time.Duration{"near.example": time.Millisecond, "lan.example": 30 * time.Millisecond}, config.PullViaContainerd,
			`why="pullVia auto: containerd 2.4.2: its CRI pulls share 3 download slots on the node; registry lan.example answers in more than 5ms"`},
		{"cannot be timed", map[string]time.Duration{"near.example": time.Millisecond}, config.PullViaContainerd,
			`registry lan.example: connection refused"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			s.Add("near.example/present:1", 1)
			store := &containerd2{Store: noderuntime.WithContainerd(connect(t, s), critest.NewContainerd(s)), answers: tt.answers}
			var logs bytes.Buffer
			e := &preload.Engine{Store: store, Log: slog.New(slog.NewTextHandler(&logs, nil))}
			imgs := images("near.example/a:1", "lan.example/b:1", "near.example/c:1", "near.example/present:1")
			imgs = append(imgs, config.Image{Ref: "far.example/m:1", Name: "far.example/m:1", Mirror: "near.example"})
			results, err := e.Run(context.Background(), testConfig(), imgs)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range results[:3] {
				if r.Status != preload.StatusPulled || r.Via != tt.via {
					t.Errorf("%s: %s via %q, want pulled via %s", r.Image, r.Status, r.Via, tt.via)
				}
			}
			if !strings.Contains(logs.String(), `msg="pull path" via=`+tt.via) || !strings.Contains(logs.String(), tt.why) {
				t.Errorf("pull path not via %s saying %s:\n%s", tt.via, tt.why, logs.String())
			}
			if want := "near.example lan.example"; strings.Join(store.asked, " ") != want {
				t.Errorf("timed %v, want %s", store.asked, want)
			}
		})
	}
}

// From a near registry, pullVia auto pulls with containerd's client when
// an image to pull has a layer of 64 MiB or more, which the client
// fetches as parallel ranges, unless the CRI fetches ranges too; the pull
// path line says which image and layer decided.
func TestRunAutoByLayerSize(t *testing.T) {
	near := map[string]time.Duration{"near.example": time.Millisecond}
	tests := []struct {
		name   string
		layers map[string]int64
		ranges bool
		via    string
		why    string
	}{
		{"small layers", map[string]int64{"near.example/a:1": 12 << 20, "near.example/b:1": 63 << 20}, false, config.PullViaCRI,
			`why="pullVia auto: registry near.example answers in 1ms, within 5ms: containerd's CRI pulls keep the node busy at less CPU"`},
		{"one big layer", map[string]int64{"near.example/a:1": 12 << 20, "near.example/b:1": 512 << 20}, false, config.PullViaContainerd,
			`why="pullVia auto: registry near.example answers in 1ms, within 5ms, but near.example/b:1 has a layer of 512 MiB: containerd's client fetches it as parallel ranges, the CRI over one connection (its concurrent_layer_fetch_buffer is off)"`},
		{"exactly 64 MiB", map[string]int64{"near.example/a:1": 64 << 20, "near.example/b:1": 1 << 20}, false, config.PullViaContainerd,
			`but near.example/a:1 has a layer of 64 MiB`},
		{"manifest unreadable", map[string]int64{"near.example/a:1": 1 << 20}, false, config.PullViaCRI,
			`within 5ms: containerd's CRI pulls keep the node busy`},
		{"the CRI fetches ranges", map[string]int64{"near.example/a:1": 12 << 20, "near.example/b:1": 512 << 20}, true, config.PullViaCRI,
			`within 5ms: containerd's CRI pulls keep the node busy`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			store := &containerd2{Store: noderuntime.WithContainerd(connect(t, s), critest.NewContainerd(s)), answers: near, layers: tt.layers, ranges: tt.ranges}
			var logs bytes.Buffer
			e := &preload.Engine{Store: store, Log: slog.New(slog.NewTextHandler(&logs, nil))}
			results, err := e.Run(context.Background(), testConfig(), images("near.example/a:1", "near.example/b:1"))
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range results {
				if r.Status != preload.StatusPulled || r.Via != tt.via {
					t.Errorf("%s: %s via %q, want pulled via %s", r.Image, r.Status, r.Via, tt.via)
				}
			}
			if !strings.Contains(logs.String(), `msg="pull path" via=`+tt.via) || !strings.Contains(logs.String(), tt.why) {
				t.Errorf("pull path not via %s saying %s:\n%s", tt.via, tt.why, logs.String())
			}
		})
	}
}

// pullVia auto sizes the layers of the images to pull without waiting
// for a credential lookup that hangs (a plugin's, up to its minute): the
// other images are pulled meanwhile.
func TestRunAutoLayerSizesDoNotWaitForALookup(t *testing.T) {
	defer preload.SetLayerSizing(100 * time.Millisecond)()
	s := critest.Start(t)
	store := &containerd2{Store: noderuntime.WithContainerd(connect(t, s), critest.NewContainerd(s)),
		answers: map[string]time.Duration{"near.example": time.Millisecond},
		layers:  map[string]int64{"near.example/a:1": 1 << 20, "near.example/b:1": 1 << 20}}
	var waited atomic.Bool
	e := &preload.Engine{Store: store, Auth: func(img config.Image) []*runtimeapi.AuthConfig {
		if img.Name != "near.example/a:1" {
			return nil
		}
		// a's lookup ends once the other image is pulled.
		for deadline := time.Now().Add(10 * time.Second); s.Calls("PullImage") == 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				waited.Store(true)
				break
			}
		}
		return nil
	}}
	results, err := e.Run(context.Background(), testConfig(), images("near.example/a:1", "near.example/b:1"))
	if err != nil {
		t.Fatal(err)
	}
	if waited.Load() {
		t.Errorf("b was not pulled while a's credential lookup hung")
	}
	for _, r := range results {
		if r.Status != preload.StatusPulled {
			t.Errorf("%s: %s, want pulled", r.Image, r.Status)
		}
	}
}
