package preload

import (
	"context"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

func TestPullsShowsEachAttemptsBytes(t *testing.T) {
	var p Pulls
	ctx := p.attempt(context.Background(), "b:1", config.PullViaContainerd, time.Minute)
	w := noderuntime.WatchFromContext(ctx)
	if w.Stall != time.Minute || w.Bytes == nil {
		t.Fatalf("watch = %+v; want the stall timeout and bytes", w)
	}
	w.Bytes.Expect(100)
	w.Bytes.Add(40)
	time.Sleep(time.Millisecond) // a later Since, for the order
	p.attempt(context.Background(), "a:1", config.PullViaCRI, 0)

	got := p.Snapshot()
	if len(got) != 2 || got[0].Image != "b:1" || got[1].Image != "a:1" {
		t.Fatalf("Snapshot = %+v; want b:1 then a:1, oldest first", got)
	}
	if g := got[0]; g.Done != 40 || g.Total != 100 || g.Attempt != 1 || g.Via != config.PullViaContainerd {
		t.Errorf("b:1 = %+v; want 40 of 100 bytes, attempt 1, via containerd", g)
	}

	// A new attempt starts from its own bytes; the first attempt's start stays.
	since := got[0].Since
	p.attempt(context.Background(), "b:1", config.PullViaContainerd, time.Minute)
	got = p.Snapshot()
	if g := got[0]; g.Image != "b:1" || g.Attempt != 2 || g.Done != 0 || g.Total != 0 || !g.Since.Equal(since) {
		t.Errorf("b:1 after a retry = %+v; want attempt 2 from 0 bytes, since %v", g, since)
	}

	p.end("b:1")
	p.end("a:1")
	if got := p.Snapshot(); len(got) != 0 {
		t.Errorf("Snapshot after the pulls ended = %+v; want none", got)
	}
}

func TestNilPullsStillWatches(t *testing.T) {
	var p *Pulls
	ctx := p.attempt(context.Background(), "a:1", config.PullViaCRI, time.Second)
	if w := noderuntime.WatchFromContext(ctx); w.Stall != time.Second || w.Bytes == nil {
		t.Errorf("watch = %+v; want the stall timeout even when nobody shows progress", w)
	}
	p.end("a:1")
	if p.Snapshot() != nil {
		t.Error("a nil Pulls has pulls")
	}
}
