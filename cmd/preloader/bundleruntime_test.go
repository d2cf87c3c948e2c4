package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/cri/critest"
)

// The flags of one source with the other's are usage errors; a runtime
// other than containerd is refused (exit 1) with what to do instead. No
// file is written either way.
func TestBundleFromRuntimeRefusals(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "images.yaml")
	if err := os.WriteFile(cfg, []byte("sandboxImage: none\nimages:\n  - image: registry.example/team/app:1.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.tar")
	crio := critest.Start(t)
	crio.Name, crio.RuntimeVersion = "cri-o", "1.36.3"
	for _, tt := range []struct {
		args   []string
		code   int
		stderr []string
	}{
		{[]string{"--cri-endpoint", crio.Endpoint}, exitInvalid, []string{"--cri-endpoint is for --from-runtime"}},
		{[]string{"--containerd-address", "/run/containerd/containerd.sock"}, exitInvalid, []string{"--containerd-address is for --from-runtime"}},
		{[]string{"--from-runtime", "--docker-config", cfg}, exitInvalid, []string{"--docker-config and --from-runtime"}},
		{[]string{"--from-runtime", "--verify-key", cfg}, exitInvalid, []string{"--verify-key and --from-runtime", "a node's runtime keeps none"}},
		{[]string{"--from-runtime", "--cri-endpoint", crio.Endpoint}, exitMissing, []string{
			"bundle --from-runtime) needs containerd, and the runtime is cri-o 1.36.3",
			"without --from-runtime", "skopeo copy containers-storage:IMAGE oci-archive:FILE:IMAGE",
		}},
	} {
		code, _, stderr := execute(append([]string{"bundle", "--config", cfg, "-o", out}, tt.args...)...)
		if code != tt.code {
			t.Errorf("%q: exit %d, want %d:\n%s", tt.args, code, tt.code, stderr)
		}
		for _, want := range tt.stderr {
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("%q: stderr does not say %q:\n%s", tt.args, want, stderr)
			}
		}
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 1 {
		t.Errorf("files beside the config after refusals: %v %v", entries, err)
	}
}
