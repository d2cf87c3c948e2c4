package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/kube-preloader/kube-preloader/preload"
)

const (
	// progressRedraw is how often a terminal's live lines are redrawn.
	progressRedraw = time.Second
	// progressLogEvery is how often, at most, a log that is not a
	// terminal gets a line per image in flight: a bootstrap log or a CI
	// job must not be flooded by a pull of minutes.
	progressLogEvery = 10 * time.Second
	// rateWindow is the span the rate is measured over: long enough to
	// smooth a registry's bursts, short enough to follow a change of pace.
	rateWindow = 10 * time.Second
)

// pullDisplay shows the pulls in flight of `once` on stderr: live lines on a
// terminal, a log line per image every progressLogEvery otherwise. It
// samples Pulls only while run runs, so a command at rest draws nothing.
type pullDisplay struct {
	pulls *preload.Pulls
	out   io.Writer
	tty   bool
	width int          // the terminal's columns; 0: unknown, lines are not cut
	log   *slog.Logger // for the lines of a log that is not a terminal

	mu     sync.Mutex
	drawn  int // live lines on the terminal below the cursor's line
	meters map[string]*rateMeter
}

// newPullDisplay shows pulls on stderr, live when it is a terminal.
func newPullDisplay(pulls *preload.Pulls, stderr io.Writer) *pullDisplay {
	p := &pullDisplay{pulls: pulls, out: stderr, meters: map[string]*rateMeter{}}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
		if w, _, err := term.GetSize(int(f.Fd())); err == nil {
			p.width = w
		}
	}
	return p
}

// writer is where the command's logs go: on a terminal it clears the live
// lines before a log line and draws them again below it, so that the two
// never overwrite each other.
func (p *pullDisplay) writer() io.Writer {
	if !p.tty {
		return p.out
	}
	return progressWriter{p}
}

type progressWriter struct{ p *pullDisplay }

func (w progressWriter) Write(b []byte) (int, error) {
	p := w.p
	p.mu.Lock()
	defer p.mu.Unlock()
	lines := p.drawn
	p.clear()
	n, err := p.out.Write(b)
	if lines > 0 {
		p.draw(p.lines(time.Now(), false))
	}
	return n, err
}

// run shows progress until ctx ends, then clears the terminal's live
// lines, so that what follows (the results table) starts on a clean line.
func (p *pullDisplay) run(ctx context.Context) {
	every := progressLogEvery
	if p.tty {
		every = progressRedraw
	}
	sample := time.NewTicker(progressRedraw)
	defer sample.Stop()
	next := time.Now().Add(every)
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			p.clear()
			p.mu.Unlock()
			return
		case now := <-sample.C:
			p.mu.Lock()
			lines := p.lines(now, true)
			if !now.Before(next) {
				next = now.Add(every)
				if p.tty {
					p.clear()
					p.draw(lines)
				} else {
					p.logLines(now)
				}
			}
			p.mu.Unlock()
		}
	}
}

// start runs the progress in the background; the func it returns stops it
// and returns once the terminal is clean.
func (p *pullDisplay) start(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// lines samples the pulls in flight (when sample) and renders them, one
// per image.
func (p *pullDisplay) lines(now time.Time, sample bool) []string {
	snap := p.pulls.Snapshot()
	seen := make(map[string]bool, len(snap))
	var out []string
	for _, pl := range snap {
		seen[pl.Image] = true
		m := p.meters[pl.Image]
		if m == nil {
			m = &rateMeter{}
			p.meters[pl.Image] = m
		}
		if sample {
			m.add(now, pl)
		}
		out = append(out, progressLine(pl, m.rate(), p.width))
	}
	for img := range p.meters {
		if !seen[img] {
			delete(p.meters, img)
		}
	}
	return out
}

// logLines logs one line per pull in flight.
func (p *pullDisplay) logLines(now time.Time) {
	for _, pl := range p.pulls.Snapshot() {
		rate := 0.0
		if m := p.meters[pl.Image]; m != nil {
			rate = m.rate()
		}
		total := "-" // not known yet, or not where the runtime cannot say
		if pl.Total > 0 {
			total = humanBytes(pl.Total)
		}
		args := []any{"image", pl.Image, "done", humanBytes(pl.Done), "total", total,
			"rate", humanRate(rate), "eta", humanETA(pl.Done, pl.Total, rate), "elapsed", now.Sub(pl.Since).Round(time.Second).String()}
		if pl.Attempt > 1 {
			args = append(args, "attempt", pl.Attempt)
		}
		p.log.Info("pulling", args...)
	}
}

// draw writes lines below the cursor and remembers how many; the caller
// holds mu and has cleared the lines drawn before.
func (p *pullDisplay) draw(lines []string) {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\n")
	}
	io.WriteString(p.out, b.String())
	p.drawn = len(lines)
}

