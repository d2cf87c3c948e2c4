package noderuntime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kube-preloader/kube-preloader/cri"
)

// containerd2DefaultConfigPath is the config_path containerd 2.x uses when
// its config sets neither config_path nor mirrors
// (plugins/cri/images/plugin.go in v2.4.2).
const containerd2DefaultConfigPath = "/etc/containerd/certs.d:/etc/docker/certs.d"

// containerd2DefaultSandboxImage is containerd 2.x's compiled-in default
// (internal/cri/config.DefaultSandboxImage in v2.4.2), the image a
// containerd 2.x node with no pinned_images.sandbox setting uses.
const containerd2DefaultSandboxImage = "registry.k8s.io/pause:3.10.2"

// statusConfig is the part of containerd's verbose CRI status config the
// preloader reads: containerd 1.6 reports all of it; 2.x moved the image
// service's config (snapshotter, registry, sandbox image) out of it.
type statusConfig struct {
	Endpoint   string `json:"containerdEndpoint"`
	RootDir    string `json:"containerdRootDir"`
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
	SandboxImage string `json:"sandboxImage"` // containerd 1.x
}

// crioStatusConfig is the part of CRI-O's verbose status config the
// preloader reads: its pause_image setting, as "sandboxImage" beside its
// runtime config ("crio").
type crioStatusConfig struct {
	SandboxImage string `json:"sandboxImage"`
}

// crioRuntimeName is CRI-O's RuntimeName in the CRI Version call.
const crioRuntimeName = "cri-o"

// discovery holds what one look at the runtime found: one verbose CRI
// status, and containerd's config file read at most once.
type discovery struct {
	c          *cri.Client
	layout     Layout
	status     statusConfig
	statusRaw  string // the status config as the runtime sent it
	statusErr  error  // the status config did not parse as containerd's
	configFile string
	file       *containerdConfigFile
	fileErr    error
	fileRead   bool
}

func discover(ctx context.Context, c *cri.Client) (*discovery, error) {
	info, err := c.StatusInfo(ctx)
	if status.Code(err) == codes.Unavailable {
		return nil, &cri.UnreachableError{Tried: []string{c.Endpoint}, Err: err}
	}
	if err != nil {
		return nil, err
	}
	d := &discovery{c: c, statusRaw: info["config"]}
	if d.statusRaw != "" {
		d.statusErr = json.Unmarshal([]byte(d.statusRaw), &d.status)
	}
	d.layout = layoutFor(c.Endpoint, d.status.RootDir, fileExists)
	d.configFile = containerdConfigPath(d.layout)
	return d, nil
}

// containerdConfig is containerd's config file; nil if there is none,
// which is a node on defaults.
func (d *discovery) containerdConfig() (*containerdConfigFile, error) {
	if !d.fileRead {
		d.fileRead = true
		d.file, d.fileErr = readContainerdConfig(d.configFile)
		if errors.Is(d.fileErr, os.ErrNotExist) {
			d.file, d.fileErr = nil, nil
		}
	}
	return d.file, d.fileErr
}

// facts is what the discovery says. A runtime that is not containerd has
// no containerd facts; on containerd, not finding them is an error.
func (d *discovery) facts(ctx context.Context) (Facts, error) {
	f := Facts{Endpoint: d.c.Endpoint, Name: d.c.RuntimeName, Version: d.c.RuntimeVersion}
	f.sandboxImage, f.sandboxSource, f.sandboxErr = d.sandboxImage()
	if f.Name != "containerd" {
		return f, nil
	}
	if err := d.containerd(ctx, &f); err != nil {
		return Facts{}, fmt.Errorf("containerd: %w", err)
	}
	f.Layout = d.layout.Name
	if cfg, _ := d.containerdConfig(); cfg != nil {
		f.ContainerdConfig = d.configFile
	}
	return f, nil
}

// containerd fills in where containerd's API is and which snapshotter its
// CRI plugin uses. containerd 1.6 reports the snapshotter in its status
// config (containerd.snapshotter); 2.x does not, so there the default
// runtime's own snapshotter is used if it has one, else the image
// filesystem the CRI reports (<root>/io.containerd.snapshotter.v1.<name>).
func (d *discovery) containerd(ctx context.Context, f *Facts) error {
	if d.statusErr != nil {
		return fmt.Errorf("containerd status config: %w", d.statusErr)
	}
	s := d.status
	f.ContainerdAddress, f.Snapshotter = s.Endpoint, s.Containerd.Snapshotter
	if s.Registry != nil {
		f.RegistryConfigPath = s.Registry.ConfigPath
	} else {
		p, err := d.registryConfigPath()
		if err != nil {
			return err
		}
		f.RegistryConfigPath = p
	}
	if f.Snapshotter == "" {
		f.Snapshotter = s.Containerd.Runtimes[s.Containerd.DefaultRuntimeName].Snapshotter
	}
	if f.Snapshotter == "" {
		name, err := imageFsSnapshotter(ctx, d.c)
		if err != nil {
			return err
		}
		f.Snapshotter = name
	}
	if majorVersion(f.Version) >= 2 {
		bypasses, err := d.directPullBypasses(f.Snapshotter)
		if err != nil {
			return err
		}
		f.directPullBypasses = bypasses
		cfg, err := d.containerdConfig()
		if err != nil {
			return err
		}
		f.CRIPull = criPullLimits(cfg)
	}
	return nil
}

