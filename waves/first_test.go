package waves

import (
	"context"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/kube-preloader/kube-preloader/kubeapi/clientset"
)

const ref = "corp.example/team/app:1.4"

func newFirst(cs *fake.Clientset, id string, k int, timeout time.Duration) *First {
	return &First{
		Leases: clientset.New(cs).Leases(ns), Identity: id, K: k, Timeout: timeout,
		Nodes: func(context.Context) (int, error) { return 0, nil }, MinPoll: 20 * time.Millisecond,
	}
}

func TestFirstNodes(t *testing.T) {
	for _, tc := range []struct {
		name       string
		k          int
		timeout    time.Duration
		haveAfter  time.Duration // the first nodes report this long after starting; 0: never
		wantWaitLo time.Duration
		wantWaitHi time.Duration
	}{
		{"the others follow the first", 1, 10 * time.Second, 300 * time.Millisecond, 300 * time.Millisecond, 2 * time.Second},
		{"two first nodes", 2, 10 * time.Second, 300 * time.Millisecond, 300 * time.Millisecond, 2 * time.Second},
		{"first nodes that never report: the timeout", 1, 500 * time.Millisecond, 0, 450 * time.Millisecond, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			for i := range tc.k {
				f := newFirst(cs, "first-"+string(rune('a'+i)), tc.k, tc.timeout)
				first, err := f.Wait(ctx, ref)
				if err != nil || !first {
					t.Fatalf("first node %d: first=%v err=%v", i, first, err)
				}
				if tc.haveAfter > 0 {
					time.AfterFunc(tc.haveAfter, func() {
						if err := f.Have(ctx, ref); err != nil {
							t.Error(err)
						}
					})
				}
			}
			first, err := newFirst(cs, "other", tc.k, tc.timeout).Wait(ctx, ref)
			waited := time.Since(start)
			if err != nil || first {
				t.Fatalf("other: first=%v err=%v", first, err)
			}
			if waited < tc.wantWaitLo || waited > tc.wantWaitHi {
				t.Errorf("other waited %s, want between %s and %s", waited, tc.wantWaitLo, tc.wantWaitHi)
			}
		})
	}
}

func TestImageLeaseName(t *testing.T) {
	a, b := ImageLeaseName("nginx:1"), ImageLeaseName("nginx:2")
	if a == b || len(a) > 63 || a[:len(ImagePrefix)] != ImagePrefix {
		t.Errorf("names %q %q", a, b)
	}
}
