package main

import (
	"context"

	"github.com/spf13/pflag"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/credprovider"
	"github.com/kube-preloader/kube-preloader/cri/keyring"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// credProviderFlags are the kubelet's flags of the same names, so that a
// bootstrap hook or the chart passes the preloader what it passes the
// kubelet.
type credProviderFlags struct {
	config, binDir string
}

func (f *credProviderFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.config, "image-credential-provider-config", "", "the kubelet's CredentialProviderConfig: a file, or a directory of *.json, *.yaml and *.yml files")
	fs.StringVar(&f.binDir, "image-credential-provider-bin-dir", "", "directory of the credential provider plugins the config names")
}

// load returns the configured plugins, nil when none are; its errors
// are exit code 2.
func (f *credProviderFlags) load() (*credprovider.Plugins, error) {
	switch {
	case f.config == "" && f.binDir == "":
		return nil, nil
	case f.config == "":
		return nil, usageError("--image-credential-provider-bin-dir needs --image-credential-provider-config")
	case f.binDir == "":
		return nil, usageError("--image-credential-provider-config needs --image-credential-provider-bin-dir")
	}
	cfg, err := credprovider.Load(f.config)
	if err != nil {
		return nil, &exitError{code: exitInvalid, err: err}
	}
	return credprovider.New(cfg, f.binDir, credprovider.Options{}), nil
}

// nodeAuth is the node's own credentials, in the kubelet's order: the
// docker config files, then the credential provider plugins.
func nodeAuth(files *keyring.Keyring, gate *credprovider.Gate) func(config.Image) []*runtimeapi.AuthConfig {
	return func(img config.Image) []*runtimeapi.AuthConfig {
		return append(files.Lookup(img.Name), gate.Auth(img.Name, "", img.PullRefs()...)...)
	}
}

// gatedStore refuses, without asking the runtime, to pull a reference
// whose credential provider failed: pulling it with the credentials left
// is not what the kubelet gets when its plugin works, and would end in a
// misleading "unauthorized". The error says which provider and how, and
// is classified as credentials.
type gatedStore struct {
	noderuntime.Store
	gate *credprovider.Gate
}

func (g gatedStore) PullImage(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	if err := g.gate.Err(ref); err != nil {
		return "", err
	}
	return g.Store.PullImage(ctx, ref, auth)
}

func (g gatedStore) PullDirect(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, maxDownloads int) error {
	if err := g.gate.Err(ref); err != nil {
		return err
	}
	return g.Store.PullDirect(ctx, ref, auth, maxDownloads)
}
