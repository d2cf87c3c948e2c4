package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/containerd/platforms"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

var update = flag.Bool("update", false, "rewrite docs/reference/cli.md from the commands")

// cliDoc is the command line reference, generated from the commands.
const cliDoc = "../../docs/reference/cli.md"

// TestCLIDoc keeps docs/reference/cli.md what the commands say of
// themselves; -update rewrites it.
func TestCLIDoc(t *testing.T) {
	got := renderCLIDoc(newRootCmd("preloader"))
	if *update {
		if err := os.WriteFile(cliDoc, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(cliDoc)
	if err != nil {
		t.Fatalf("%v; run go test ./cmd/preloader -run TestCLIDoc -update", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is not what the commands say (first difference at line %d); run go test ./cmd/preloader -run TestCLIDoc -update",
			cliDoc, firstDiffLine(got, want))
	}
}

func firstDiffLine(a, b []byte) int {
	al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := range min(len(al), len(bl)) {
		if al[i] != bl[i] {
			return i + 1
		}
	}
	return min(len(al), len(bl)) + 1
}

// renderCLIDoc is one Markdown page of every command, in the order a reader
// meets them: each with its usage, description, examples and flags.
func renderCLIDoc(root *cobra.Command) []byte {
	root.InitDefaultCompletionCmd()
	var b bytes.Buffer
	b.WriteString("# Command line reference\n\n")
	b.WriteString("<!-- Generated from the commands by `go test ./cmd/preloader -run TestCLIDoc -update`; do not edit. -->\n\n")
	b.WriteString("Every command also takes `-h`/`--help`. Installed as `kubectl-preload`, the binary is the kubectl plugin `kubectl preload`, with the same commands and flags.\n")
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Deprecated != "" || c.Name() == "help" {
			return
		}
		fmt.Fprintf(&b, "\n%s %s\n\n", strings.Repeat("#", min(2+strings.Count(c.CommandPath(), " "), 4)), "`"+c.CommandPath()+"`")
		desc := c.Long
		if desc == "" || generatedByCobra(c) {
			desc = c.Short
		}
		fmt.Fprintf(&b, "%s\n\n```\n%s\n```\n", strings.TrimSpace(desc), c.UseLine())
		if c.Example != "" {
			fmt.Fprintf(&b, "\nExamples:\n\n```sh\n%s\n```\n", strings.TrimRight(c.Example, "\n"))
		}
		if flags := flagUsages(c.NonInheritedFlags()); flags != "" {
			fmt.Fprintf(&b, "\nFlags:\n\n```\n%s```\n", flags)
		}
		if flags := flagUsages(c.InheritedFlags()); flags != "" {
			fmt.Fprintf(&b, "\nInherited flags:\n\n```\n%s```\n", flags)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return b.Bytes()
}

// generatedByCobra says c is cobra's completion command or one of its
// shells, whose long help is shell instructions with headings of its own.
func generatedByCobra(c *cobra.Command) bool {
	for ; c != nil; c = c.Parent() {
		if c.Name() == "completion" && c.HasParent() && !c.Parent().HasParent() {
			return true
		}
	}
	return false
}

// flagUsages is pflag's flag list, with the defaults that depend on the
// machine the doc is generated on said as such.
func flagUsages(fs *pflag.FlagSet) string {
	fs.VisitAll(func(f *pflag.Flag) {
		if f.DefValue == platforms.DefaultString() {
			f.DefValue = "this machine's os/arch"
		}
	})
	return fs.FlagUsagesWrapped(100)
}
