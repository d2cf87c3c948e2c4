package noderuntime

import (
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

	tests := []struct {
		name, config, file, want, source string
	}{
		{name: "containerd 1.x status", config: `{"sandboxImage":"registry.k8s.io/pause:3.6"}`, want: "registry.k8s.io/pause:3.6", source: "runtime status"},
		{name: "CRI-O status", config: `{"pause_image":"registry.k8s.io/pause:3.9"}`, want: "registry.k8s.io/pause:3.9", source: "runtime status"},
		{name: "containerd 2.x, version 2 config file", config: `{"containerd":{}}`, file: v2, want: "mirror.example/pause:3.9", source: v2},
		{name: "containerd 2.x, version 3 config file", config: `{"containerd":{}}`, file: v3, want: "mirror.example/pause:3.10", source: v3},
		{name: "containerd 2.x, no config file", config: `{"containerd":{}}`, file: filepath.Join(dir, "absent.toml"), want: "registry.k8s.io/pause:3.10.2", source: SandboxGuess + "no containerd config found (" + filepath.Join(dir, "absent.toml") + ")"},
		{name: "containerd 2.x, config names none", config: `{"containerd":{}}`, file: none, want: "registry.k8s.io/pause:3.10.2", source: SandboxGuess + "not set in " + none},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			s.Name = "containerd"
			s.Info = map[string]string{"config": tt.config}
			t.Setenv(ContainerdConfigEnv, tt.file)
			c, err := cri.Connect(context.Background(), s.Endpoint)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			img, source, err := CRIOnly(c).SandboxImage(context.Background())
			if err != nil || img != tt.want || source != tt.source {
				t.Errorf("SandboxImage = %q, %q, %v; want %q from %q", img, source, err, tt.want, tt.source)
			}
		})
	}
}
