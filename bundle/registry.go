package bundle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Registry is the Store of images in their registries, reached as the
// nodes' own pulls reach them: through the proxies of the environment (or
// Transport), trying each credential in turn while the registry says
// unauthorized, then anonymously.
type Registry struct {
	credentials func(ref string) []authn.Authenticator
	transport   http.RoundTripper

	mu sync.Mutex
	// pullers keep one authorized client per repository and credential,
	// so that a registry's token and ping are not asked for again per blob.
	pullers map[pullerKey]*remote.Puller
	// chosen is the credential that worked for a repository: the next
	// request starts with it.
	chosen map[string]int
	// resolved are the manifests Resolve read, served again by Fetch
	// rather than asked of the registry twice.
	resolved map[digest.Digest][]byte
}

type pullerKey struct {
	repo string
	cred int
}

// NewRegistry returns the Store of registries. credentials gives, for a
// reference, the credentials to try in order (nil: anonymous only);
// transport nil is http.DefaultTransport (HTTPS_PROXY, NO_PROXY).
func NewRegistry(credentials func(ref string) []authn.Authenticator, transport http.RoundTripper) *Registry {
	if transport == nil {
		transport = http.DefaultTransport
	}
	return &Registry{
		credentials: credentials,
		transport:   transport,
		pullers:     map[pullerKey]*remote.Puller{},
		chosen:      map[string]int{},
		resolved:    map[digest.Digest][]byte{},
	}
}

// Resolve asks the registry for ref's manifest or index.
func (r *Registry) Resolve(ctx context.Context, ref string) (ocispec.Descriptor, error) {
	n, err := name.ParseReference(ref)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%s: %w", ref, err)
	}
	var d *remote.Descriptor
	err = r.try(ctx, ref, n.Context(), func(p *remote.Puller) error {
		var err error
		d, err = p.Get(ctx, n)
		return err
	})
	if err != nil {
		return ocispec.Descriptor{}, notFound(err)
	}
	desc := ocispec.Descriptor{MediaType: mediaType(string(d.MediaType), d.Manifest), Digest: digest.Digest(d.Digest.String()), Size: d.Size}
	r.mu.Lock()
	r.resolved[desc.Digest] = d.Manifest
	r.mu.Unlock()
	return desc, nil
}

// Fetch reads one manifest or blob of ref's repository by its digest; the
// reader fails at its end when the bytes do not match the digest.
func (r *Registry) Fetch(ctx context.Context, ref string, desc ocispec.Descriptor) (io.ReadCloser, error) {
	n, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	r.mu.Lock()
	raw, ok := r.resolved[desc.Digest]
	r.mu.Unlock()
	if ok {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}
	at := n.Context().Digest(desc.Digest.String())
	var rc io.ReadCloser
	err = r.try(ctx, ref, n.Context(), func(p *remote.Puller) error {
		if images.IsManifestType(desc.MediaType) || images.IsIndexType(desc.MediaType) {
			// By digest, the client checks the bytes against it.
			d, err := p.Get(ctx, at)
			if err != nil {
				return err
			}
			rc = io.NopCloser(bytes.NewReader(d.Manifest))
			return nil
		}
		l, err := p.Layer(ctx, at)
		if err != nil {
			return err
		}
		rc, err = l.Compressed() // checks the digest as it reads
		return err
	})
	if err != nil {
		return nil, notFound(err)
	}
	return rc, nil
}

// try runs fn with each credential for ref's repository in turn, starting
// with the one that worked last, while the registry refuses them.
func (r *Registry) try(ctx context.Context, ref string, repo name.Repository, fn func(*remote.Puller) error) error {
	var creds []authn.Authenticator
	if r.credentials != nil {
		creds = r.credentials(ref)
	}
	creds = append(creds, nil) // anonymous
	r.mu.Lock()
	start := r.chosen[repo.Name()]
	r.mu.Unlock()
	if start >= len(creds) {
		start = 0
	}
	var errs []error
	for i := start; i < len(creds); i++ {
		p, err := r.puller(repo, i, creds[i])
		if err != nil {
			return err
		}
		err = fn(p)
		if err == nil {
			r.mu.Lock()
			r.chosen[repo.Name()] = i
			r.mu.Unlock()
			return nil
		}
		errs = append(errs, err)
		var terr *transport.Error
		if !errors.As(err, &terr) || (terr.StatusCode != http.StatusUnauthorized && terr.StatusCode != http.StatusForbidden) {
			break
		}
	}
	return errors.Join(errs...)
}

func (r *Registry) puller(repo name.Repository, i int, cred authn.Authenticator) (*remote.Puller, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := pullerKey{repo.Name(), i}
	if p, ok := r.pullers[key]; ok {
		return p, nil
	}
	tr := newRegistryTransport(r.transport, repo.RegistryStr(), cred)
	p, err := remote.NewPuller(remote.WithTransport(tr))
	if err != nil {
		return nil, err
	}
	r.pullers[key] = p
	return p, nil
}

// notFound marks the registry's "no such manifest or blob" as
// errdefs.ErrNotFound, keeping its message.
func notFound(err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	}
	return err
}

// mediaType is the manifest's media type: the registry's Content-Type, or
// when it sends none that helps, the one the manifest itself names.
func mediaType(contentType string, raw []byte) string {
	if images.IsManifestType(contentType) || images.IsIndexType(contentType) {
		return contentType
	}
	var m struct {
		MediaType string            `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(raw, &m) == nil {
		switch {
		case m.MediaType != "":
			return m.MediaType
		case m.Manifests != nil:
			return ocispec.MediaTypeImageIndex
		}
	}
	if contentType == "" {
		return ocispec.MediaTypeImageManifest
	}
	return contentType
}