// clear erases the live lines: the cursor goes up one line and erases it,
// once per line drawn. The caller holds mu.
func (p *pullDisplay) clear() {
	if p.drawn == 0 {
		return
	}
	io.WriteString(p.out, strings.Repeat("\x1b[1A\x1b[2K", p.drawn))
	p.drawn = 0
}

// progressLine is a terminal's line for one pull: image, bytes done of
// total, percent, rate and time left, cut to width (0: not cut) so that
// it never wraps, which would leave lines clear cannot reach.
func progressLine(pl preload.Pull, rate float64, width int) string {
	bytes := humanBytes(pl.Done)
	if pl.Total > 0 {
		bytes += " / " + humanBytes(pl.Total) + fmt.Sprintf(" %3d%%", pl.Done*100/pl.Total)
	}
	line := fmt.Sprintf("pulling %s  %s  %s  ETA %s", pl.Image, bytes, humanRate(rate), humanETA(pl.Done, pl.Total, rate))
	if pl.Attempt > 1 {
		line += fmt.Sprintf("  (attempt %d)", pl.Attempt)
	}
	if width > 1 && len(line) >= width {
		line = line[:width-1]
	}
	return line
}

// rateMeter measures one image's rate from the bytes its pull received over
// the last rateWindow; a new attempt starts over.
type rateMeter struct {
	attempt int
	samples []sample
}

type sample struct {
	at   time.Time
	done int64
}

func (m *rateMeter) add(now time.Time, pl preload.Pull) {
	if pl.Attempt != m.attempt || (len(m.samples) > 0 && pl.Done < m.samples[len(m.samples)-1].done) {
		// Measured from the first sample, not from the attempt's start:
		// resolving and reading the manifest are not the link's pace.
		m.attempt, m.samples = pl.Attempt, nil
	}
	m.samples = append(m.samples, sample{at: now, done: pl.Done})
	cut := 0
	for cut < len(m.samples)-2 && now.Sub(m.samples[cut+1].at) >= rateWindow {
		cut++
	}
	m.samples = m.samples[cut:]
}

// rate is bytes per second over the samples kept; 0 until there are two.
func (m *rateMeter) rate() float64 {
	if len(m.samples) < 2 {
		return 0
	}
	first, last := m.samples[0], m.samples[len(m.samples)-1]
	d := last.at.Sub(first.at).Seconds()
	if d <= 0 {
		return 0
	}
	return float64(last.done-first.done) / d
}

// humanBytes is a byte count in binary units; "0B" for none, "?" for a
// size not known (negative).
func humanBytes(b int64) string {
	if b <= 0 {
		if b == 0 {
			return "0B"
		}
		return "?"
	}
	return humanSize(uint64(b))
}

// humanRate is a rate in binary units per second.
func humanRate(bytesPerSec float64) string {
	if bytesPerSec < 1 {
		return "0B/s"
	}
	return humanSize(uint64(bytesPerSec)) + "/s"
}

// humanETA is the time left at rate: "-" when it cannot be told (no total
// yet, or nothing arriving), whole seconds, minutes and hours otherwise.
func humanETA(done, total int64, rate float64) string {
	if total <= 0 || rate < 1 {
		return "-"
	}
	if done >= total {
		return "0s"
	}
	left := time.Duration(float64(total-done) / rate * float64(time.Second))
	switch {
	case left < time.Minute:
		return left.Round(time.Second).String()
	case left < time.Hour:
		left = left.Round(time.Second)
		return fmt.Sprintf("%dm%02ds", int(left.Minutes()), int(left.Seconds())%60)
	case left < 100*time.Hour:
		left = left.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", int(left.Hours()), int(left.Minutes())%60)
	default:
		return ">99h"
	}
}
