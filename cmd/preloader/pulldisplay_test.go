package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/preload"
)

func TestHumanETA(t *testing.T) {
	for _, tt := range []struct {
		done, total int64
		rate        float64
		want        string
	}{
		{0, 0, 1 << 20, "-"},                // no manifest read yet
		{1 << 20, 10 << 20, 0, "-"},         // nothing arriving
		{10 << 20, 10 << 20, 1 << 20, "0s"}, // all there, unpacking
		{0, 30 << 20, 1 << 20, "30s"},
		{0, 90 << 20, 1 << 20, "1m30s"},
		{1 << 30, 16 << 30, 10 << 20, "25m36s"}, // 15 GiB at 10 MiB/s
		{0, 16 << 30, 1 << 20, "4h33m"},
		{0, 1 << 40, 1 << 20, ">99h"},
	} {
		if got := humanETA(tt.done, tt.total, tt.rate); got != tt.want {
			t.Errorf("humanETA(%d, %d, %.0f) = %q, want %q", tt.done, tt.total, tt.rate, got, tt.want)
		}
	}
}

func TestHumanRateAndBytes(t *testing.T) {
	for _, tt := range []struct {
		got, want string
	}{
		{humanRate(0), "0B/s"},
		{humanRate(512), "512B/s"},
		{humanRate(45.6 * (1 << 20)), "45.6MiB/s"},
		{humanBytes(0), "0B"},
		{humanBytes(-1), "?"},
		{humanBytes(1536 << 20), "1.5GiB"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestMeter(t *testing.T) {
	start := time.Unix(1000, 0)
	at := func(s float64) time.Time { return start.Add(time.Duration(s * float64(time.Second))) }
	pull := func(attempt int, done int64) preload.Pull {
		return preload.Pull{Image: "i", Attempt: attempt, Since: start, Done: done, Total: 100 << 20}
	}
	type step struct {
		at      float64
		attempt int
		done    int64
		rate    float64 // bytes/s expected after the sample
	}
	for _, tt := range []struct {
		name  string
		steps []step
	}{
		{"no rate from one sample: setting up is not the link's pace", []step{{2, 1, 4 << 20, 0}, {3, 1, 6 << 20, 2 << 20}}},
		{"steady", []step{{1, 1, 1 << 20, 0}, {2, 1, 2 << 20, 1 << 20}, {3, 1, 3 << 20, 1 << 20}}},
		{"the window forgets an old pace", []step{
			{1, 1, 0, 0}, {2, 1, 10 << 20, 10 << 20}, {12, 1, 20 << 20, 1 << 20}, {22, 1, 30 << 20, 1 << 20},
		}},
		{"a new attempt starts over", []step{
			{1, 1, 0, 0}, {2, 1, 10 << 20, 10 << 20}, {5, 2, 1 << 20, 0}, {6, 2, 3 << 20, 2 << 20},
		}},
		{"held: nothing arrives", []step{{1, 1, 0, 0}, {2, 1, 1 << 20, 1 << 20}, {13, 1, 1 << 20, 0}, {14, 1, 1 << 20, 0}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var m rateMeter
			for _, s := range tt.steps {
				m.add(at(s.at), pull(s.attempt, s.done))
				if got := m.rate(); int64(got) != int64(s.rate) {
					t.Errorf("at %vs: rate %.0f, want %.0f", s.at, got, s.rate)
				}
			}
		})
	}
}

func TestProgressLine(t *testing.T) {
	pl := preload.Pull{Image: "registry.example/ml/vllm:0.9", Attempt: 1, Done: 3 << 30, Total: 12 << 30}
	for _, tt := range []struct {
		name  string
		pl    preload.Pull
		rate  float64
		width int
		want  string
	}{
		{"bytes, percent, rate, ETA", pl, 100 << 20, 0, "pulling registry.example/ml/vllm:0.9  3.0GiB / 12.0GiB  25%  100.0MiB/s  ETA 1m32s"},
		{"no total yet", preload.Pull{Image: "a:1", Attempt: 1}, 0, 0, "pulling a:1  0B  0B/s  ETA -"},
		{"retry says so", preload.Pull{Image: "a:1", Attempt: 2, Done: 1 << 20, Total: 2 << 20}, 1 << 20, 0, "pulling a:1  1.0MiB / 2.0MiB  50%  1.0MiB/s  ETA 1s  (attempt 2)"},
		{"cut to the terminal", pl, 100 << 20, 30, "pulling registry.example/ml/v"},
	} {
		if got := progressLine(tt.pl, tt.rate, tt.width); got != tt.want {
			t.Errorf("%s: got\n%q, want\n%q", tt.name, got, tt.want)
		}
	}
}

// A log line on a terminal clears the live lines first and draws them
// again below it.
func TestProgressWriterKeepsLogsAboveLiveLines(t *testing.T) {
	var out bytes.Buffer
	pulls := &preload.Pulls{}
	p := &pullDisplay{pulls: pulls, out: &out, tty: true, meters: map[string]*rateMeter{}}
	p.draw([]string{"pulling a:1  1.0MiB"})
	slog.New(slog.NewTextHandler(p.writer(), nil)).Info("hello")
	got := out.String()
	clearOne := "\x1b[1A\x1b[2K"
	i, j := strings.Index(got, clearOne), strings.Index(got, "msg=hello")
	if i < 0 || j < i {
		t.Errorf("log line not written after clearing the live line: %q", got)
	}
	// No pull in flight any more: nothing is drawn again.
	if p.drawn != 0 {
		t.Errorf("%d lines drawn after the log line with no pull in flight", p.drawn)
	}
}
