package integration

// Hostile input, bounded: `preloader once` with
// thousands of images, a huge file and a deeply nested one. Each ends
// quickly, with a clear answer, in bounded memory.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// peakRSSSource runs a command and writes its peak RSS, in KiB, to
// $PEAKRSS_FILE. The test cannot measure its own children: a child forked
// from the test process keeps the test's high-water RSS (hundreds of MiB of
// test images) across exec; a grandchild of this small program starts from
// this program's few MiB.
const peakRSSSource = `package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

func main() {
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if cmd.ProcessState == nil {
		fmt.Fprintln(os.Stderr, "peakrss:", err)
		os.Exit(127)
	}
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss
	if err := os.WriteFile(os.Getenv("PEAKRSS_FILE"), []byte(fmt.Sprint(rss)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "peakrss:", err)
		os.Exit(127)
	}
	os.Exit(cmd.ProcessState.ExitCode())
}
`

// Bounds on the peak RSS of `once`, above that of a run that rejects a
// one-line config (45-55 MiB here, most of it pages of the binary itself,
// plus the few MiB of peakrss): a rejected file may cost 16 MiB more,
// less than reading a 20 MiB file whole; 5000 images, parsed, planned and
// printed, measured 20 MiB more, some 4 KiB an image.
const (
	rejectedOverRSS = 16 << 20
	manyOverRSS     = 48 << 20
)

func (f *faultEnv) hostileInput(t *testing.T) {
	peakRSS := filepath.Join(t.TempDir(), "peakrss")
	if err := os.WriteFile(peakRSS, harness.BuildGoSource(t, "peakrss", peakRSSSource), 0o755); err != nil {
		t.Fatal(err)
	}
	var many strings.Builder
	many.WriteString("sandboxImage: none\nimages:\n")
	for i := range 5000 {
		fmt.Fprintf(&many, "  - image: registry.example/many/app-%d:1\n    nodeSelector: {pool: gpu}\n", i)
	}
	var tooMany strings.Builder
	tooMany.WriteString("sandboxImage: none\nimages:\n")
	for i := range 12000 {
		fmt.Fprintf(&tooMany, "  - image: r.example/a%d:1\n", i)
	}
	var huge strings.Builder
	huge.WriteString("sandboxImage: none\nimages:\n")
	for huge.Len() < 20<<20 {
		fmt.Fprintf(&huge, "  - image: registry.example/huge/app-%d:1\n", huge.Len())
	}
	const depth = 100000
	nested := "sandboxImage: none\nimages: " + strings.Repeat("[", depth) + strings.Repeat("]", depth) + "\n"

	measure := func(t *testing.T, name, yaml string) (r run, rss int64, took time.Duration, path string) {
		t.Helper()
		path = filepath.Join(f.dir, strings.ReplaceAll(name, " ", "-")+".yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		rssFile := filepath.Join(f.dir, "peakrss")
		start := time.Now()
		r = f.runPeak(t, peakRSS, rssFile, "once", "--config", path, "-o", "json")
		took = time.Since(start)
		b, err := os.ReadFile(rssFile)
		if err != nil {
			t.Fatalf("peak RSS: %v\n%s", err, r)
		}
		kib, err := strconv.ParseInt(string(b), 10, 64)
		if err != nil {
			t.Fatalf("peak RSS: %v", err)
		}
		return r, kib << 10, took, path
	}
	r, base, _, _ := measure(t, "baseline", "images: [\n")
	if r.code != 2 {
		t.Fatalf("a one-line broken config: exit %d, want 2\n%s", r.code, r)
	}
	t.Logf("baseline: peak RSS %.1f MiB", float64(base)/(1<<20))

	for _, c := range []struct {
		name, yaml string
		code       int
		want       string // in stderr, after the file's path
	}{
		// Each image has a nodeSelector, which `once` reports skipped: the
		// config is parsed, planned and printed in full, with no pulls.
		{"5000 images", many.String(), 0, ""},
		{"12000 images", tooMany.String(), 2, "12000 images, more than the limit of 10000"},
		{"20 MiB config", huge.String(), 2, "config is larger than the limit of 1048576 bytes (1 MiB)"},
		{"10^5 nested levels", nested, 2, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, rss, took, path := measure(t, c.name, c.yaml)
			if r.code != c.code {
				t.Errorf("exit %d, want %d\n%s", r.code, c.code, r)
			}
			if c.code == 0 {
				out := parseOnce(t, r)
				skipped := 0
				for _, img := range out.Images {
					if img.Status == "skipped" {
						skipped++
					}
				}
				if skipped != 5000 {
					t.Errorf("%d images skipped, want 5000", skipped)
				}
			} else if !strings.Contains(r.stderr, path) || !strings.Contains(r.stderr, c.want) {
				t.Errorf("the error does not name %s and say %q:\n%s", path, c.want, r.stderr)
			}
			if len(r.stderr) > 64<<10 {
				t.Errorf("%d bytes of errors: a bad file must not flood the log", len(r.stderr))
			}
			over := int64(rejectedOverRSS)
			if c.code == 0 {
				over = manyOverRSS
			}
			if rss > base+over {
				t.Errorf("peak RSS %.1f MiB, want at most %d MiB over the %.1f MiB of a one-line config", float64(rss)/(1<<20), over>>20, float64(base)/(1<<20))
			}
			if took > 10*time.Second {
				t.Errorf("took %s", took)
			}
			first, _, _ := strings.Cut(strings.TrimSpace(r.stderr), "\n")
			if c.code == 0 {
				first = "5000 skipped"
			}
			t.Logf("%s (%d KiB): exit %d in %s, peak RSS %.1f MiB: %s", c.name, len(c.yaml)>>10, r.code, took.Round(time.Millisecond), float64(rss)/(1<<20), first)
			f.report(faultRow{scenario: fmt.Sprintf("%s: %s", f.flavor, c.name), outcome: fmt.Sprintf("exit %d in %s, peak RSS %.0f MiB (one-line config: %.0f)", r.code, took.Round(10*time.Millisecond), float64(rss)/(1<<20), float64(base)/(1<<20)), leaked: f.leaked(r)})
		})
	}
}

// runPeak runs the preloader under peakRSS, which writes its peak RSS to
// rssFile.
func (f *faultEnv) runPeak(t *testing.T, peakRSS, rssFile string, args ...string) run {
	t.Helper()
	l := &liveRun{done: make(chan struct{})}
	l.cmd = exec.Command(peakRSS, append([]string{preloaderBin}, args...)...)
	l.cmd.Env = append(append(os.Environ(), f.env...), "PEAKRSS_FILE="+rssFile)
	l.cmd.Stdout, l.cmd.Stderr = &l.stdout, &l.stderr
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { l.err = l.cmd.Wait(); close(l.done) }()
	return f.wait(l, 30*time.Second)
}
