package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/spf13/cobra"

	"github.com/kube-preloader/kube-preloader/bundle"
	"github.com/kube-preloader/kube-preloader/cri/keyring"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

type bundleOptions struct {
	config, out, platform string
	dockerConfigs         []string
}

func newBundleCmd() *cobra.Command {
	var o bundleOptions
	cmd := &cobra.Command{
		Use:   "bundle --config FILE -o FILE[.gz|.zst]",
		Short: "Fetch every configured image into one archive for air-gapped nodes",
		Long: `Fetch every image of the config (and the sandbox image it names) from its
registry, or its mirror, into one OCI archive that once and agent import on
nodes with no registry: put it in the config's archiveDir.`,
		Example: `  # For arm64 nodes, compressed, with credentials from a docker config:
  preloader bundle --config images.yaml -o images.tar.zst --platform linux/arm64 --docker-config ~/.docker/config.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", "", "image list (images.yaml)")
	f.StringVarP(&o.out, "output", "o", "", "bundle file to write; .gz or .zst compresses it")
	f.StringVar(&o.platform, "platform", platforms.DefaultString(), "platforms of the nodes, os/arch[/variant] separated by commas, or all")
	f.StringArrayVar(&o.dockerConfigs, "docker-config", nil, "docker config file with registry credentials; repeatable. Default: the kubelet's search paths")
	cmd.MarkFlagFilename("config", "yaml", "yml")
	return cmd
}

func (o *bundleOptions) run(ctx context.Context, stderr io.Writer) error {
	if o.config == "" || o.out == "" {
		return usageError("bundle: --config and -o are required")
	}
	ps, err := bundle.ParsePlatforms(o.platform)
	if err != nil {
		return usageError("bundle: --platform: %v", err)
	}
	cfg, err := config.Load(o.config)
	if err != nil {
		return err
	}
	keyring, err := loadKeyring(o.dockerConfigs)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	sources, err := bundleSources(cfg, stderr)
	if err != nil {
		return err
	}
	if len(sources) == 0 {
		return usageError("bundle: %s lists no image to fetch", o.config)
	}
	start := time.Now()
	store := bundle.NewRegistry(credentials(keyring), nil)
	opts := bundle.Options{Platforms: ps, Progress: stderr, ProgressEvery: 2 * time.Second}
	if err := writeBundle(ctx, o.out, store, sources, opts); err != nil {
		return fmt.Errorf("bundle %s: %w", o.out, err)
	}
	fmt.Fprintf(stderr, "bundle: wrote %s in %s\n", o.out, time.Since(start).Round(time.Millisecond))
	return nil
}

// bundleSources lists what to fetch: every image of the config, from its
// mirror if it has one, and the sandbox image if the config names one.
// Images that come from an archive are the node's already.
func bundleSources(cfg *config.Config, stderr io.Writer) ([]bundle.Source, error) {
	images := cfg.Images
	switch cfg.SandboxImage {
	case config.SandboxAuto:
		fmt.Fprintln(stderr, "bundle: sandboxImage is auto, so the pause image is not bundled; list it in images or set sandboxImage to its reference")
	case config.SandboxNone:
	default:
		images = append([]config.Image{{Ref: cfg.SandboxImage, Name: cfg.SandboxImage}}, images...)
	}
	var sources []bundle.Source
	seen := make(map[string]bool)
	for _, img := range images {
		if seen[img.Name] {
			continue
		}
		seen[img.Name] = true
		if img.Archive != "" {
			fmt.Fprintf(stderr, "bundle: %s comes from archive %s, not bundled\n", img.Name, img.Archive)
			continue
		}
		s := bundle.Source{Name: img.Name, From: img.Name}
		if img.Mirror != "" {
			from, err := config.MirrorRef(img.Name, img.Mirror)
			if err != nil {
				return nil, err
			}
			s.From = from
		}
		sources = append(sources, s)
	}
	return sources, nil
}

// credentials are the docker configs' credentials for a reference, in
// the order the kubelet tries them.
func credentials(kr *keyring.Keyring) func(ref string) []authn.Authenticator {
	return func(ref string) []authn.Authenticator {
		var auths []authn.Authenticator
		for _, a := range kr.Lookup(ref) {
			auths = append(auths, authn.FromConfig(authn.AuthConfig{
				Username: a.Username, Password: a.Password, Auth: a.Auth,
				IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken,
			}))
		}
		return auths
	}
}

// writeBundle writes to a temporary file beside path and renames it into
// place only when complete, so that no half bundle is ever imported.
func writeBundle(ctx context.Context, path string, store bundle.Store, sources []bundle.Source, opts bundle.Options) (err error) {
	// A rename over a device (-o /dev/null) would replace the device node.
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("bundle: -o %s is not a regular file", path)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	var w io.WriteCloser = nopCloser{tmp}
	switch {
	case strings.HasSuffix(path, ".gz") || strings.HasSuffix(path, ".tgz"):
		w = gzip.NewWriter(tmp)
	case strings.HasSuffix(path, ".zst") || strings.HasSuffix(path, ".zstd"):
		if w, err = zstd.NewWriter(tmp); err != nil {
			return err
		}
	}
	if _, err := bundle.Write(ctx, w, store, sources, opts); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
