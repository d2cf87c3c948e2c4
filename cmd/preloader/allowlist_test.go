package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAllowlistCommand(t *testing.T) {
	config := filepath.Join(t.TempDir(), "images.yaml")
	if err := os.WriteFile(config, []byte("images:\n  - image: corp.example/team/app:1.4\n  - image: nginx:1.25\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args         []string
		code         int
		stdout       []string
		stderr       []string
		stdoutAbsent []string
	}{
		{args: nil, stdout: []string{"imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages", "- corp.example/team/app\n", "- nginx\n"}, stdoutAbsent: []string{"kind:"}},
		{args: []string{"-o", "drop-in"}, stdout: []string{"apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"}, stderr: []string{"replaces the config file's"}},
		{args: []string{"--kubelet-version", "v1.35.4"}, stdout: []string{"- corp.example/team/*\n"}, stderr: []string{"every other image under corp.example/team/", "nginx:1.25: kubelet 1.35"}, stdoutAbsent: []string{"- nginx"}},
		{args: []string{"-o", "yaml"}, code: exitInvalid},
		{args: []string{"--kubelet-version", "2.0"}, code: exitInvalid},
	}
	for _, tt := range tests {
		code, stdout, stderr := execute(append([]string{"allowlist", "--config", config}, tt.args...)...)
		if code != tt.code {
			t.Errorf("%v: exit %d (%s), want %d", tt.args, code, stderr, tt.code)
			continue
		}
		for _, w := range tt.stdout {
			if !strings.Contains(stdout.String(), w) {
				t.Errorf("%v: stdout lacks %q:\n%s", tt.args, w, stdout.String())
			}
		}
		for _, w := range tt.stdoutAbsent {
			if strings.Contains(stdout.String(), w) {
				t.Errorf("%v: stdout has %q:\n%s", tt.args, w, stdout.String())
			}
		}
		for _, w := range tt.stderr {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%v: stderr lacks %q:\n%s", tt.args, w, stderr.String())
			}
		}
	}

	// Nothing expressible for 1.35: nothing printed, exit 2.
	bare := filepath.Join(t.TempDir(), "bare.yaml")
	os.WriteFile(bare, []byte("images:\n  - image: nginx:1.25\n"), 0o644)
	code, stdout, stderr := execute("allowlist", "--config", bare, "--kubelet-version", "v1.35")
	if code != exitInvalid || stdout.Len() != 0 {
		t.Errorf("bare name on 1.35: exit %d (%s), stdout %q; want exit 2 and nothing printed", code, stderr, stdout)
	}
}
