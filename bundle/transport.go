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
// asks for Basic, and only over the scheme it asked on: go-containerregistry
// pings a registry on a private address over https and http at once, and
// an answer over https must not send the password over http. A redirect to
// another host or scheme carries no Authorization.
type registryTransport struct {
	base     http.RoundTripper
	registry string // host[:port] the credentials belong to
	// auth is one authorizer per scheme: containerd's keys its handlers
	// by host alone.
	auth map[string]docker.Authorizer
	// bearer is a registry token from the docker config (registrytoken),
	// sent as it is; no challenge needs answering for it.
	bearer string
}

// maxRedirects is net/http's own limit.
const maxRedirects = 10

func newRegistryTransport(base http.RoundTripper, registry string, cred authn.Authenticator) *registryTransport {
	t := &registryTransport{base: base, registry: registry, auth: map[string]docker.Authorizer{}}
	var cfg *authn.AuthConfig
	if cred != nil {
		cfg, _ = cred.Authorization() // authn.FromConfig cannot fail
	}
	if cfg != nil && cfg.RegistryToken != "" {
		t.bearer = cfg.RegistryToken
	}
	creds := func(host string) (string, string, error) {
		if cfg == nil || host != registry {
			return "", "", nil
		}
		return userSecret(cfg)
	}
	for _, scheme := range []string{"https", "http"} {
		t.auth[scheme] = docker.NewDockerAuthorizer(
			docker.WithAuthClient(&http.Client{Transport: base}),
			docker.WithAuthCreds(creds),
		)
	}
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
	auth := t.auth[req.URL.Scheme]
	var challenged []*http.Response
	for {
		r := req.Clone(ctx)
		if r.URL.Host == t.registry {
			switch {
			case t.bearer != "":
				r.Header.Set("Authorization", "Bearer "+t.bearer)
			case auth != nil:
				if err := auth.Authorize(ctx, r); err != nil {
					return nil, authError(err)
				}
			}
		}
		resp, last, err := t.follow(r)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusUnauthorized || last.URL.Host != t.registry || last.URL.Scheme != req.URL.Scheme ||
			auth == nil || t.bearer != "" || len(challenged) == 3 {
			return resp, nil
		}
		// A refused Basic password is final: sent again it would only
		// count against the account. Bearer challenges are retried as
		// containerd does (a new scope, an expired token).
		if last.Header.Get("Authorization") != "" && !isBearer(resp) {
			return resp, nil
		}
		challenged = append(challenged, resp)
		if err := auth.AddResponses(ctx, challenged); err != nil {
			return resp, nil // nothing more to try: the registry's 401 is the answer
		}
		drain(resp)
	}
}

func isBearer(resp *http.Response) bool {
	for _, h := range resp.Header.Values("WWW-Authenticate") {
		if strings.HasPrefix(strings.ToLower(strings.TrimSpace(h)), "bearer") {
			return true
		}
	}
	return false
}

// follow sends r and follows redirects itself, without Authorization to
// another host or scheme; it returns the response and the request that
// got it.
func (t *registryTransport) follow(r *http.Request) (*http.Response, *http.Request, error) {
	for i := 0; ; i++ {
		resp, err := t.base.RoundTrip(r)
		if err != nil {
			return nil, nil, err
		}
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			return resp, r, nil
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return resp, r, nil
		}
		loc, err := resp.Location()
		drain(resp)
		if err != nil {
			return nil, nil, fmt.Errorf("%s %s: redirect: %w", r.Method, r.URL.Redacted(), err)
		}
		if i == maxRedirects {
			return nil, nil, fmt.Errorf("%s %s: stopped after %d redirects", r.Method, r.URL.Redacted(), maxRedirects)
		}
		next := r.Clone(r.Context())
		next.URL, next.Host = loc, ""
		if loc.Host != r.URL.Host || loc.Scheme != r.URL.Scheme {
			next.Header.Del("Authorization")
		}
		r = next
	}
}

// repository is the repository of a registry API path,
// /v2/<repository>/(manifests|blobs|tags)/…, or "": the repository ends
// where the last of those components starts, as a repository may itself
// have a component named "manifests".
func repository(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return ""
	}
	end := -1
	for _, kind := range []string{"/manifests/", "/blobs/", "/tags/"} {
		end = max(end, strings.LastIndex(rest, kind))
	}
	if end <= 0 {
		return ""
	}
	return rest[:end]
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
