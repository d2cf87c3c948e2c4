package main

import (
	"context"
	"sync"

	"github.com/spf13/pflag"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/credprovider"
	"github.com/kube-preloader/kube-preloader/cri/keyring"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// credProviderFlags are the kubelet's flags of the same names, so that a
// bootstrap hook passes the preloader what it passes the kubelet.
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
// docker config files, then the credential provider plugins. A plugin
// that fails for an image blocks that image's pulls (gatedStore): pulling
// it with the credentials left would not be what the kubelet gets when
// its plugin works, and would end in a misleading "unauthorized".
type nodeAuth struct {
	ctx     context.Context
	files   *keyring.Keyring
	plugins *credprovider.Plugins

	mu     sync.Mutex
	failed map[string]error // by reference pulled
}

func (a *nodeAuth) Auth(img config.Image) []*runtimeapi.AuthConfig {
	auths := a.files.Lookup(img.Name)
	if a.plugins == nil || !a.plugins.Matches(img.Name) {
		return auths
	}
	fromPlugins, err := a.plugins.Lookup(a.ctx, img.Name)
	refs := []string{img.Name}
	if img.Mirror != "" {
		if ref, merr := config.MirrorRef(img.Name, img.Mirror); merr == nil {
			refs = append(refs, ref)
		}
	}
	a.mu.Lock()
	for _, ref := range refs {
		if err != nil {
			a.failed[ref] = err
		} else {
			delete(a.failed, ref) // a later lookup worked
		}
	}
	a.mu.Unlock()
	return append(auths, fromPlugins...)
}

func (a *nodeAuth) blocked(ref string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.failed[ref]
}

// gatedStore refuses, without asking the runtime, to pull a reference
// whose credential provider failed; the error says which and how, and is
// classified as credentials.
type gatedStore struct {
	noderuntime.Store
	auth *nodeAuth
}

func (g gatedStore) PullImage(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	if err := g.auth.blocked(ref); err != nil {
		return "", err
	}
	return g.Store.PullImage(ctx, ref, auth)
}

func (g gatedStore) PullDirect(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, maxDownloads int) error {
	if err := g.auth.blocked(ref); err != nil {
		return err
	}
	return g.Store.PullDirect(ctx, ref, auth, maxDownloads)
}
