package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/cri/keyring"
	"github.com/kube-preloader/kube-preloader/preload"
)

func runOnce(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("once", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configPath    = fs.String("config", "", "image list (images.yaml)")
		runtime       = addRuntimeFlags(fs)
		timeout       = fs.Duration("timeout", 30*time.Minute, "bound for the whole run")
		output        = fs.String("o", "table", "output format: table or json")
		dockerConfigs stringsFlag
	)
	fs.Var(&dockerConfigs, "docker-config", "docker config file with registry credentials (config.json, dockerconfigjson or .dockercfg); repeatable. Default: the kubelet's search paths")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: exitInvalid, err: errors.New("")}
	}
	if *configPath == "" {
		return usageError("once: --config is required")
	}
	if *output != "table" && *output != "json" {
		return usageError("once: -o must be table or json, not %q", *output)
	}
	if fs.NArg() > 0 {
		return usageError("once: unexpected arguments %q", fs.Args())
	}

	cfg, err := preload.Load(*configPath)
	if err != nil {
		return err
	}
	keyring, err := loadKeyring(dockerConfigs)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}

	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	log := newLogger(stderr)
	store, err := runtime.connect(ctx, log)
	if err != nil {
		return err
	}
	defer store.Close()

	sandbox, err := preload.ResolveSandbox(ctx, store.Facts(), cfg)
	if err != nil {
		return err
	}
	if sandbox != "" {
		log.Info("sandbox image", "image", sandbox)
	}
	apply, skipped := preload.Plan(cfg, nil, sandbox)
	engine := &preload.Engine{
		Store: store,
		Auth:  func(img preload.Image) []*runtimeapi.AuthConfig { return keyring.Lookup(img.Name) },
		Log:   log,
	}
	results, err := engine.Run(ctx, cfg, apply)
	if err != nil {
		return &exitError{code: exitUnreachable, err: err}
	}
	for _, img := range skipped {
		results = append(results, preload.Result{Image: img.Name, Status: preload.StatusSkipped, Reason: "nodeSelector: no node labels in once"})
	}
	if err := writeResults(stdout, *output, results); err != nil {
		return err
	}
	missing, total := 0, 0
	for _, r := range results {
		switch r.Status {
		case preload.StatusFailed:
			missing++
		case preload.StatusSkipped:
			continue
		}
		total++ // the applied images and the archives' others
	}
	if missing > 0 {
		return &exitError{code: exitMissing, err: fmt.Errorf("%d of %d images not present", missing, total)}
	}
	return nil
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
