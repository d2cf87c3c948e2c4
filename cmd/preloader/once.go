package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/kube-preloader/kube-preloader/cri/keyring"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/kubelet"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/signature"
)

type onceOptions struct {
	config        string
	runtime       runtimeFlags
	timeout       time.Duration
	output        *outputFlag
	dockerConfigs []string
	credProviders credProviderFlags
}

func newOnceCmd() *cobra.Command {
	var o onceOptions
	cmd := &cobra.Command{
		Use:   "once --config FILE",
		Short: "Make every configured image present on this node, then exit",
		Long: `Make every image of the config present in this node's container runtime,
then exit: pulled (with containerd's client on containerd 2.x, through the
CRI elsewhere: pullVia), or imported from archives on the node; present is
what CRI ImageStatus says, as the kubelet asks. No API server is needed: run it as a node bootstrap
hook, before the kubelet starts.

While it pulls, stderr shows each image in flight with its bytes done and
to do, rate and time left: live lines redrawn every second on a terminal,
a log line every 10 s otherwise (a bootstrap log, CI). stdout holds the
results alone; with -o json or yaml, "images" (and "pruned") beside
"runtime": {"name", "version"}, the runtime they are of as its CRI Version
call names it (containerd, cri-o, …).`,
		Example: `  # As a bootstrap hook, with the kubelet's registry credentials:
  preloader once --config /etc/preloader/images.yaml

  # On a node whose runtime is not at a default socket, as JSON:
  preloader once --config images.yaml --cri-endpoint unix:///run/custom/containerd.sock -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", "", "image list (images.yaml)")
	o.runtime.add(f)
	f.DurationVar(&o.timeout, "timeout", 30*time.Minute, "bound for the whole run")
	f.StringArrayVar(&o.dockerConfigs, "docker-config", nil, "docker config file with registry credentials (config.json, dockerconfigjson or .dockercfg); repeatable. Default: the kubelet's search paths")
	o.credProviders.add(f)
	o.output = addOutputFlag(cmd, "output format: table, wide, json or yaml", "table", "wide", "json", "yaml")
	cmd.MarkFlagFilename("config", "yaml", "yml")
	return cmd
}

func (o *onceOptions) run(ctx context.Context, stdout, stderr io.Writer) error {
	if o.config == "" {
		return usageError("once: --config is required")
	}
	cfg, err := config.Load(o.config)
	if err != nil {
		return err
	}
	if cfg.Verify.On() {
		// Read again when the run starts; read here too, so that a key
		// file that is not there stops a bootstrap hook as a bad config
		// does, rather than fail every image one by one.
		if _, err := signature.LoadKeys(cfg.Verify.Keys...); err != nil {
			return &exitError{code: exitInvalid, err: fmt.Errorf("%s: verify: %w", o.config, err)}
		}
	}
	keyring, err := loadKeyring(o.dockerConfigs)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	plugins, err := o.credProviders.load()
	if err != nil {
		return err
	}

	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	pulls := &preload.Pulls{}
	prog := newPullDisplay(pulls, stderr)
	log := newLogger(prog.writer())
	prog.log = log
	if cfg.Rollout.Coordinated() {
		// One node has no cluster to take turns with; the agents do.
		log.Info("rollout is for the agent: once ignores it", "rollout", cfg.Rollout.Describe())
	}
	if len(cfg.Workloads) > 0 {
		// Workloads are the cluster's; `preloader controller` turns them into images.
		log.Info("workloads are for the controller and the agents: once ignores them", "selections", len(cfg.Workloads))
	}
	store, err := o.runtime.connect(ctx, log)
	if err != nil {
		return err
	}
	defer store.Close()

	sandbox, err := preload.ResolveSandbox(ctx, store.Facts(), cfg)
	if err != nil {
		return err
	}
	switch {
	case sandbox.Guess:
		log.Warn("sandbox image is a guess: tried once, and a failure does not fail the run", "image", sandbox.Name, "source", sandbox.Source)
	case sandbox.Name != "":
		log.Info("sandbox image", "image", sandbox.Name, "source", sandbox.Source)
	}
	// The kubelet's own thresholds, where the config leaves the budget's
	// unset and the node has a kubelet config to read them from.
	if t, err := kubelet.ReadThresholds(kubelet.DefaultConfigFile, ""); err == nil {
		cfg.DiskBudget = cfg.DiskBudget.WithKubelet(t.ImageGCHighThresholdPercent, t.ImagefsAvailable)
	}
	apply, skipped := preload.Plan(cfg, nil, sandbox)
	owner, err := onceOwner(o.config)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	gate := plugins.Gate(ctx, nil)
	engine := &preload.Engine{
		Store: gatedStore{Store: store, gate: gate},
		Auth:  nodeAuth(keyring, gate),
		Owner: owner,
		Log:   log,
		Pulls: pulls,
	}
	stop := prog.start(ctx)
	results, err := engine.Run(ctx, cfg, apply)
	stop()
	if err != nil {
		return &exitError{code: exitUnreachable, err: err}
	}
	pruned, err := engine.Prune(ctx, cfg)
	if err != nil {
		// The images are there all the same: say so, and why prune did not run.
		log.Error("prune failed", "err", err)
	}
	for _, img := range skipped {
		results = append(results, preload.Result{Image: img.Name, Status: preload.StatusSkipped, Reason: failure.Note("nodeSelector: no node labels in once")})
	}
	facts := store.Facts()
	rt := nodestatus.Runtime{Name: facts.Name, Version: facts.Version}
	if err := writeResults(stdout, o.output.value, rt, results, pruned); err != nil {
		return err
	}
	if present, total := preload.Count(results); present < total {
		return &exitError{code: exitMissing, err: fmt.Errorf("%d of %d images not present", total-present, total)}
	}
	return nil
}

// onceOwner is whose images a run of config brings and prunes: the config
// file's, by its absolute path, so that the bootstrap hook's and an ad-hoc
// run's images are told apart.
func onceOwner(config string) (string, error) {
	abs, err := filepath.Abs(config)
	if err != nil {
		return "", fmt.Errorf("once: --config: %w", err)
	}
	return "once:" + abs, nil
}

// kubeletDockerConfigs are where the kubelet looks for node-wide registry
// credentials (pkg/credentialprovider/config.go), the default for `once`
// so that a bootstrap hook sees the same credentials the kubelet would.
var kubeletDockerConfigs = []string{
	"/var/lib/kubelet/config.json",
	"/var/lib/kubelet/.dockercfg",
	filepath.Join(os.Getenv("HOME"), ".docker/config.json"),
	"/.docker/config.json",
	filepath.Join(os.Getenv("HOME"), ".dockercfg"),
	"/.dockercfg",
}

func loadKeyring(paths []string) (*keyring.Keyring, error) {
	k := &keyring.Keyring{}
	explicit := len(paths) > 0
	if !explicit {
		paths = kubeletDockerConfigs
	}
	for _, p := range paths {
		cfg, err := keyring.LoadDockerConfigFile(p)
		if err != nil {
			if !explicit && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, err
		}
		k.Add("file "+p, cfg)
	}
	return k, nil
}
