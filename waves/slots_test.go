package waves

import (
	"context"
	"errors"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kube-preloader/kube-preloader/kubeapi/clientset"
)

const ns = "kube-preloader"

func fixed(slots, nodes int) Size {
	return func(context.Context) (int, int, error) { return slots, nodes, nil }
}

func newSlots(cs *fake.Clientset, id string, slots int) *Slots {
	return &Slots{
		Leases: clientset.New(cs).Leases(ns), Identity: id, Size: fixed(slots, 10),
		LeaseDuration: 3 * time.Second, RenewEvery: 100 * time.Millisecond, MinPoll: 20 * time.Millisecond,
	}
}

func lease(name, holder string, renewed time.Time) *coordinationv1.Lease {
	secs := int32(3)
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{LabelKind: KindSlot}},
		Spec:       coordinationv1.LeaseSpec{LeaseDurationSeconds: &secs},
	}
	if holder != "" {
		t := metav1.NewMicroTime(renewed)
		l.Spec.HolderIdentity, l.Spec.RenewTime = &holder, &t
	}
	return l
}

func holderOf(t *testing.T, cs *fake.Clientset, name string) string {
	t.Helper()
	l, err := cs.CoordinationV1().Leases(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return holder(l)
}

func TestAcquireTakes(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name     string
		existing []*coordinationv1.Lease
		slots    int
		want     []string // any of these
	}{
		{"no leases yet: creates one", nil, 1, []string{"preloader-slot-0"}},
		{"a released slot", []*coordinationv1.Lease{lease("preloader-slot-0", "", now)}, 1, []string{"preloader-slot-0"}},
		{"a lapsed slot", []*coordinationv1.Lease{lease("preloader-slot-0", "dead", now.Add(-time.Minute))}, 1, []string{"preloader-slot-0"}},
		{"the one still free", []*coordinationv1.Lease{lease("preloader-slot-0", "other", now)}, 2, []string{"preloader-slot-1"}},
		{"its own after a restart", []*coordinationv1.Lease{
			lease("preloader-slot-0", "", now), lease("preloader-slot-1", "me", now),
		}, 2, []string{"preloader-slot-1"}},
		{"not one beyond the count", []*coordinationv1.Lease{
			lease("preloader-slot-0", "", now), lease("preloader-slot-5", "", now),
		}, 1, []string{"preloader-slot-0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset()
			for _, l := range tc.existing {
				if _, err := cs.CoordinationV1().Leases(ns).Create(context.Background(), l, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			h, err := newSlots(cs, "me", tc.slots).Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, w := range tc.want {
				found = found || h.Name == w
			}
			if !found {
				t.Fatalf("took %s, want one of %v", h.Name, tc.want)
			}
			if got := holderOf(t, cs, h.Name); got != "me" {
				t.Errorf("holder = %q", got)
			}
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if got := holderOf(t, cs, h.Name); got != "" {
				t.Errorf("holder after release = %q, want none", got)
			}
		})
	}
}

// TestAcquireWaits: with the only slot held by a live node, Acquire waits;
// it gets the slot once the holder releases it, and a holder that stops
// renewing loses it after the lease duration.
func TestAcquireWaits(t *testing.T) {
	cs := fake.NewClientset()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := newSlots(cs, "a", 1).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}

	got := make(chan *Held, 1)
	go func() {
		h, err := newSlots(cs, "b", 1).Acquire(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- h
	}()
	select {
	case h := <-got:
		t.Fatalf("b took %s while a holds it", h.Name)
	case <-time.After(500 * time.Millisecond): // a renews meanwhile
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b := <-got
	if b == nil || holderOf(t, cs, b.Name) != "b" {
		t.Fatalf("b did not get the released slot")
	}

	// b dies without releasing: its renewals stop with its context.
	b.stop()
	<-b.done
	start := time.Now()
	c, err := newSlots(cs, "c", 1).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited > 4*time.Second {
		t.Errorf("c waited %s for a slot lapsed after 3s", waited)
	}
	if err := c.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestAcquireCanceled(t *testing.T) {
	cs := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := newSlots(cs, "a", 1).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release(context.Background())
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer wcancel()
	if _, err := newSlots(cs, "b", 1).Acquire(wctx); err == nil {
		t.Fatal("b acquired a held slot")
	}
}

func TestPollInterval(t *testing.T) {
	for _, tc := range []struct {
		nodes  int
		lo, hi time.Duration
	}{
		{1, time.Second, 3 * time.Second},          // MinPoll 2s
		{500, 50 * time.Second, 150 * time.Second}, // 500/5 = 100 s
		{100000, MaxPoll / 2, MaxPoll * 3 / 2},
	} {
		for range 50 {
			if d := pollInterval(tc.nodes, DefaultMinPoll); d < tc.lo || d >= tc.hi {
				t.Fatalf("pollInterval(%d) = %s, want in [%s, %s)", tc.nodes, d, tc.lo, tc.hi)
			}
		}
	}
}

func TestSlotIndex(t *testing.T) {
	for name, want := range map[string]int{
		"preloader-slot-0": 0, "preloader-slot-12": 12, "preloader-slot-012": -1,
		"preloader-slot--1": -1, "preloader-slot-": -1, "other": -1,
	} {
		if got := slotIndex(name); got != want {
			t.Errorf("slotIndex(%q) = %d, want %d", name, got, want)
		}
	}
}

// TestAcquireWaitsOutAPIErrors: an API server that cannot answer is
// waited out, not a reason to pull without a slot.
func TestAcquireWaitsOutAPIErrors(t *testing.T) {
	cs := fake.NewClientset()
	s := newSlots(cs, "me", 1)
	calls := 0
	s.Size = func(context.Context) (int, int, error) {
		if calls++; calls <= 2 {
			return 0, 0, errors.New("connection refused")
		}
		return 1, 1, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h, err := s.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release(ctx)
	if calls != 3 {
		t.Errorf("Size called %d times, want 3", calls)
	}
}
