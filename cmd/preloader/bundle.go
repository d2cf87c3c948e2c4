package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kube-preloader/kube-preloader/bundle"
	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/cri/keyring"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/signature"
)

type bundleOptions struct {
	config, out, platform string
	lock, since, partSize string
	dockerConfigs         []string
	fromRuntime           bool
	runtime               runtimeFlags
	verifyKeys            []string
}

// The containerd behind a node's CRI is where --from-runtime reads.
var _ bundle.Store = (*containerd.Client)(nil)

func newBundleCmd() *cobra.Command {
	var o bundleOptions
	cmd := &cobra.Command{
		Use:   "bundle --config FILE -o FILE[.gz|.zst]",
		Short: "Fetch every configured image into one archive for air-gapped nodes",
		Long: `Fetch every image of the config (and the sandbox image it names) from its
registry, or its mirror, into one OCI archive that once and agent import on
nodes with no registry: put it in the config's archiveDir.

Each image keeps the index its reference names, with the manifests and blobs
of the chosen platforms. A lock, which records every digest, goes into the
archive and beside it as FILE.lock: --lock rebuilds exactly its digests,
--since leaves out the layers an older bundle carried. --verify-key refuses
an image not signed with cosign by one of the keys, in the repository it is
fetched from, and carries the signatures for the nodes to check.

With --from-runtime, read the images from this node's containerd instead,
as it holds them (by the names the CRI records), asking no registry: an
image or platform the node lacks fails the bundle, by name. It finds the
runtime as once does; on a runtime other than containerd it refuses.`,
		Example: `  # For amd64 and arm64 nodes, compressed, with credentials from a docker config:
  preloader bundle --config images.yaml -o images.tar.zst --platform linux/amd64,linux/arm64 --docker-config ~/.docker/config.json

  # Next month: only what changed since, in parts of at most 4 GiB:
  preloader bundle --config images.yaml -o update.tar.zst --since images.tar.zst.lock --max-part-size 4GiB

  # The same digests again, whatever the tags name now:
  preloader bundle --config images.yaml -o images.tar.zst --lock images.tar.zst.lock

  # Only images the build team signed with cosign, their signatures carried for the nodes:
  preloader bundle --config images.yaml -o images.tar.zst --verify-key cosign.pub

  # On a node that has the images, for nodes of its platform:
  preloader bundle --config images.yaml -o images.tar.zst --from-runtime`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("platform") && o.lock != "" {
				return usageError("bundle: --platform and --lock: the lock says which platforms")
			}
			if err := o.checkRuntimeFlags(cmd.Flags()); err != nil {
				return err
			}
			return o.run(cmd.Context(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", "", "image list (images.yaml)")
	f.StringVarP(&o.out, "output", "o", "", "bundle file to write; .gz or .zst compresses it")
	f.StringVar(&o.platform, "platform", platforms.DefaultString(), "platforms of the nodes, os/arch[/variant] separated by commas, or all")
	f.StringVar(&o.lock, "lock", "", "lock of an earlier bundle (FILE.lock): fetch exactly its digests")
	f.StringVar(&o.since, "since", "", "lock of an earlier bundle: leave out the layers it holds (a delta)")
	f.StringVar(&o.partSize, "max-part-size", "", "split the bundle into FILE.part-001, FILE.part-002, … of at most this size: bytes, or with a unit (500Mi, 4G, 4GiB)")
	f.StringArrayVar(&o.dockerConfigs, "docker-config", nil, "docker config file with registry credentials; repeatable. Default: the kubelet's search paths")
	f.BoolVar(&o.fromRuntime, "from-runtime", false, "read the images from this node's containerd, as it holds them, instead of their registries")
	f.StringVar(&o.runtime.endpoint, "cri-endpoint", "", "with --from-runtime: CRI endpoint (default: $"+cri.EndpointEnv+", else the first known socket that answers)")
	f.StringVar(&o.runtime.containerdAddress, "containerd-address", "", "with --from-runtime: containerd socket (default: the one containerd's CRI reports, else the CRI endpoint)")
	f.StringArrayVar(&o.verifyKeys, "verify-key", nil, "cosign public key (PEM): every image must be signed by one of the keys given, in the repository it is fetched from; repeatable. The bundle carries the signatures")
	cmd.MarkFlagFilename("config", "yaml", "yml")
	cmd.MarkFlagFilename("lock", "lock")
	cmd.MarkFlagFilename("since", "lock")
	cmd.AddCommand(newBundleInspectCmd())
	return cmd
}

func (o *bundleOptions) run(ctx context.Context, stderr io.Writer) error {
	if o.config == "" || o.out == "" {
		return usageError("bundle: --config and -o are required")
	}
	opts := bundle.Options{Progress: stderr, ProgressEvery: 2 * time.Second}
	var err error
	if opts.Platforms, err = bundle.ParsePlatforms(o.platform); err != nil {
		return usageError("bundle: --platform: %v", err)
	}
	var partSize int64
	if o.partSize != "" {
		if partSize, err = parseSize(o.partSize); err != nil {
			return usageError("bundle: --max-part-size: %v", err)
		}
	}
	if o.lock != "" {
		if opts.Lock, _, err = bundle.LoadLock(o.lock); err != nil {
			return usageError("bundle: --lock: %v", err)
		}
	}
	if o.since != "" {
		old, d, err := bundle.LoadLock(o.since)
		if err != nil {
			return usageError("bundle: --since: %v", err)
		}
		opts.Since = &bundle.Delta{Old: old, File: filepath.Base(o.since), Digest: d}
	}
	if len(o.verifyKeys) > 0 {
		if opts.Verify, err = signature.LoadKeys(o.verifyKeys...); err != nil {
			return usageError("bundle: --verify-key: %v", err)
		}
	}
	cfg, err := config.Load(o.config)
	if err != nil {
		return err
	}
	sources, err := bundleSources(cfg, o.fromRuntime, stderr)
	if err != nil {
		return err
	}
	if len(sources) == 0 {
		return usageError("bundle: %s lists no image to fetch", o.config)
	}
	if opts.Lock != nil {
		names := make([]string, len(sources))
		for i, s := range sources {
			names[i] = s.Name
		}
		if err := opts.Lock.Match(names); err != nil {
			return usageError("bundle: --lock %s does not fit %s: %v", o.lock, o.config, err)
		}
	}
	var store bundle.Store
	if o.fromRuntime {
		ctrd, facts, err := noderuntime.ConnectContainerd(ctx, o.runtime.options(nil), noderuntime.OpExport)
		if err != nil {
			return err
		}
		defer ctrd.Close()
		fmt.Fprintf(stderr, "bundle: reading images from %s %s at %s\n", facts.Name, facts.Version, facts.ContainerdAddress)
		store = ctrd
		opts.Origin = bundle.OriginRuntime
		opts.Runtime = &bundle.LockRuntime{Name: facts.Name, Version: facts.Version}
	} else {
		keyring, err := loadKeyring(o.dockerConfigs)
		if err != nil {
			return &exitError{code: exitInvalid, err: err}
		}
		store = bundle.NewRegistry(credentials(keyring), nil)
	}
	start := time.Now()
	names, err := writeBundle(ctx, o.out, partSize, store, sources, opts)
	if err != nil {
		return fmt.Errorf("bundle %s: %w", o.out, err)
	}
	wrote := names[0]
	if len(names) > 1 {
		wrote = fmt.Sprintf("%d parts, %s to %s,", len(names), filepath.Base(names[0]), filepath.Base(names[len(names)-1]))
	}
	fmt.Fprintf(stderr, "bundle: wrote %s and %s.lock in %s\n", wrote, o.out, time.Since(start).Round(time.Millisecond))
	return nil
}

// checkRuntimeFlags refuses the flags of one source with the other's:
// the runtime's without --from-runtime, registry credentials with it.
func (o *bundleOptions) checkRuntimeFlags(f *pflag.FlagSet) error {
	for _, name := range []string{"cri-endpoint", "containerd-address"} {
		if f.Changed(name) && !o.fromRuntime {
			return usageError("bundle: --%s is for --from-runtime", name)
		}
	}
	if f.Changed("docker-config") && o.fromRuntime {
		return usageError("bundle: --docker-config and --from-runtime: the node's runtime is asked, no registry")
	}
	if f.Changed("verify-key") && o.fromRuntime {
		return usageError("bundle: --verify-key and --from-runtime: signatures are read from the registries, and a node's runtime keeps none (verify the images when you bundle them from their registry)")
	}
	return nil
}

// bundleSources lists what to fetch: every image of the config, from its
// mirror if it has one, and the sandbox image if the config names one.
// Images that come from an archive are the node's already. A node's
// runtime has each image under its own name, a mirror's included.
func bundleSources(cfg *config.Config, fromRuntime bool, stderr io.Writer) ([]bundle.Source, error) {
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
		if img.Mirror != "" && !fromRuntime {
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

// writeBundle writes the bundle to temporary files beside path (or its
// parts) and renames them into place, with the lock beside them, only
// when complete, so that no half bundle is ever imported. It returns the
// files written.
func writeBundle(ctx context.Context, path string, partSize int64, store bundle.Store, sources []bundle.Source, opts bundle.Options) (names []string, err error) {
	f, err := bundle.Create(path, partSize)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Abort()
		}
	}()
	var w io.WriteCloser = nopCloser{f}
	switch {
	case strings.HasSuffix(path, ".gz") || strings.HasSuffix(path, ".tgz"):
		w = gzip.NewWriter(f)
	case strings.HasSuffix(path, ".zst") || strings.HasSuffix(path, ".zstd"):
		if w, err = zstd.NewWriter(f); err != nil {
			return nil, err
		}
	}
	lock, err := bundle.Write(ctx, w, store, sources, opts)
	if err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	data, err := lock.Marshal()
	if err != nil {
		return nil, err
	}
	if err := f.Commit(data); err != nil {
		return nil, err
	}
	return f.Names(), nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
