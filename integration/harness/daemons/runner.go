package daemons

import (
	"fmt"
	"os"
	"slices"
)

// T is the part of testing.TB the harness uses. *testing.T and *testing.B
// satisfy it, and so does Runner, so that `make demo` starts the same
// components the tests start.
type T interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Skipf(format string, args ...any)
	TempDir() string
}

// Runner is a T for programs: failures print to stderr and unwind to
// Recover; cleanups run at Close.
type Runner struct {
	name     string
	cleanups []func()
	failed   bool
}

// NewRunner returns a Runner; name prefixes its messages.
func NewRunner(name string) *Runner { return &Runner{name: name} }

type fatal struct{}

func (r *Runner) Helper()             {}
func (r *Runner) Cleanup(f func())    { r.cleanups = append(r.cleanups, f) }
func (r *Runner) Logf(string, ...any) {}

func (r *Runner) Errorf(format string, args ...any) {
	r.failed = true
	fmt.Fprintf(os.Stderr, "%s: %s\n", r.name, fmt.Sprintf(format, args...))
}

func (r *Runner) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }

func (r *Runner) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	panic(fatal{})
}

// Skipf fails: a program has no one to skip for.
func (r *Runner) Skipf(format string, args ...any) { r.Fatalf(format, args...) }

func (r *Runner) TempDir() string {
	dir, err := os.MkdirTemp("", r.name)
	if err != nil {
		r.Fatal(err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Recover, deferred, turns a Fatal into exit code 1.
func (r *Runner) Recover(code *int) {
	if v := recover(); v != nil {
		if _, ok := v.(fatal); !ok {
			panic(v)
		}
		*code = 1
	}
	if r.failed {
		*code = 1
	}
}

// Close runs the cleanups, last registered first, as testing does.
func (r *Runner) Close() {
	for _, f := range slices.Backward(r.cleanups) {
		f()
	}
	r.cleanups = nil
}
