package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// execute runs the command line args as the binary would, and returns its
// exit code and output.
func execute(args ...string) (code int, stdout, stderr *bytes.Buffer) {
	return executeAs("preloader", args...)
}

func executeAs(argv0 string, args ...string) (code int, stdout, stderr *bytes.Buffer) {
	stdout, stderr = &bytes.Buffer{}, &bytes.Buffer{}
	code = run(context.Background(), append([]string{argv0}, args...), stdout, stderr)
	return code, stdout, stderr
}

// Every command explains itself with examples; mistakes before a command
// runs are usage errors (exit 2) that say what was wrong.
func TestCommandLine(t *testing.T) {
	for _, c := range []string{"once", "agent", "status", "warm", "bundle", "allowlist"} {
		code, stdout, _ := execute(c, "--help")
		if code != exitOK || !strings.Contains(stdout.String(), "Examples:") || !strings.Contains(stdout.String(), "preloader "+c) {
			t.Errorf("%s --help: exit %d, want 0 and usage with examples:\n%s", c, code, stdout)
		}
	}
	for _, tt := range []struct {
		args   []string
		stderr string
	}{
		{nil, ""},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"once", "--no-such-flag"}, "unknown flag: --no-such-flag"},
		{[]string{"once", "--config", "images.yaml", "extra"}, `unknown command "extra"`},
		{[]string{"once", "--config", "images.yaml", "-o", "xml"}, `must be one of table, wide, json, yaml, not "xml"`},
		{[]string{"once"}, "once: --config is required"},
		{[]string{"agent", "--configmap", "images"}, "--configmap must be NAMESPACE/NAME"},
		{[]string{"agent", "--configmap", "ns/images", "--node-name", "n1", "--taint-key", "preloader.io/not ready"}, `--taint-key: "preloader.io/not ready" is not a valid taint key`},
		{[]string{"agent", "--configmap", "ns/images", "--node-name", "n1", "--taint-key", "node.kubernetes.io/not-ready"}, "--taint-key: \"node.kubernetes.io/not-ready\" is a taint Kubernetes manages"},
	} {
		code, _, stderr := execute(tt.args...)
		if code != exitInvalid || !strings.Contains(stderr.String(), tt.stderr) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 saying %q", tt.args, code, stderr, tt.stderr)
		}
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		code, stdout, stderr := execute("completion", shell)
		if code != exitOK || !strings.Contains(stdout.String(), "preloader") {
			t.Errorf("completion %s: exit %d (%s), %d bytes", shell, code, stderr, stdout.Len())
		}
	}
	// -o completes to the formats the command offers.
	code, stdout, _ := execute("__complete", "once", "-o", "")
	if code != exitOK || !strings.Contains(stdout.String(), "wide\n") || !strings.Contains(stdout.String(), "yaml\n") {
		t.Errorf("completing once -o: exit %d\n%s", code, stdout)
	}
}

// Run by kubectl as its plugin, help shows what the user types.
func TestKubectlPlugin(t *testing.T) {
	code, stdout, _ := executeAs("/usr/local/bin/kubectl-preload", "status", "--help")
	if code != exitOK || !strings.Contains(stdout.String(), "kubectl preload status") {
		t.Errorf("kubectl-preload status --help: exit %d\n%s", code, stdout)
	}
	code, _, stderr := executeAs("kubectl-preload", "frobnicate")
	if code != exitInvalid || !strings.Contains(stderr.String(), "Run 'kubectl preload --help'") {
		t.Errorf("kubectl-preload frobnicate: exit %d, stderr %q", code, stderr)
	}
}
