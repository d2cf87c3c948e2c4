package noderuntime

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

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
			SandboxImage           string             `toml:"sandbox_image"`
			Registry               registryConfigFile `toml:"registry"`
			MaxConcurrentDownloads int                `toml:"max_concurrent_downloads"`
			Containerd             struct {
				DiscardUnpackedLayers bool `toml:"discard_unpacked_layers"`
			} `toml:"containerd"`
		} `toml:"io.containerd.grpc.v1.cri"`
		Images struct {
			PinnedImages struct {
				Sandbox string `toml:"sandbox"`
			} `toml:"pinned_images"`
			Registry                   registryConfigFile `toml:"registry"`
			DiscardUnpackedLayers      bool               `toml:"discard_unpacked_layers"`
			MaxConcurrentDownloads     int                `toml:"max_concurrent_downloads"`
			ConcurrentLayerFetchBuffer int                `toml:"concurrent_layer_fetch_buffer"`
			UseLocalImagePull          bool               `toml:"use_local_image_pull"`
		} `toml:"io.containerd.cri.v1.images"`
		// Transfer is the service containerd 2.x's CRI pulls through
		// unless use_local_image_pull is set.
		Transfer      pullLimits `toml:"io.containerd.transfer.v1.local"`
		ImageVerifier struct {
			BinDir string `toml:"bin_dir"`
		} `toml:"io.containerd.image-verifier.v1.bindir"`
	} `toml:"plugins"`
}

// pullLimits are the keys that bound a containerd 2.x pull's downloads;
// zero: not set, containerd's default.
type pullLimits struct {
	MaxConcurrentDownloads     int `toml:"max_concurrent_downloads"`
	ConcurrentLayerFetchBuffer int `toml:"concurrent_layer_fetch_buffer"`
}

type registryConfigFile struct {
	ConfigPath string         `toml:"config_path"`
	Mirrors    map[string]any `toml:"mirrors"`
}

// defaultImageVerifierDir is where containerd 2.x looks for image
// verifiers when its config names no bin_dir (plugins/imageverifier).
const defaultImageVerifierDir = "/opt/containerd/image-verifier/bin"

// containerdConfigPath is the containerd config file the node's containerd
// reads: PRELOADER_CONTAINERD_CONFIG, else that of layout.
func containerdConfigPath(layout Layout) string {
	if p := os.Getenv(ContainerdConfigEnv); p != "" {
		return p
	}
	return layout.Config
}

// readContainerdConfig reads path and the files it imports, merged as
// containerd merges them (cmd/containerd/server/config.LoadConfig in
// v2.4.2): the file first, then its imports in order and theirs after
// them, each over what came before; an import is relative to the file
// naming it and may be a glob; a file is read once.
func readContainerdConfig(path string) (*containerdConfigFile, error) {
	merged := map[string]any{}
	loaded := map[string]bool{}
	for pending := []string{path}; len(pending) > 0; {
		p := pending[0]
		pending = pending[1:]
		if loaded[p] {
			continue
		}
		loaded[p] = true
		data, err := os.ReadFile(p)
		if err != nil {
			if p != path {
				// containerd does not start with a missing import either.
				return nil, fmt.Errorf("containerd config %s: import: %w", path, err)
			}
			return nil, err
		}
		var tree map[string]any
		if err := toml.Unmarshal(data, &tree); err != nil {
			return nil, fmt.Errorf("containerd config %s: %w", p, err)
		}
		imports, err := resolveImports(p, tree["imports"])
		if err != nil {
			return nil, fmt.Errorf("containerd config %s: imports: %w", p, err)
		}
		delete(tree, "imports")
		mergeTree(merged, tree)
		pending = append(pending, imports...)
	}
	data, err := toml.Marshal(merged)
	if err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", path, err)
	}
	var cfg containerdConfigFile
	if err := toml.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", path, err)
	}
	return &cfg, nil
}

func resolveImports(parent string, v any) ([]string, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("not a list: %v", v)
	}
	var out []string
	for _, item := range list {
		p, ok := item.(string)
		if !ok {
			return nil, fmt.Errorf("not a path: %v", item)
		}
		p = filepath.Clean(p)
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(parent), p)
		}
		if !strings.Contains(p, "*") {
			out = append(out, p)
			continue
		}
		matches, err := filepath.Glob(p)
		if err != nil {
			return nil, err
		}
		out = append(out, matches...) // sorted, as containerd's are
	}
	return out, nil
}

// mergeTree merges src into dst as containerd's mergo.Merge with
// WithOverride does: tables key by key, a value that is set replaces,
// an empty one does not, and lists add the items they lack.
func mergeTree(dst, src map[string]any) {
	for k, sv := range src {
		dv, ok := dst[k]
		if !ok {
			dst[k] = sv
			continue
		}
		switch s := sv.(type) {
		case map[string]any:
			if d, ok := dv.(map[string]any); ok {
				mergeTree(d, s)
				continue
			}
			dst[k] = s
		case []any:
			d, _ := dv.([]any)
			for _, item := range s {
				if !slices.ContainsFunc(d, func(x any) bool { return reflect.DeepEqual(x, item) }) {
					d = append(d, item)
				}
			}
			dst[k] = d
		default:
			if !reflect.ValueOf(sv).IsZero() {
				dst[k] = sv
			}
		}
	}
}
