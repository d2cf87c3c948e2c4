package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/waves"
)

// TestWavesSlots runs the slot code of 8 nodes, as the agent's own
// ServiceAccount under manifests/ RBAC and policies, against a real
// kube-apiserver: with maxNodesPulling 2 never more than 2 Leases are held
// at once (read from the API server every 50 ms), every node gets its turns,
// and a holder killed mid-pull (its context ends, no release) has its slot
// taken by another node within the lease duration.
func TestWavesSlots(t *testing.T) {
	k := harness.StartKube(t)
	k.Kubectl(t, "apply", "-k", "../manifests")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	// One client per node, as each agent has its own (and its own
	// client-side rate limit).
	agentConfig := k.ConfigFor(t, agentNS, "preloader")
	newClient := func() *kubeapi.Client {
		c, err := kubeapi.NewForConfig(agentConfig)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	client := newClient()
	const (
		nodes, slots = 8, 2
		leaseDur     = 3 * time.Second
	)
	newSlots := func(id string) *waves.Slots {
		return &waves.Slots{
			Leases: newClient().Leases(agentNS), Identity: id,
			Size:          func(context.Context) (int, int, error) { return slots, nodes, nil },
			LeaseDuration: leaseDur, RenewEvery: time.Second, MinPoll: 200 * time.Millisecond,
		}
	}

	t.Run("policy", func(t *testing.T) {
		// What RBAC cannot say, the policy in rbac.yaml does, once the API
		// server has loaded it (about a second after the apply).
		leases := client.Leases(agentNS)
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "kube-scheduler"}}, metav1.CreateOptions{})
			if apierrors.IsInvalid(err) || apierrors.IsForbidden(err) {
				t.Logf("refused: %v", err)
				break
			}
			if err == nil {
				if err := k.Client.CoordinationV1().Leases(agentNS).Delete(ctx, "kube-scheduler", metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("agent created Lease kube-scheduler: err=%v, want refused by the policy", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err := kubernetes.NewForConfigOrDie(agentConfig).CoordinationV1().Leases(agentNS).Delete(ctx, waves.SlotName(0), metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("agent deletes a slot Lease: err=%v, want Forbidden", err)
		}
		_, err := client.Leases("default").List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("agent lists Leases in default: err=%v, want Forbidden", err)
		}
	})

	// The watcher reads what the API server holds: Leases with a holder
	// whose renewal has not lapsed.
	var peak atomic.Int32
	var inProcess, peakInProcess atomic.Int32
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(50 * time.Millisecond):
			}
			list, err := k.Client.CoordinationV1().Leases(agentNS).List(ctx, metav1.ListOptions{})
			if err != nil {
				continue
			}
			held := int32(0)
			for _, l := range list.Items {
				if l.Spec.HolderIdentity != nil && l.Spec.RenewTime != nil && time.Since(l.Spec.RenewTime.Time) < leaseDur {
					held++
				}
			}
			if held > peak.Load() {
				peak.Store(held)
			}
		}
	}()

	t.Run("contention", func(t *testing.T) {
		var wg sync.WaitGroup
		turns := make([]int, nodes)
		for i := range nodes {
			wg.Go(func() {
				s := newSlots(fmt.Sprintf("node-%d", i))
				for range 2 {
					h, err := s.Acquire(ctx)
					if err != nil {
						t.Errorf("node-%d: %v", i, err)
						return
					}
					if n := inProcess.Add(1); n > peakInProcess.Load() {
						peakInProcess.Store(n)
					}
					time.Sleep(100*time.Millisecond + rand.N(500*time.Millisecond)) // the pull
					inProcess.Add(-1)
					if err := h.Release(ctx); err != nil {
						t.Errorf("node-%d: %v", i, err)
					}
					turns[i]++
				}
			})
		}
		wg.Wait()
		for i, n := range turns {
			if n != 2 {
				t.Errorf("node-%d had %d turns, want 2", i, n)
			}
		}
	})

	t.Run("holder killed mid-pull", func(t *testing.T) {
		dead, kill := context.WithCancel(ctx)
		a, err := newSlots("dying").Acquire(dead)
		if err != nil {
			t.Fatal(err)
		}
		b, err := newSlots("survivor").Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Release(ctx)
		// Both slots are held; a third node waits until the dead one lapses.
		time.Sleep(1500 * time.Millisecond) // renewed at least once
		kill()
		killedAt := time.Now()
		c, err := newSlots("next").Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release(ctx)
		took := time.Since(killedAt)
		if c.Name != a.Name {
			t.Errorf("next took %s, want the dead holder's %s", c.Name, a.Name)
		}
		// The last renewal was at most RenewEvery before the kill; the
		// waiter looks again when the lease lapses.
		if took > leaseDur+time.Second {
			t.Errorf("the dead holder's slot was taken after %s, lease duration %s", took, leaseDur)
		}
		t.Logf("a killed holder's slot was taken after %s (lease %s)", took.Round(time.Millisecond), leaseDur)
	})

	t.Run("firstNodes", func(t *testing.T) {
		// 5 nodes want an image new to the cluster with firstNodes 1: one
		// pulls (1 s), the others start only once it says it has it.
		const ref = "registry.example/team/app:1.0"
		var wg sync.WaitGroup
		var firstDone atomic.Int64
		var firsts atomic.Int32
		early := make(chan string, nodes)
		for i := range 5 {
			wg.Go(func() {
				id := fmt.Sprintf("node-%d", i)
				f := &waves.First{
					Leases: newClient().Leases(agentNS), Identity: id, K: 1, Timeout: 30 * time.Second,
					Nodes: func(context.Context) (int, error) { return 5, nil }, MinPoll: 200 * time.Millisecond,
				}
				first, err := f.Wait(ctx, ref)
				if err != nil {
					t.Errorf("%s: %v", id, err)
					return
				}
				if first {
					firsts.Add(1)
					time.Sleep(time.Second) // the pull
					firstDone.Store(time.Now().UnixNano())
					if err := f.Have(ctx, ref); err != nil {
						t.Errorf("%s: %v", id, err)
					}
					return
				}
				if done := firstDone.Load(); done == 0 || time.Now().UnixNano() < done {
					early <- id
				}
			})
		}
		wg.Wait()
		close(early)
		if n := firsts.Load(); n != 1 {
			t.Errorf("%d first nodes, want 1", n)
		}
		for id := range early {
			t.Errorf("%s pulled before the first node had the image", id)
		}
		l, err := k.Client.CoordinationV1().Leases(agentNS).Get(ctx, waves.ImageLeaseName(ref), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("image lease %s: %v", l.Name, l.Annotations)
	})

	close(stopWatch)
	<-watched
	t.Logf("peak held Leases seen on the API server: %d, in process: %d (maxNodesPulling %d)", peak.Load(), peakInProcess.Load(), slots)
	if peak.Load() > slots || peakInProcess.Load() > slots {
		t.Errorf("peak holders %d on the API server, %d in process: more than %d", peak.Load(), peakInProcess.Load(), slots)
	}
	if peakInProcess.Load() < slots {
		t.Errorf("never %d nodes pulled at once: the slots serialize more than asked", slots)
	}
}
