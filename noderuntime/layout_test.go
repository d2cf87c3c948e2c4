package noderuntime

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/cri"
)

// cri.DefaultEndpoints is what Connect tries: every layout's socket once,
// in the table's order, then the other runtimes' (CRI-O's, cri-dockerd's).
func TestDefaultEndpointsFollowLayouts(t *testing.T) {
	otherEndpoints := []string{"/run/crio/crio.sock", "/var/run/cri-dockerd.sock"}
	var want []string
	for _, l := range Layouts {
		if ep := "unix://" + l.Socket; !slices.Contains(want, ep) {
			want = append(want, ep)
		}
	}
	for _, s := range otherEndpoints {
		want = append(want, "unix://"+s)
	}
	if !slices.Equal(cri.DefaultEndpoints, want) {
		t.Errorf("cri.DefaultEndpoints = %q, want %q (from Layouts)", cri.DefaultEndpoints, want)
	}
}

func TestLayoutFor(t *testing.T) {
	const (
		k3sSock  = "unix:///run/k3s/containerd/containerd.sock"
		stdSock  = "unix:///run/containerd/containerd.sock"
		k3sConf  = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"
		rke2Conf = "/var/lib/rancher/rke2/agent/etc/containerd/config.toml"
	)
	tests := []struct {
		name, endpoint, rootDir string
		files                   []string
		want                    string
	}{
		{name: "standard, no config", endpoint: stdSock, want: "kubeadm"},
		{name: "standard config", endpoint: stdSock, files: []string{"/etc/containerd/config.toml", "/etc/cri/containerd.toml"}, want: "kubeadm"},
		{name: "talos", endpoint: stdSock, files: []string{"/etc/cri/containerd.toml"}, want: "talos"},
		{name: "k3s", endpoint: k3sSock, files: []string{k3sConf}, want: "k3s"},
		{name: "rke2", endpoint: k3sSock, files: []string{rke2Conf}, want: "rke2"},
		{name: "k3s socket, no config", endpoint: k3sSock, want: "k3s"},
		{name: "both configs: k3s", endpoint: k3sSock, files: []string{k3sConf, rke2Conf}, want: "k3s"},
		{name: "both configs, rke2's root", endpoint: k3sSock, rootDir: "/var/lib/rancher/rke2/agent/containerd", files: []string{k3sConf, rke2Conf}, want: "rke2"},
		{name: "microk8s", endpoint: "unix:///var/snap/microk8s/common/run/containerd.sock", want: "microk8s"},
		{name: "unknown socket: as kubeadm", endpoint: "unix:///tmp/c.sock", files: []string{"/etc/cri/containerd.toml"}, want: "talos"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exists := func(p string) bool { return slices.Contains(tt.files, p) }
			if got := layoutFor(tt.endpoint, tt.rootDir, exists); got.Name != tt.want {
				t.Errorf("layoutFor(%s) = %s, want %s", tt.endpoint, got.Name, tt.want)
			}
		})
	}
}

// Imports are followed as containerd follows them: globs in name order,
// paths relative to the importing file, later files over earlier ones,
// key by key, an empty value overriding nothing.
func TestReadContainerdConfigImports(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := write("containerd.toml", `version = 3
imports = ["conf.d/*.toml", "`+filepath.Join(dir, "abs.toml")+`"]
[plugins."io.containerd.cri.v1.images"]
  discard_unpacked_layers = true
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "base.example/pause:1"
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "/base/hosts"
`)
	write("conf.d/10-a.toml", `version = 3
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "a.example/pause:2"
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "/etc/cri/conf.d/hosts"
`)
	write("conf.d/20-b.toml", `version = 3
imports = ["../nested.toml"]
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "b.example/pause:3"
`)
	write("nested.toml", `[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = "/nested/verifiers"
`)
	write("abs.toml", `[plugins."io.containerd.cri.v1.images".registry]
  config_path = ""
`)
	cfg, err := readContainerdConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	img := cfg.Plugins.Images
	if img.PinnedImages.Sandbox != "b.example/pause:3" || img.Registry.ConfigPath != "/etc/cri/conf.d/hosts" || !img.DiscardUnpackedLayers || cfg.Plugins.ImageVerifier.BinDir != "/nested/verifiers" {
		t.Errorf("merged config = %+v", cfg.Plugins)
	}

	write("missing.toml", `imports = ["nowhere.toml"]`)
	if _, err := readContainerdConfig(filepath.Join(dir, "missing.toml")); err == nil || !strings.Contains(err.Error(), "import") {
		t.Errorf("missing import: err = %v, want an import error", err)
	}
}
