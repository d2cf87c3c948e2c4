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
//
// A run asks once per image: the engine may want an image's credentials
// before its pull (to size its layers) and again for it, while the first
// lookup still runs, and a plugin that hangs would cost the kubelet's
// minute each time. The next run asks again.
type Gate struct {
	ctx     context.Context
	plugins *Plugins
	tokens  Tokens

	mu      sync.Mutex
	failed  map[string]error
	lookups map[string]*lookup // by image and service account
}

// lookup is one of the run's; auths are set when done is closed.
type lookup struct {
	done  chan struct{}
	auths []*keyring.AuthConfig
}

// Gate starts a run's Gate; ctx bounds the plugin runs it waits for;
// tokens, nil where there is no API server, gives the service account
// tokens of providers with tokenAttributes.
func (ps *Plugins) Gate(ctx context.Context, tokens Tokens) *Gate {
	if ps == nil {
		return nil
	}
	return &Gate{ctx: ctx, plugins: ps, tokens: tokens, failed: map[string]error{}, lookups: map[string]*lookup{}}
}

// Auth returns the plugins' credentials for image, whose pods run as
// serviceAccount ("" if it names none); refs are the references pulled
// for it (its name, its mirror's), each blocked while a provider that
// matches it fails.
func (g *Gate) Auth(image, serviceAccount string, refs ...string) []*keyring.AuthConfig {
	if g == nil || !g.plugins.Matches(image) {
		return nil
	}
	key := keyOf(image, serviceAccount)
	g.mu.Lock()
	l, asked := g.lookups[key]
	if !asked {
		l = &lookup{done: make(chan struct{})}
		g.lookups[key] = l
	}
	g.mu.Unlock()
	if asked {
		select {
		case <-l.done:
			return l.auths
		case <-g.ctx.Done():
			return nil // the run is over: its pulls end too
		}
	}
	auths, err := g.plugins.Lookup(g.ctx, image, Identity{Tokens: g.tokens, Name: serviceAccount})
	if err != nil {
		g.mu.Lock()
		for _, ref := range refs {
			g.failed[ref] = err
		}
		g.mu.Unlock()
	}
	l.auths = auths
	close(l.done)
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
