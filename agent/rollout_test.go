package agent

import (
	"context"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/waves"
)

func heldSlot(holder string) *coordinationv1.Lease {
	secs := int32(3600)
	now := metav1.NewMicroTime(time.Now())
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: waves.SlotName(0), Labels: map[string]string{waves.LabelKind: waves.KindSlot}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs, RenewTime: &now},
	}
}

func leaseActions(e *testEnv) (reads, writes int, holders []string) {
	for _, a := range e.client.Actions() {
		if a.GetResource().Resource != "leases" {
			continue
		}
		switch a.GetVerb() {
		case "get", "list", "watch":
			reads++
		default:
			writes++
		}
	}
	return
}

// TestRolloutPullsOnlyInItsTurn: with maxNodesPulling 1 and the one slot
// held by another node, the agent pulls nothing; once that node releases
// it, the agent takes the slot, pulls, and releases it after.
func TestRolloutPullsOnlyInItsTurn(t *testing.T) {
	data := testConfig("  - image: "+appImage+"\n") + "rollout: {maxNodesPulling: 1}\n"
	e := start(t, nil, newNode(nil), newConfigMap(data), heldSlot("other-node"))
	leases := e.client.CoordinationV1().Leases(testNS)

	time.Sleep(500 * time.Millisecond) // several polls of the slot
	if n := e.runtime.Calls("PullImage"); n != 0 {
		t.Fatalf("%d pulls while another node holds the only slot", n)
	}
	if reads, _, _ := leaseActions(e); reads == 0 {
		t.Fatal("the agent never looked at the slots")
	}

	l, err := leases.Get(context.Background(), waves.SlotName(0), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Spec.HolderIdentity = nil
	if _, err := leases.Update(context.Background(), l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus("ready", func(st nodestatus.Status) bool { return st.Total == 1 && st.Ready() })
	if n := e.runtime.Calls("PullImage"); n != 1 {
		t.Errorf("PullImage calls = %d, want 1", n)
	}
	eventually(t, "the slot released", func() (bool, string) {
		l, err := leases.Get(context.Background(), waves.SlotName(0), metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return l.Spec.HolderIdentity == nil, "held by " + holder(l)
	})
	var held, wait dto.Metric
	if err := e.agent.metrics.slotHeld.Write(&held); err != nil {
		t.Fatal(err)
	}
	if err := e.agent.metrics.slotWait.Write(&wait); err != nil {
		t.Fatal(err)
	}
	if got := held.GetGauge().GetValue(); got != 0 {
		t.Errorf("preloader_pull_slot_held = %v after the pulls, want 0", got)
	}
	if got := wait.GetHistogram().GetSampleCount(); got != 1 {
		t.Errorf("slot waits observed: %d, want 1", got)
	} else if s := wait.GetHistogram().GetSampleSum(); s < 0.4 {
		t.Errorf("slot wait %.3fs, want the half second the other node held it", s)
	}
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return "nobody"
	}
	return *l.Spec.HolderIdentity
}

// TestRolloutTakesNoSlot: images already present, and a config without
// rollout, make no Lease request at all: the steady state stays quiet.
func TestRolloutTakesNoSlot(t *testing.T) {
	for _, tc := range []struct {
		name, rollout string
		present       bool
	}{
		{"already present", "rollout: {maxNodesPulling: 1}\n", true},
		{"no limit", "rollout: {maxNodesPulling: 100%}\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := testConfig("  - image: "+appImage+"\n") + tc.rollout
			setup := func(s *critest.Server) {
				if tc.present {
					s.Add(appImage, 1)
				}
			}
			e := start(t, setup, newNode(nil), newConfigMap(data), heldSlot("other-node"))
			e.waitStatus("ready", func(st nodestatus.Status) bool { return st.Total == 1 && st.Ready() })
			e.waitSyncs(5)
			if reads, writes, _ := leaseActions(e); reads+writes != 0 {
				t.Errorf("%d Lease reads and %d writes, want none", reads, writes)
			}
		})
	}
}

// TestRolloutFirstNodes: with firstNodes 1 and another node already first
// for the image, the agent waits; once that node records it has the image,
// the agent pulls, and adds itself to no list beyond the first K.
func TestRolloutFirstNodes(t *testing.T) {
	data := testConfig("  - image: "+appImage+"\n") + "rollout: {firstNodes: 1}\n"
	e := start(t, nil, newNode(nil), newConfigMap(data), imageLease(appImage, "other-node", ""))
	time.Sleep(500 * time.Millisecond)
	if n := e.runtime.Calls("PullImage"); n != 0 {
		t.Fatalf("%d pulls before the first node has the image", n)
	}
	leases := e.client.CoordinationV1().Leases(testNS)
	l, err := leases.Get(context.Background(), waves.ImageLeaseName(appImage), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Annotations[waves.AnnotationHave] = "other-node"
	if _, err := leases.Update(context.Background(), l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus("ready", func(st nodestatus.Status) bool { return st.Total == 1 && st.Ready() })
	l, err = leases.Get(context.Background(), waves.ImageLeaseName(appImage), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Annotations[waves.AnnotationHave]; got != "other-node" {
		t.Errorf("have = %q, want only the first node", got)
	}
}

func imageLease(ref, first, have string) *coordinationv1.Lease {
	return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
		Namespace: testNS, Name: waves.ImageLeaseName(ref), CreationTimestamp: metav1.Now(),
		Annotations: map[string]string{waves.AnnotationFirst: first, waves.AnnotationHave: have},
	}}
}
