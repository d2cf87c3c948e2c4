// Command preloader makes container images present on Kubernetes nodes
// before pods need them. See README.md and docs/design/contract.md for the
// contract.
//
// Installed as kubectl-preload, it is also the kubectl plugin
// `kubectl preload`: kubectl runs it with the arguments after "preload".
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/preload/config"
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

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command line argv (argv[0] the program) and returns the
// exit code.
func run(ctx context.Context, argv []string, stdout, stderr io.Writer) int {
	root := newRootCmd(displayName(argv[0]))
	root.SetArgs(argv[1:])
	root.SetOut(stdout)
	root.SetErr(stderr)
	// Whatever fails before a command's own code runs (an unknown command
	// or flag, a missing argument, any check cobra makes) is usage: exit 2.
	// A command's own errors carry their code.
	ran := false
	markRun(root, &ran)
	cmd, err := root.ExecuteContextC(ctx)
	if err != nil && !ran {
		fmt.Fprintf(stderr, "%s: %v\nRun '%s --help' for usage.\n", root.DisplayName(), err, cmd.CommandPath())
		return exitInvalid
	}
	return exitCode(stderr, root.DisplayName(), err)
}

// markRun has every command set *ran when its RunE starts.
func markRun(cmd *cobra.Command, ran *bool) {
	if run := cmd.RunE; run != nil {
		cmd.RunE = func(c *cobra.Command, args []string) error {
			*ran = true
			return run(c, args)
		}
	}
	for _, sub := range cmd.Commands() {
		markRun(sub, ran)
	}
}

// displayName is how the user called us: "kubectl preload" when kubectl
// runs us as its plugin, so that help and errors show what to type.
func displayName(argv0 string) string {
	if strings.TrimSuffix(filepath.Base(argv0), ".exe") == "kubectl-preload" {
		return "kubectl preload"
	}
	return "preloader"
}

func newRootCmd(displayName string) *cobra.Command {
	root := &cobra.Command{
		Use:         "preloader",
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: displayName},
		Short:       "Make container images present on Kubernetes nodes before pods need them",
		Long: `kube-preloader makes container images present on Kubernetes nodes before
pods need them, so that pods with imagePullPolicy Never or IfNotPresent start
without a registry: on a node as a bootstrap hook (once), on every node as a
DaemonSet (agent), and from a workstation or CI (status, warm, bundle).

Exit codes: 0 every image that applies is present; 1 some image is missing or
failed; 2 invalid config or usage; 3 the container runtime or API server is
unreachable.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// A bare `preloader` is a usage error, as any other.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(cmd.ErrOrStderr())
			cmd.Help()
			return &exitError{code: exitInvalid, err: errors.New("")}
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	root.AddCommand(newOnceCmd(), newAgentCmd(), newControllerCmd(), newStatusCmd(), newWarmCmd(), newBundleCmd(), newAllowlistCmd(), newVersionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), version)
			return err
		},
	}
}

// exitError carries an exit code chosen by a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(stderr io.Writer, name string, err error) int {
	if err == nil {
		return exitOK
	}
	var (
		ee  *exitError
		ce  *config.Error
		ue  *cri.UnreachableError
		msg = err.Error()
	)
	code := exitMissing
	switch {
	case errors.As(err, &ee):
		code = ee.code
	case errors.As(err, &ce):
		code = exitInvalid
	case errors.As(err, &ue):
		code = exitUnreachable
	}
	if msg != "" {
		fmt.Fprintf(stderr, "%s: %s\n", name, msg)
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

// outputFlag is -o, checked against the formats a command offers.
type outputFlag struct {
	value   string
	formats []string
}

func (o *outputFlag) String() string { return o.value }
func (o *outputFlag) Type() string   { return "format" }
func (o *outputFlag) Set(v string) error {
	for _, f := range o.formats {
		if v == f {
			o.value = v
			return nil
		}
	}
	return fmt.Errorf("must be one of %s, not %q", strings.Join(o.formats, ", "), v)
}

// addOutputFlag adds -o/--output with formats, the first the default, and
// completes them.
func addOutputFlag(cmd *cobra.Command, usage string, formats ...string) *outputFlag {
	o := &outputFlag{value: formats[0], formats: formats}
	cmd.Flags().VarP(o, "output", "o", usage)
	cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
	return o
}