// directPullBypasses is what a pull with containerd's client would skip of
// what the node's containerd 2.x does on a CRI pull: image verifiers (run
// by the transfer service the CRI pulls through), runtime handlers that
// unpack into snapshotters of their own, and discarding the compressed
// layers once unpacked.
func (d *discovery) directPullBypasses(snapshotter string) ([]string, error) {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(d.status.Containerd.Runtimes)) {
		if s := d.status.Containerd.Runtimes[name].Snapshotter; s != "" && s != snapshotter {
			out = append(out, fmt.Sprintf("runtime handler %s unpacks into snapshotter %s", name, s))
		}
	}
	cfg, err := d.containerdConfig()
	if err != nil {
		return nil, err
	}
	verifiers := defaultImageVerifierDir
	if cfg != nil {
		if cfg.Plugins.ImageVerifier.BinDir != "" {
			verifiers = cfg.Plugins.ImageVerifier.BinDir
		}
		if cfg.Plugins.Images.DiscardUnpackedLayers || cfg.Plugins.CRI.Containerd.DiscardUnpackedLayers {
			out = append(out, "discard_unpacked_layers")
		}
	}
	if entries, err := os.ReadDir(verifiers); err == nil && len(entries) > 0 {
		out = append(out, "image verifiers in "+verifiers)
	}
	return out, nil
}

// registryConfigPath is the config_path of containerd 2.x, whose status
// no longer shows the image service's config: the config file's; the
// 2.x default if it names none, as containerd then uses; the layout's
// if there is no file, as its distribution would write one.
func (d *discovery) registryConfigPath() (string, error) {
	cfg, err := d.containerdConfig()
	if err != nil {
		return "", err
	}
	if cfg == nil {
		return d.layout.HostsDir, nil
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

// crioPauseImage is the pause image CRI-O reports: its effective
// pause_image, drop-ins and flags applied, which no file on the node shows
// alone.
func (d *discovery) crioPauseImage() (image, source string, err error) {
	var st crioStatusConfig
	if d.statusRaw != "" {
		if err := json.Unmarshal([]byte(d.statusRaw), &st); err != nil {
			return "", "", fmt.Errorf("CRI-O status config: %w", err)
		}
	}
	if st.SandboxImage == "" {
		return "", "", fmt.Errorf("CRI-O %s reports no pause image in its status: set sandboxImage in the config", d.c.RuntimeVersion)
	}
	return st.SandboxImage, "CRI-O status (pause_image)", nil
}

// SandboxGuess begins the source of a sandbox image that is containerd
// 2.x's compiled-in default because no config said otherwise: a guess, as
// a config the preloader did not find may well name another.
const SandboxGuess = "guess: containerd 2.x default, "

// IsSandboxGuess says whether a sandbox image's source is SandboxGuess.
func IsSandboxGuess(source string) bool { return strings.HasPrefix(source, SandboxGuess) }

// sandboxImage is the pod-infra image the runtime will use for every pod
// sandbox, and where the answer came from. CRI-O and containerd 1.x
// report it in the status; containerd 2.x does not, so then its config
// file is read, and failing that the 2.x compiled-in default is guessed.
func (d *discovery) sandboxImage() (image, source string, err error) {
	if d.c.RuntimeName == crioRuntimeName {
		return d.crioPauseImage()
	}
	if d.statusErr == nil && d.status.SandboxImage != "" {
		return d.status.SandboxImage, "runtime status", nil
	}
	if d.c.RuntimeName != "containerd" {
		return "", "", fmt.Errorf("runtime %s %s does not report its sandbox image: set sandboxImage in the config", d.c.RuntimeName, d.c.RuntimeVersion)
	}
	cfg, err := d.containerdConfig()
	switch {
	case err != nil:
		return "", "", err
	case cfg == nil:
		return containerd2DefaultSandboxImage, SandboxGuess + "no containerd config found (" + d.configFile + ")", nil
	}
	if img := cfg.Plugins.Images.PinnedImages.Sandbox; img != "" {
		return img, d.configFile, nil
	}
	if img := cfg.Plugins.CRI.SandboxImage; img != "" {
		return img, d.configFile, nil
	}
	return containerd2DefaultSandboxImage, SandboxGuess + "not set in " + d.configFile, nil
}

const snapshotterDirPrefix = "io.containerd.snapshotter.v1."

func imageFsSnapshotter(ctx context.Context, c *cri.Client) (string, error) {
	mounts, err := c.ImageFilesystems(ctx)
	if err != nil {
		return "", err
	}
	for _, m := range mounts {
		if name, ok := strings.CutPrefix(filepath.Base(m), snapshotterDirPrefix); ok && name != "" {
			return name, nil
		}
	}
	return "", errors.New("cannot tell which snapshotter the CRI plugin uses: neither its status config nor its image filesystem names one")
}
