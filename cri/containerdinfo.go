package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ContainerdInfo is what containerd's CRI plugin says about its containerd:
// the socket of its API, the snapshotter the CRI unpacks images into, and
// where its registry host configuration lives.
type ContainerdInfo struct {
	Address     string // empty when not reported
	Snapshotter string
	// RegistryConfigPath is the CRI's registry config_path: directories,
	// colon-separated, holding <host>/hosts.toml. Empty when the CRI uses
	// no hosts.toml (containerd 1.x with the deprecated mirrors settings,
	// which the preloader does not read).
	RegistryConfigPath string
}

// containerd2DefaultConfigPath is the config_path containerd 2.x uses when
// its config sets neither config_path nor mirrors
// (plugins/cri/images/plugin.go in v2.4.2).
const containerd2DefaultConfigPath = "/etc/containerd/certs.d:/etc/docker/certs.d"

// Containerd asks a containerd runtime where its API is and which
// snapshotter its CRI plugin uses. containerd 1.6 reports the snapshotter
// in its verbose status config (containerd.snapshotter); 2.x moved it to
// the image service config, which the status no longer shows, so there the
// default runtime's own snapshotter is used if it has one, else the image
// filesystem the CRI reports (<root>/io.containerd.snapshotter.v1.<name>).
func (c *Client) Containerd(ctx context.Context) (ContainerdInfo, error) {
	if c.RuntimeName != "containerd" {
		return ContainerdInfo{}, fmt.Errorf("runtime is %s %s, not containerd", c.RuntimeName, c.RuntimeVersion)
	}
	info, err := c.StatusInfo(ctx)
	if err != nil {
		return ContainerdInfo{}, err
	}
	var cfg struct {
		Endpoint   string `json:"containerdEndpoint"`
		Containerd struct {
			Snapshotter        string `json:"snapshotter"`
			DefaultRuntimeName string `json:"defaultRuntimeName"`
			Runtimes           map[string]struct {
				Snapshotter string `json:"snapshotter"`
			} `json:"runtimes"`
		} `json:"containerd"`
		Registry *struct {
			ConfigPath string `json:"configPath"`
		} `json:"registry"`
	}
	if err := json.Unmarshal([]byte(info["config"]), &cfg); err != nil {
		return ContainerdInfo{}, fmt.Errorf("containerd status config: %w", err)
	}
	ci := ContainerdInfo{Address: cfg.Endpoint, Snapshotter: cfg.Containerd.Snapshotter}
	if cfg.Registry != nil {
		ci.RegistryConfigPath = cfg.Registry.ConfigPath
	} else if ci.RegistryConfigPath, err = registryConfigPathFromFile(containerdConfigPath()); err != nil {
		return ContainerdInfo{}, err
	}
	if ci.Snapshotter == "" {
		ci.Snapshotter = cfg.Containerd.Runtimes[cfg.Containerd.DefaultRuntimeName].Snapshotter
	}
	if ci.Snapshotter == "" {
		if ci.Snapshotter, err = c.imageFsSnapshotter(ctx); err != nil {
			return ContainerdInfo{}, err
		}
	}
	return ci, nil
}

// registryConfigPathFromFile is the config_path of containerd 2.x, whose
// status no longer shows the image service's config: the config file's,
// else the 2.x default. A node without the file runs on defaults.
func registryConfigPathFromFile(path string) (string, error) {
	cfg, err := readContainerdConfig(path)
	if errors.Is(err, os.ErrNotExist) {
		return containerd2DefaultConfigPath, nil
	}
	if err != nil {
		return "", err
	}
	for _, r := range []registryConfigFile{cfg.Plugins.Images.Registry, cfg.Plugins.CRI.Registry} {
		if r.ConfigPath != "" {
			return r.ConfigPath, nil
		}
		if len(r.Mirrors) > 0 {
			return "", nil
		}
	}
	return containerd2DefaultConfigPath, nil
}

const snapshotterDirPrefix = "io.containerd.snapshotter.v1."

func (c *Client) imageFsSnapshotter(ctx context.Context) (string, error) {
	resp, err := c.images.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		return "", fmt.Errorf("image filesystem info: %w", err)
	}
	for _, fs := range resp.ImageFilesystems {
		if name, ok := strings.CutPrefix(filepath.Base(fs.GetFsId().GetMountpoint()), snapshotterDirPrefix); ok && name != "" {
			return name, nil
		}
	}
	return "", errors.New("cannot tell which snapshotter the CRI plugin uses: neither its status config nor its image filesystem names one")
}
