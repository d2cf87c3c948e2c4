package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/pelletier/go-toml/v2"
)

// ContainerdConfigEnv overrides where SandboxImage looks for containerd's
// config file when the runtime does not report its sandbox image.
const ContainerdConfigEnv = "PRELOADER_CONTAINERD_CONFIG"

// containerd2DefaultSandboxImage is containerd 2.x's compiled-in default
// (internal/cri/config.DefaultSandboxImage in v2.4.2), the image a
// containerd 2.x node with no pinned_images.sandbox setting uses.
const containerd2DefaultSandboxImage = "registry.k8s.io/pause:3.10.2"

// SandboxImage returns the pod-infra image the runtime will use for every
// pod sandbox, and where the answer came from.
//
// containerd 1.x and CRI-O report it in the verbose CRI status. containerd
// 2.x does not (its status config no longer carries the image service
// config), so then the containerd config file is read, and failing that the
// 2.x compiled-in default is assumed.
func (c *Client) SandboxImage(ctx context.Context) (image, source string, err error) {
	info, err := c.StatusInfo(ctx)
	if err != nil {
		return "", "", err
	}
	if raw, ok := info["config"]; ok {
		var cfg struct {
			SandboxImage string `json:"sandboxImage"` // containerd 1.x
			PauseImage   string `json:"pause_image"`  // CRI-O
		}
		if err := json.Unmarshal([]byte(raw), &cfg); err == nil {
			switch {
			case cfg.SandboxImage != "":
				return cfg.SandboxImage, "runtime status", nil
			case cfg.PauseImage != "":
				return cfg.PauseImage, "runtime status", nil
			}
		}
	}
	if c.RuntimeName != "containerd" {
		return "", "", fmt.Errorf("runtime %s %s does not report its sandbox image: set sandboxImage in the config", c.RuntimeName, c.RuntimeVersion)
	}
	path := containerdConfigPath()
	img, err := sandboxImageFromConfigFile(path)
	switch {
	case err == nil && img != "":
		return img, path, nil
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return "", "", err
	}
	return containerd2DefaultSandboxImage, "containerd 2.x default", nil
}

// containerdConfigFile is what the preloader reads from a containerd config
// file when the runtime's status does not tell: version 2 files keep the CRI
// settings under plugins."io.containerd.grpc.v1.cri" (2.x migrates them on
// load), version 3 files under plugins."io.containerd.cri.v1.images".
type containerdConfigFile struct {
	Plugins struct {
		CRI struct {
			SandboxImage string             `toml:"sandbox_image"`
			Registry     registryConfigFile `toml:"registry"`
		} `toml:"io.containerd.grpc.v1.cri"`
		Images struct {
			PinnedImages struct {
				Sandbox string `toml:"sandbox"`
			} `toml:"pinned_images"`
			Registry registryConfigFile `toml:"registry"`
		} `toml:"io.containerd.cri.v1.images"`
	} `toml:"plugins"`
}

type registryConfigFile struct {
	ConfigPath string         `toml:"config_path"`
	Mirrors    map[string]any `toml:"mirrors"`
}

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

// sandboxImageFromConfigFile reads the sandbox image from a containerd
// config file of version 2 (sandbox_image) or 3 (pinned_images.sandbox).
func sandboxImageFromConfigFile(path string) (string, error) {
	cfg, err := readContainerdConfig(path)
	if err != nil {
		return "", err
	}
	if img := cfg.Plugins.Images.PinnedImages.Sandbox; img != "" {
		return img, nil
	}
	return cfg.Plugins.CRI.SandboxImage, nil
}
