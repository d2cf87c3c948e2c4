package preload_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
)

// A run pins what is present of its list, not what failed.
func TestRunPins(t *testing.T) {
	const present, pulled, missing = "registry.example/present:1", "registry.example/pulled:1", "registry.example/missing:1"
	for _, pin := range []bool{true, false} {
		s := critest.Start(t)
		s.Add(present, 1)
		s.Pull = func(_ context.Context, ref string, _ *runtimeapi.AuthConfig) error {
			if ref == missing {
				return critest.Errorf("not found")
			}
			return nil
		}
		cfg := testConfig()
		cfg.Pin = pin
		e := &preload.Engine{Store: noderuntime.WithContainerd(connect(t, s), critest.NewContainerd(s)), MaxAttempts: 1, Owner: "once:/etc/images.yaml"}
		if _, err := e.Run(context.Background(), cfg, images(present, pulled, missing)); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{present, pulled} {
			if got := pinnedInCRI(t, s, n); got != pin {
				t.Errorf("pin: %v: %s pinned %v", pin, n, got)
			}
		}
	}
}

// Pins belong to the config that set them: a run lets go only of its own,
// and an image stays pinned while any config holds a pin on it.
func TestPinOwners(t *testing.T) {
	const (
		a, b, c = "registry.example/a:1", "registry.example/b:1", "registry.example/c:1"
		d, adm  = "registry.example/d:1", "registry.example/admin:1"
		ownerA  = "once:/etc/preloader/images.yaml"
		ownerB  = "once:/root/other.yaml"
	)
	type pins struct{ Pinned, Unpinned, StillPinnedByOthers []string }
	steps := []struct {
		name   string
		owner  string
		pin    bool
		images []string
		want   []string // pinned after the run, of a, b, c, d, admin
		log    *pins    // the run's "pins changed"; nil: none
	}{
		{"A pins a and b", ownerA, true, []string{a, b},
			[]string{a, b, adm}, &pins{Pinned: []string{a, b}}},
		{"B pins b and c: a stays A's", ownerB, true, []string{b, c},
			[]string{a, b, c, adm}, &pins{Pinned: []string{b, c}}},
		{"B again: nothing changes", ownerB, true, []string{b, c},
			[]string{a, b, c, adm}, nil},
		{"A drops b: B still holds it", ownerA, true, []string{a},
			[]string{a, b, c, adm}, &pins{StillPinnedByOthers: []string{b}}},
		{"A with pin: false: only a comes off", ownerA, false, []string{a},
			[]string{b, c, adm}, &pins{Unpinned: []string{a}}},
		{"B lists the admin's image: not B's to hold", ownerB, true, []string{b, c, adm},
			[]string{b, c, adm}, nil},
		{"B with pin: false: its own come off, the admin's stays", ownerB, false, []string{b, c, adm},
			[]string{adm}, &pins{Unpinned: []string{b, c}}},
		{"no owner pins d", "", true, []string{d},
			[]string{d, adm}, &pins{Pinned: []string{d}}},
		{"no owner never unpins", "", false, []string{d},
			[]string{d, adm}, nil},
		{"A pins d beside the pin without owner", ownerA, true, []string{d},
			[]string{d, adm}, &pins{Pinned: []string{d}}},
		{"A lets go: d stays pinned", ownerA, false, nil,
			[]string{d, adm}, &pins{StillPinnedByOthers: []string{d}}},
	}
	s := critest.Start(t)
	for _, n := range []string{a, b, c, d, adm} {
		s.Add(n, 1)
	}
	ctrd := critest.NewContainerd(s)
	ctrd.PinByHand(adm)
	for _, st := range steps {
		var logs bytes.Buffer
		cfg := testConfig()
		cfg.Pin = st.pin
		e := &preload.Engine{
			Store: noderuntime.WithContainerd(connect(t, s), ctrd), MaxAttempts: 1, Owner: st.owner,
			Log: slog.New(slog.NewJSONHandler(&logs, nil)),
		}
		if _, err := e.Run(context.Background(), cfg, images(st.images...)); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		for _, n := range []string{a, b, c, d, adm} {
			if got, want := pinnedInCRI(t, s, n), slices.Contains(st.want, n); got != want {
				t.Errorf("%s: %s pinned %v, want %v", st.name, n, got, want)
			}
		}
		var got *pins
		for line := range strings.Lines(logs.String()) {
			var rec struct {
				Msg string `json:"msg"`
				pins
			}
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("%s: log line %q: %v", st.name, line, err)
			}
			if rec.Msg == "pins changed" {
				got = &rec.pins
			}
		}
		switch {
		case got == nil && st.log == nil:
		case got == nil || st.log == nil || !slices.Equal(got.Pinned, st.log.Pinned) || !slices.Equal(got.Unpinned, st.log.Unpinned) || !slices.Equal(got.StillPinnedByOthers, st.log.StillPinnedByOthers):
			t.Errorf("%s: pins changed %+v, want %+v\n%s", st.name, got, st.log, logs.String())
		}
	}
}

// pinnedInCRI is the pinned field of CRI ImageStatus, as the kubelet reads it.
func pinnedInCRI(t *testing.T, s *critest.Server, ref string) bool {
	t.Helper()
	img, err := connect(t, s).ImageStatus(context.Background(), ref)
	if err != nil || img == nil {
		t.Fatalf("ImageStatus %s: %+v, %v", ref, img, err)
	}
	return img.Pinned
}
