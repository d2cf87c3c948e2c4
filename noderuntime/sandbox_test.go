package noderuntime

import (
	"cmp"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/cri/critest"
)

func TestSandboxImage(t *testing.T) {
	dir := t.TempDir()
	v2 := filepath.Join(dir, "v2.toml")
	v3 := filepath.Join(dir, "v3.toml")
	os.WriteFile(v2, []byte("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"mirror.example/pause:3.9\"\n"), 0o600)
	none := filepath.Join(dir, "none.toml")
	os.WriteFile(none, []byte("version = 3\n"), 0o600)
	os.WriteFile(v3, []byte("version = 3\n[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"mirror.example/pause:3.10\"\n"), 0o600)

	// CRI-O 1.36.3's status config as it sent it (crictl info), started
	// by harness.StartCRIO with pause_image "mirror.example/pause:3.10".
	crio, err := os.ReadFile("testdata/crio-1.36.3-status-config.json")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, runtime, config, file, want, source, err string
	}{
		{name: "containerd 1.x status", config: `{"sandboxImage":"registry.k8s.io/pause:3.6"}`, want: "registry.k8s.io/pause:3.6", source: "runtime status"},
		{name: "CRI-O 1.36 status", runtime: "cri-o", config: string(crio), want: "mirror.example/pause:3.10", source: "CRI-O status (pause_image)"},
		{name: "CRI-O status without its pause image", runtime: "cri-o", config: `{"crio":{},"pause_image":"registry.k8s.io/pause:3.9"}`, err: "CRI-O 1.0 reports no pause image in its status: set sandboxImage in the config"},
		{name: "containerd 2.x, version 2 config file", config: `{"containerd":{}}`, file: v2, want: "mirror.example/pause:3.9", source: v2},
		{name: "containerd 2.x, version 3 config file", config: `{"containerd":{}}`, file: v3, want: "mirror.example/pause:3.10", source: v3},
		{name: "containerd 2.x, no config file", config: `{"containerd":{}}`, file: filepath.Join(dir, "absent.toml"), want: "registry.k8s.io/pause:3.10.2", source: SandboxGuess + "no containerd config found (" + filepath.Join(dir, "absent.toml") + ")"},
		{name: "containerd 2.x, config names none", config: `{"containerd":{}}`, file: none, want: "registry.k8s.io/pause:3.10.2", source: SandboxGuess + "not set in " + none},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			s.Name = cmp.Or(tt.runtime, "containerd")
			s.Info = map[string]string{"config": tt.config}
			t.Setenv(ContainerdConfigEnv, tt.file)
			c, err := cri.Connect(context.Background(), s.Endpoint)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			img, source, err := CRIOnly(c).SandboxImage(context.Background())
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Errorf("SandboxImage = %q, %q, %v; want the error %q", img, source, err, tt.err)
				}
				return
			}
			if err != nil || img != tt.want || source != tt.source {
				t.Errorf("SandboxImage = %q, %q, %v; want %q from %q", img, source, err, tt.want, tt.source)
			}
		})
	}
}
