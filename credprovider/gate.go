package credprovider

import (
	"context"
	"sync"

	"github.com/kube-preloader/kube-preloader/cri/keyring"
)

// Gate is the plugins' side of one engine run: Auth asks the plugins for
// an image's credentials when the engine is about to pull it (the kubelet
// too asks only when it pulls), and remembers a failure for every
// reference pulled for the image, which Err then gives to the store
// wrapper that refuses those pulls. A nil *Gate gives nothing.
type Gate struct {
	ctx     context.Context
	plugins *Plugins
	tokens  Tokens

	mu     sync.Mutex
	failed map[string]error
}

// Gate starts a run's Gate; ctx bounds the plugin runs it waits for;
// tokens, nil where there is no API server, gives the service account
// tokens of providers with tokenAttributes.
func (ps *Plugins) Gate(ctx context.Context, tokens Tokens) *Gate {
	if ps == nil {
		return nil
	}
	return &Gate{ctx: ctx, plugins: ps, tokens: tokens, failed: map[string]error{}}
}

// Auth returns the plugins' credentials for image, whose pods run as
// serviceAccount ("" if it names none); refs are the references pulled
// for it (its name, its mirror's), each blocked while a provider that
// matches it fails.
func (g *Gate) Auth(image, serviceAccount string, refs ...string) []*keyring.AuthConfig {
	if g == nil || !g.plugins.Matches(image) {
		return nil
	}
	auths, err := g.plugins.Lookup(g.ctx, image, Identity{Tokens: g.tokens, Name: serviceAccount})
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, ref := range refs {
		if err != nil {
			g.failed[ref] = err
		} else {
			delete(g.failed, ref) // a later lookup worked
		}
	}
	return auths
}

// Err is the failure that blocks pulls of ref, nil if none.
func (g *Gate) Err(ref string) error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failed[ref]
}
