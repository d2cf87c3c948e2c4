package bundle

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// registryTransport authenticates and follows redirects below
// go-containerregistry, as containerd's resolver (the nodes' own pulls)
// does. go-containerregistry refuses token services and redirects on
// private addresses (its SSRF guard), which is where corporate registries
// keep them: a token service on another internal host, blobs redirected
// to an object store. It answers go-containerregistry's ping already
// authorized, so that client adds no authentication of its own.
//
// Credentials go only where the registry asks for them: to the token
// service its challenge names, or as Basic to the registry itself when it
// asks for Basic. A redirect to another host carries no Authorization.
type registryTransport struct {
	base     http.RoundTripper
	registry string // host[:port] the credentials belong to
	auth     docker.Authorizer
}

// maxRedirects is net/http's own limit.
const maxRedirects = 10

func newRegistryTransport(base http.RoundTripper, registry string, cred authn.Authenticator) *registryTransport {
	t := &registryTransport{base: base, registry: registry}
	creds := func(host string) (string, string, error) {
		if cred == nil || host != registry {
			return "", "", nil
		}
		cfg, err := cred.Authorization()
		if err != nil {
			return "", "", err
		}
		return userSecret(cfg)
	}
	t.auth = docker.NewDockerAuthorizer(
		docker.WithAuthClient(&http.Client{Transport: base}),
		docker.WithAuthCreds(creds),
	)
	return t
}

// userSecret is what a docker config entry gives containerd's authorizer.
func userSecret(cfg *authn.AuthConfig) (string, string, error) {
	switch {
	case cfg.Username != "":
		return cfg.Username, cfg.Password, nil
	case cfg.IdentityToken != "":
		return "", cfg.IdentityToken, nil
	case cfg.Auth != "":
		a, err := authn.FromConfig(authn.AuthConfig{Auth: cfg.Auth}).Authorization()
		if err != nil {
			return "", "", errors.New("credentials: auth is not base64 user:password")
		}
		return a.Username, a.Password, nil
	}
	return "", "", nil
}

func (t *registryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if repo := repository(req.URL.Path); repo != "" {
		ctx = docker.ContextWithAppendPullRepositoryScope(ctx, repo)
	}
	var challenged []*http.Response
	for {
		r := req.Clone(ctx)
		if r.URL.Host == t.registry {
			if err := t.auth.Authorize(ctx, r); err != nil {
				return nil, authError(err)
			}
		}
		resp, err := t.follow(r)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusUnauthorized || resp.Request.URL.Host != t.registry || len(challenged) == 3 {
			return resp, nil
		}
		challenged = append(challenged, resp)
		if err := t.auth.AddResponses(ctx, challenged); err != nil {
			return resp, nil // nothing more to try: the registry's 401 is the answer
		}
		drain(resp)
	}
}

// follow sends r and follows redirects itself, without Authorization to
// another host.
func (t *registryTransport) follow(r *http.Request) (*http.Response, error) {
	for i := 0; ; i++ {
		resp, err := t.base.RoundTrip(r)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			return resp, nil
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return resp, nil
		}
		loc, err := resp.Location()
		drain(resp)
		if err != nil {
			return nil, fmt.Errorf("%s %s: redirect: %w", r.Method, r.URL.Redacted(), err)
		}
		if i == maxRedirects {
			return nil, fmt.Errorf("%s %s: stopped after %d redirects", r.Method, r.URL.Redacted(), maxRedirects)
		}
		next := r.Clone(r.Context())
		next.URL, next.Host = loc, ""
		if loc.Host != r.URL.Host {
			next.Header.Del("Authorization")
		}
		r = next
	}
}

// repository is the repository of a registry API path,
// /v2/<repository>/(manifests|blobs|tags)/…, or "".
func repository(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return ""
	}
	for _, kind := range []string{"/manifests/", "/blobs/", "/tags/"} {
		if i := strings.LastIndex(rest, kind); i > 0 {
			return rest[:i]
		}
	}
	return ""
}

// authError makes a refused token request look like the registry's
// refusal, so that the next credential is tried.
func authError(err error) error {
	var status remoteerrors.ErrUnexpectedStatus
	if errors.As(err, &status) && (status.StatusCode == http.StatusUnauthorized || status.StatusCode == http.StatusForbidden) {
		return &transport.Error{StatusCode: status.StatusCode, Errors: []transport.Diagnostic{{Code: transport.UnauthorizedErrorCode, Message: "token service refused the credentials"}}}
	}
	if errors.Is(err, docker.ErrInvalidAuthorization) {
		return &transport.Error{StatusCode: http.StatusUnauthorized, Errors: []transport.Diagnostic{{Code: transport.UnauthorizedErrorCode, Message: "authorization failed"}}}
	}
	return err
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}
