package preload

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

func TestNeedHow(t *testing.T) {
	for _, tc := range []struct {
		name string
		need noderuntime.DiskNeed
		want string
	}{
		{"config only", noderuntime.DiskNeed{Download: 1 << 20}, "1.0 MiB of blobs, 0.0 MiB unpacked"},
		{"all told", noderuntime.DiskNeed{Download: 10 << 20, Unpacked: 40 << 20, Layers: 2, Told: 2},
			"10.0 MiB of blobs, 40.0 MiB unpacked as its layers tell"},
		{"none told", noderuntime.DiskNeed{Download: 10 << 20, Unpacked: 20 << 20, Layers: 2},
			"10.0 MiB of blobs, 20.0 MiB unpacked, estimated at 2 times the compressed size"},
		{"some told", noderuntime.DiskNeed{Download: 10 << 20, Unpacked: 30 << 20, Layers: 5, Told: 2},
			"10.0 MiB of blobs, 30.0 MiB unpacked: told by 2 of 5 layers, the others estimated at 2 times their compressed size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := needHow(tc.need); got != tc.want {
				t.Errorf("needHow = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestReserve: an image is held back when its need passes the room left,
// with what it needs and what is free, and keeps its decision; one that
// needs nothing new is not, even past the budget.
func TestReserve(t *testing.T) {
	p := &budgetPlan{budget: config.DefaultBudget(), capacity: 100 << 20, free: 90 << 20, limit: 85 << 20, used: 10 << 20, log: slog.New(slog.DiscardHandler),
		index: map[string]int{"a": 0, "b": 1, "c": 2}, done: []chan struct{}{make(chan struct{}), make(chan struct{}), make(chan struct{})}, held: map[int]error{}}
	if err := p.reserve(t.Context(), "a", noderuntime.DiskNeed{Download: 20 << 20, Unpacked: 40 << 20, Layers: 1, Told: 1}); err != nil {
		t.Fatalf("a: %v, want room", err)
	}
	need := noderuntime.DiskNeed{Download: 6 << 20, Unpacked: 10 << 20, Layers: 1}
	err := p.reserve(t.Context(), "b", need)
	var be *budgetError
	if !errors.As(err, &be) {
		t.Fatalf("b: %v, want held back", err)
	}
	for _, want := range []string{"needs about 16.0 MiB on disk", "estimated at 2 times", "15.0 MiB is left of 100.0 MiB", "90.0 MiB was free"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
	if again := p.reserve(t.Context(), "b", noderuntime.DiskNeed{}); again != err {
		t.Errorf("second decision %v, want the first kept", again)
	}
	p.used = 90 << 20
	if err := p.reserve(t.Context(), "c", noderuntime.DiskNeed{}); err != nil {
		t.Errorf("c, which needs nothing new: %v, want room", err)
	}
}

// TestAwait: a pull through containerd's client starts only once the
// images before it are decided, so that it never asks for room, holding
// containerd's lock on its manifest, while an earlier one is undecided.
func TestAwait(t *testing.T) {
	newPlan := func() *budgetPlan {
		return &budgetPlan{budget: config.DefaultBudget(), capacity: 100 << 20, free: 90 << 20, limit: 85 << 20, log: slog.New(slog.DiscardHandler),
			index: map[string]int{"a": 0, "b": 1}, done: []chan struct{}{make(chan struct{}), make(chan struct{})}, held: map[int]error{}}
	}
	for _, tc := range []struct {
		name    string
		decided []string // images decided before the await
		want    error
	}{
		{"a", nil, nil},
		{"not in the plan", nil, nil},
		{"b", []string{"a"}, nil},
		{"b", nil, context.DeadlineExceeded},
	} {
		p := newPlan()
		for _, d := range tc.decided {
			p.settle(d)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		if err := p.await(ctx, tc.name); !errors.Is(err, tc.want) && err != tc.want {
			t.Errorf("await %s with %v decided: %v, want %v", tc.name, tc.decided, err, tc.want)
		}
		cancel()
	}
}
