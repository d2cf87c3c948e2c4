// Command preloader makes container images present on Kubernetes nodes
// before pods need them. See README.md and shared DESIGN.md for the contract.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/preload"
)

// Exit codes, fixed by the design contract.
const (
	exitOK          = 0
	exitMissing     = 1
	exitInvalid     = 2
	exitUnreachable = 3
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"once", "make every configured image present on this node, then exit", runOnce},
	{"agent", "keep this node's images present as a ConfigMap says, and report on the Node", runAgent},
	{"status", "show every node's preload status", runStatus},
	{"warm", "add an image to the agent's ConfigMap, optionally wait until nodes have it", runWarm},
	{"bundle", "fetch every configured image into one archive for air-gapped nodes", runBundle},
	{"allowlist", "print the kubelet config that lets pods without credentials use the images", runAllowlist},
	{"version", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) error {
		_, err := fmt.Fprintln(stdout, version)
		return err
	}},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		return exitInvalid
	}
	for _, c := range commands {
		if c.name == args[0] {
			return exitCode(stderr, c.run(ctx, args[1:], stdout, stderr))
		}
	}
	fmt.Fprintf(stderr, "preloader: unknown command %q\n", args[0])
	usage(stderr)
	return exitInvalid
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: preloader COMMAND [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
}

// exitError carries an exit code chosen by a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(stderr io.Writer, err error) int {
	if err == nil {
		return exitOK
	}
	var (
		ee  *exitError
		ce  *preload.ConfigError
		ue  *cri.UnreachableError
		msg = err.Error()
	)
	code := exitMissing
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitInvalid
	case errors.As(err, &ee):
		code = ee.code
	case errors.As(err, &ce):
		code = exitInvalid
	case errors.As(err, &ue):
		code = exitUnreachable
	}
	if msg != "" {
		fmt.Fprintf(stderr, "preloader: %s\n", msg)
	}
	return code
}

// usageError marks bad flags or arguments: exit 2.
func usageError(format string, args ...any) error {
	return &exitError{code: exitInvalid, err: fmt.Errorf(format, args...)}
}

func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// stringsFlag is a repeatable string flag.
type stringsFlag []string

func (s *stringsFlag) String() string     { return fmt.Sprint(*s) }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }
