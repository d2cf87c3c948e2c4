package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"
)

var (
	// repoRoot is the module's root (make image, the overlay's base).
	repoRoot string
	// preloaderBin is the preloader binary TestMain built from this tree:
	// the bootstrap hook's `once`, and `warm` and `status` as a user runs
	// them from a workstation or CI.
	preloaderBin string
	// verdicts is the table `make e2e` prints.
	verdicts = &verdictTable{}
)

func TestMain(m *testing.M) {
	root, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	repoRoot = root
	dir, err := os.MkdirTemp("", "preloader-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	preloaderBin = filepath.Join(dir, "preloader")
	start := time.Now()
	cmd := exec.Command("go", "build", "-trimpath", "-o", preloaderBin, "./cmd/preloader")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build preloader: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	fmt.Printf("e2e: built %s in %v\n", preloaderBin, time.Since(start).Round(time.Millisecond))
	code := m.Run()
	verdicts.print(os.Stdout)
	os.RemoveAll(dir)
	os.Exit(code)
}

// verdict is one row of the table: what the kubelet reported before
// kube-preloader did its part and after, and how long from that part
// (the preload, the ConfigMap edit, the rollout) to Running.
type verdict struct {
	scenario  string
	before    string
	after     string
	toRunning time.Duration // 0: not applicable
}

type verdictTable struct {
	mu   sync.Mutex
	rows []verdict
}

func (v *verdictTable) add(r verdict) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rows = append(v.rows, r)
}

func (v *verdictTable) print(w io.Writer) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tKUBELET BEFORE\tKUBELET AFTER\tTO RUNNING")
	for _, r := range v.rows {
		secs := "-"
		if r.toRunning > 0 {
			secs = fmt.Sprintf("%.1fs", r.toRunning.Seconds())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.scenario, oneLine(r.before), oneLine(r.after), secs)
	}
	tw.Flush()
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 90 {
		s = s[:87] + "..."
	}
	return s
}
