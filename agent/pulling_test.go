package agent

import (
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload"
)

func TestProgressDue(t *testing.T) {
	now := time.Unix(10_000, 0)
	pulling := []nodestatus.Pulling{{Image: "a:1", Done: 2 << 20, Total: 8 << 20}}
	for _, tt := range []struct {
		name    string
		last    time.Time
		pulling []nodestatus.Pulling
		shown   []nodestatus.Pulling
		want    bool
	}{
		{"nothing pulling: at rest, never", now.Add(-time.Hour), nil, nil, false},
		{"nothing pulling, stale progress shown: the sync's write clears it", now.Add(-time.Hour), nil, pulling, false},
		{"pulling, last write an interval ago", now.Add(-ProgressInterval), pulling, nil, true},
		{"pulling, last write too recent", now.Add(-ProgressInterval + time.Second), pulling, nil, false},
		{"pulling, the Node shows the same bytes (held)", now.Add(-time.Hour), pulling, pulling, false},
		{"pulling, more bytes", now.Add(-time.Hour), pulling, []nodestatus.Pulling{{Image: "a:1", Done: 1 << 20, Total: 8 << 20}}, true},
	} {
		if got := progressDue(tt.last, now, tt.pulling, tt.shown); got != tt.want {
			t.Errorf("%s: progressDue = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestPullingOfBoundsTheList(t *testing.T) {
	var pulls []preload.Pull
	for i := range nodestatus.MaxListed + 5 {
		pulls = append(pulls, preload.Pull{Image: string(rune('a'+i)) + ":1", Done: int64(i), Total: -1})
	}
	got := pullingOf(pulls)
	if len(got) != nodestatus.MaxListed || got[0].Image != "a:1" || got[1].Done != 1 || got[0].Total != 0 {
		t.Errorf("pullingOf = %+v", got)
	}
	if pullingOf(nil) != nil {
		t.Error("pullingOf(nil) is not nil: an agent at rest would write an empty list")
	}
}

// Progress is not a change: a write that adds or updates pulling keeps
// Changed, and the sync's write after the pulls clears pulling even when
// nothing else differs.
func TestPlanWriteWithProgress(t *testing.T) {
	changed := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	now := changed.Add(time.Hour)
	base := nodestatus.Status{ConfigHash: "c1", Present: 2, Total: 2, Changed: changed}
	withPulling := base
	withPulling.Pulling = []nodestatus.Pulling{{Image: "a:1", Done: 5, Total: 10}}
	for _, tt := range []struct {
		name        string
		shown       nodestatus.Status
		st          nodestatus.Status
		wantNeeded  bool
		wantChanged time.Time
	}{
		{"at rest", base, base, false, changed},
		{"pulls ended, status the same: written, Changed kept", withPulling, base, true, changed},
		{"pulls ended, status differs: Changed moves", withPulling, nodestatus.Status{ConfigHash: "c2", Present: 3, Total: 3}, true, now.Truncate(time.Second)},
	} {
		v := nodeView{ready: "true", status: nodestatus.Encode(tt.shown), cond: nodestatus.ConditionOf(base)}
		w, needed := planWrite(v, tt.st, now)
		if needed != tt.wantNeeded || !w.status.Changed.Equal(tt.wantChanged) || len(w.status.Pulling) != 0 {
			t.Errorf("%s: needed %v, changed %v, pulling %v; want %v, %v, none", tt.name, needed, w.status.Changed, w.status.Pulling, tt.wantNeeded, tt.wantChanged)
		}
	}
}
