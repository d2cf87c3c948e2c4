package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		err  string
	}{
		{in: "1048576", want: 1 << 20},
		{in: "4GiB", want: 4 << 30},
		{in: "4Gi", want: 4 << 30},
		{in: "4G", want: 4e9},
		{in: "4GB", want: 4e9},
		{in: "500Mi", want: 500 << 20},
		{in: "1.5Gi", want: 3 << 29},
		{in: "2000k", want: 2e6},
		{in: "2000kB", want: 2e6},
		{in: "8EiB", err: "too large"},
		{in: "4", err: "less than the smallest part, 1Mi"},
		{in: "0", err: "less than the smallest part"},
		{in: "1.5", err: "not a whole number of bytes"},
		{in: "-4Gi", err: "not a size"},
		{in: "4 GiB", err: "not a size"},
		{in: "4gib", err: "not a size"},
		{in: "4Gb", err: "not a size"},
		{in: "4m", err: "not a size"},
		{in: "GiB", err: "not a size"},
		{in: "", err: "not a size"},
	} {
		got, err := parseSize(tt.in)
		switch {
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("parseSize(%q) = %d, %v; want an error saying %q", tt.in, got, err, tt.err)
		}
	}
}

// Mistakes in bundle's flags are usage errors (exit 2), found before any
// fetch, that say what is wrong and where.
func TestBundleUsageErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := write("images.yaml", "sandboxImage: none\nimages:\n  - image: registry.example/team/app:1.0\n")
	const d = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
	goodLock := write("good.lock", `version: 1
platforms: [linux/amd64]
images:
  - name: registry.example/team/other:1.0
    from: registry.example/team/other:1.0
    digest: `+d+`
    mediaType: application/vnd.oci.image.manifest.v1+json
    size: 10
    platforms:
      - platform: linux/amd64
        manifest: {digest: `+d+`, size: 10}
        config: {digest: `+d+`, size: 10}
        layers: []
`)
	badYAML := write("bad.lock", "version: 1\nplatforms: [linux/amd64\nimages: []\n")
	unknownField := write("field.lock", "version: 1\nplatforms: [linux/amd64]\nimages: []\ncolour: blue\n")
	badDigest := write("digest.lock", "version: 1\nplatforms: [linux/amd64]\nimages:\n  - name: a\n    from: a\n    digest: sha256:nothex\n    mediaType: x\n    platforms: [{platform: linux/amd64}]\n")
	version2 := write("v2.lock", "version: 2\nplatforms: [linux/amd64]\nimages: []\n")
	out := filepath.Join(dir, "out.tar")
	base := []string{"bundle", "--config", cfg, "-o", out}
	for _, tt := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"--platform", "linux/amd64,,"}, `--platform: "linux/amd64,,": item 2 is empty`},
		{[]string{"--platform", ","}, "item 1 is empty"},
		{[]string{"--platform", "linux"}, `platform "linux": want os/arch[/variant]`},
		{[]string{"--platform", "linux/amd64/v3/x"}, `platform "linux/amd64/v3/x": want os/arch[/variant]`},
		{[]string{"--platform", "linux/amd65"}, `unknown architecture "amd65"`},
		{[]string{"--platform", "linx/amd64"}, `unknown operating system "linx"`},
		{[]string{"--platform", "all,linux/amd64"}, "all cannot be combined"},
		{[]string{"--max-part-size", "4 GiB"}, `--max-part-size: "4 GiB" is not a size`},
		{[]string{"--max-part-size", "4"}, "less than the smallest part"},
		{[]string{"--lock", filepath.Join(dir, "none.lock")}, "--lock: open " + filepath.Join(dir, "none.lock")},
		{[]string{"--lock", badYAML}, "--lock: " + badYAML + ":2: did not find expected ',' or ']'"},
		{[]string{"--since", unknownField}, "--since: " + unknownField + ":4: unknown field colour"},
		{[]string{"--lock", badDigest}, badDigest + ":4: a: digest \"sha256:nothex\""},
		{[]string{"--lock", version2}, version2 + ":1: version 2: this preloader reads lock version 1"},
		{[]string{"--lock", goodLock}, "the lock has no entry for registry.example/team/app:1.0 (write a new lock without --lock to add it)"},
		{[]string{"--lock", goodLock}, "the lock has registry.example/team/other:1.0, which the config does not list"},
		{[]string{"--lock", goodLock, "--platform", "linux/arm64"}, "--platform and --lock"},
	} {
		args := append(append([]string(nil), base...), tt.args...)
		code, _, stderr := execute(args...)
		if code != exitInvalid || !strings.Contains(stderr.String(), tt.stderr) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 saying %q", tt.args, code, stderr, tt.stderr)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("%s written by a usage error", out)
	}
	code, _, stderr := execute("bundle", "inspect", filepath.Join(dir, "none.tar"))
	if code != exitInvalid || !strings.Contains(stderr.String(), "none.tar") {
		t.Errorf("inspect of a missing file: exit %d, stderr %q", code, stderr)
	}
}
