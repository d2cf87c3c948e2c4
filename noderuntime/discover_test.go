package noderuntime

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/cri/critest"
)

// containerdFacts are the containerd fields of Facts.
type containerdFacts struct{ Address, Snapshotter, RegistryConfigPath string }

func TestDiscoverContainerd(t *testing.T) {
	tests := []struct {
		name    string
		runtime string
		config  string
		file    string // containerd's config file, for 2.x; none if empty
		want    containerdFacts
		wantErr bool
	}{
		{
			name:    "containerd 1.6 reports its snapshotter and config_path",
			runtime: "containerd",
			config:  `{"containerd":{"snapshotter":"native","defaultRuntimeName":"runc"},"registry":{"configPath":"/etc/containerd/certs.d"},"containerdEndpoint":"/run/k3s/containerd/containerd.sock"}`,
			file:    "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/ignored\"\n",
			want:    containerdFacts{Address: "/run/k3s/containerd/containerd.sock", Snapshotter: "native", RegistryConfigPath: "/etc/containerd/certs.d"},
		},
		{
			name:    "containerd 1.6 with the deprecated mirrors: no config_path",
			runtime: "containerd",
			config:  `{"containerd":{"snapshotter":"overlayfs"},"registry":{"configPath":"","mirrors":{"docker.io":{"endpoint":["https://m"]}}}}`,
			want:    containerdFacts{Snapshotter: "overlayfs"},
		},
		{
			name:    "containerd 2.x: the default runtime's own snapshotter, no config file",
			runtime: "containerd",
			config:  `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":"overlayfs"},"kata":{"snapshotter":"devmapper"}}},"containerdEndpoint":"/run/containerd/containerd.sock"}`,
			want:    containerdFacts{Address: "/run/containerd/containerd.sock", Snapshotter: "overlayfs", RegistryConfigPath: "/etc/containerd/certs.d:/etc/docker/certs.d"},
		},
		{
			name:    "containerd 2.x: config_path of a version 3 file",
			runtime: "containerd",
			config:  `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":"overlayfs"}}}}`,
			file:    "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/etc/containerd/certs.d\"\n",
			want:    containerdFacts{Snapshotter: "overlayfs", RegistryConfigPath: "/etc/containerd/certs.d"},
		},
		{
			name:    "containerd 2.x: config_path of a version 2 file",
			runtime: "containerd",
			config:  `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":"overlayfs"}}}}`,
			file:    "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/srv/hosts\"\n",
			want:    containerdFacts{Snapshotter: "overlayfs", RegistryConfigPath: "/srv/hosts"},
		},
		{
			name:    "containerd 2.x: a file without registry settings gets the 2.x default",
			runtime: "containerd",
			config:  `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":"overlayfs"}}}}`,
			file:    "version = 3\n",
			want:    containerdFacts{Snapshotter: "overlayfs", RegistryConfigPath: "/etc/containerd/certs.d:/etc/docker/certs.d"},
		},
		{
			name:    "containerd 2.x: a broken config file is an error",
			runtime: "containerd",
			config:  `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":"overlayfs"}}}}`,
			file:    "version = [\n",
			wantErr: true,
		},
		{
			// Then the image filesystem decides, which this fake runtime
			// does not serve; the integration tests cover it.
			name:    "containerd 2.x without a runtime snapshotter",
			runtime: "containerd",
			config:  `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":""}}}}`,
			wantErr: true,
		},
		{name: "not containerd: no containerd facts", runtime: "cri-o", config: `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := discoverWith(t, tt.runtime, "", tt.config, tt.file)
			got := containerdFacts{f.ContainerdAddress, f.Snapshotter, f.RegistryConfigPath}
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("facts = %+v, %v; want %+v (error: %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// discoverWith is what Connect would find on a runtime whose Version says
// name and version, whose verbose status config is status, and whose
// containerd config file holds file (none if empty).
func discoverWith(t *testing.T, name, version, status, file string) (Facts, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if file != "" {
		if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv(ContainerdConfigEnv, path)
	s := critest.Start(t)
	s.Name, s.RuntimeVersion = name, version
	s.Info = map[string]string{"config": status}
	c, err := cri.Connect(context.Background(), s.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d, err := discover(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return d.facts(context.Background())
}
