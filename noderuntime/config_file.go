package noderuntime

import (
	"fmt"
	"os"

	"github.com/pelletier/go-toml/v2"
)

// ContainerdConfigEnv overrides where the preloader reads containerd's
// config file, for what containerd 2.x's status does not tell.
const ContainerdConfigEnv = "PRELOADER_CONTAINERD_CONFIG"

// containerdConfigFile is what the preloader reads from a containerd config
// file when the runtime's status does not tell: version 2 files keep the CRI
// settings under plugins."io.containerd.grpc.v1.cri" (2.x migrates them on
// load), version 3 files under plugins."io.containerd.cri.v1.images".
type containerdConfigFile struct {
	Plugins struct {
		CRI struct {
			SandboxImage string             `toml:"sandbox_image"`
			Registry     registryConfigFile `toml:"registry"`
			Containerd   struct {
				DiscardUnpackedLayers bool `toml:"discard_unpacked_layers"`
			} `toml:"containerd"`
		} `toml:"io.containerd.grpc.v1.cri"`
		Images struct {
			PinnedImages struct {
				Sandbox string `toml:"sandbox"`
			} `toml:"pinned_images"`
			Registry              registryConfigFile `toml:"registry"`
			DiscardUnpackedLayers bool               `toml:"discard_unpacked_layers"`
		} `toml:"io.containerd.cri.v1.images"`
		ImageVerifier struct {
			BinDir string `toml:"bin_dir"`
		} `toml:"io.containerd.image-verifier.v1.bindir"`
	} `toml:"plugins"`
}

type registryConfigFile struct {
	ConfigPath string         `toml:"config_path"`
	Mirrors    map[string]any `toml:"mirrors"`
}

// defaultImageVerifierDir is where containerd 2.x looks for image
// verifiers when its config names no bin_dir (plugins/imageverifier).
const defaultImageVerifierDir = "/opt/containerd/image-verifier/bin"

// containerdConfigPath is the containerd config file the node's containerd
// reads: PRELOADER_CONTAINERD_CONFIG, else containerd's default.
func containerdConfigPath() string {
	if p := os.Getenv(ContainerdConfigEnv); p != "" {
		return p
	}
	return "/etc/containerd/config.toml"
}

func readContainerdConfig(path string) (*containerdConfigFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cfg containerdConfigFile
	if err := toml.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", path, err)
	}
	return &cfg, nil
}
