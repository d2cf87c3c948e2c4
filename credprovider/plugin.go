package credprovider

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	"golang.org/x/sync/singleflight"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	credv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"
	sigsjson "sigs.k8s.io/json"

	"github.com/kube-preloader/kube-preloader/cri/keyring"
	"github.com/kube-preloader/kube-preloader/failure"
)

// DefaultTimeout is the kubelet's fixed bound on one run of a plugin.
const DefaultTimeout = time.Minute

// Options are what tests change; the zero value is the kubelet's.
type Options struct {
	// Timeout bounds one run of a plugin; 0 is DefaultTimeout.
	Timeout time.Duration
	// Environ is the environment a plugin starts from, before its
	// provider's env; nil is os.Environ.
	Environ func() []string
	// Now is the clock of the cache; nil is time.Now.
	Now func() time.Time
}

// Plugins runs the configured providers' plugins from one bin dir. Lookup
// may run concurrently.
type Plugins struct {
	providers []*plugin
}

// New prepares cfg's providers, run from binDir. Binaries are looked for
// when an image needs them: a missing one fails those images only.
func New(cfg *Config, binDir string, opts Options) *Plugins {
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Environ == nil {
		opts.Environ = os.Environ
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ps := &Plugins{}
	for _, p := range cfg.Providers {
		ps.providers = append(ps.providers, &plugin{
			Provider: p,
			bin:      filepath.Join(binDir, p.Name),
			opts:     opts,
			cache:    map[string]cacheEntry{},
			learning: make(chan struct{}, 1),
		})
	}
	return ps
}

// Matches says whether some provider's matchImages match image, that is
// whether Lookup would run a plugin for it.
func (ps *Plugins) Matches(image string) bool {
	repo, err := repository(image)
	if err != nil {
		return false
	}
	for _, p := range ps.providers {
		if p.matches(repo) {
			return true
		}
	}
	return false
}

// Tokens is where a provider with tokenAttributes gets the service
// account data and token the kubelet would send it. Errors must not hold
// a token.
type Tokens interface {
	// ServiceAccount returns the named ServiceAccount's UID and
	// annotations.
	ServiceAccount(ctx context.Context, name string) (uid string, annotations map[string]string, err error)
	// Token returns a token of the ServiceAccount name (whose UID is uid)
	// for audience.
	Token(ctx context.Context, name, uid, audience string) (string, error)
}

// Identity is whose service account token the providers with
// tokenAttributes receive for an image: the ServiceAccount Name, from
// Tokens. Name "" is an image without one, as the kubelet sees a pod
// without a service account; Tokens nil is a preloader without an API
// server to ask.
type Identity struct {
	Tokens Tokens
	Name   string
}

// Lookup returns the credentials the providers give for image, as the
// kubelet's plugin keyring does: every matching provider's answer in one
// keyring, looked up for the image. A provider that fails adds an *Error;
// the others' credentials are returned all the same. id is whose token
// the providers with tokenAttributes get.
func (ps *Plugins) Lookup(ctx context.Context, image string, id Identity) ([]*keyring.AuthConfig, error) {
	repo, err := repository(image)
	if err != nil {
		return nil, nil // the keyring finds nothing for it either
	}
	k := &keyring.Keyring{}
	var errs []error
	for _, p := range ps.providers {
		if !p.matches(repo) {
			continue
		}
		cfg, err := p.provide(ctx, repo, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		k.Add("credential provider "+p.Name, cfg)
	}
	return k.Lookup(repo), errors.Join(errs...)
}

// repository is what the kubelet matches and sends a plugin: the
// normalized name without tag or digest ("docker.io/library/nginx").
func repository(image string) (string, error) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", err
	}
	return named.Name(), nil
}

// Kind is how a plugin failed.
type Kind string

const (
	Missing       Kind = "missing"        // no binary at bin dir/name
	NotExecutable Kind = "not executable" // there, but cannot be run
	TimedOut      Kind = "timed out"      // ran longer than the timeout
	Crashed       Kind = "failed"         // exited non-zero or was killed
	BadResponse   Kind = "bad response"   // stdout is not a CredentialProviderResponse
	WrongVersion  Kind = "wrong apiVersion"
	NoToken       Kind = "no service account token" // tokenAttributes, and no token to send
	TokenEchoed   Kind = "answered with the token"  // the password is the token, cacheType not Token
)

// Error is a provider that gave no credentials for an image. Its text
// says which provider and how it failed, never what the plugin printed.
type Error struct {
	Provider string
	Kind     Kind
	Detail   string
}

func (e *Error) Error() string {
	return fmt.Sprintf("credential provider %s: %s: %s", e.Provider, e.Kind, e.Detail)
}

// Reason is credentials: retrying the pull cannot help while the plugin
// fails the same way.
func (e *Error) Reason() failure.Reason { return failure.Credentials(e.Error()) }

type plugin struct {
	Provider
	bin  string
	opts Options

	group singleflight.Group

	mu sync.Mutex
	// keyType is the cacheKeyType of the last answer, "" before one.
	keyType credv1.PluginCacheKeyType
	// learning is held (a slot of one) by the one run that learns
	// keyType, so that concurrent first lookups do not each run the plugin.
	learning chan struct{}
	cache    map[string]cacheEntry
	swept    time.Time // last removal of every expired entry
}

// sweepEvery bounds how long expired entries of keys never looked up
// again stay, as the kubelet's purge interval does.
const sweepEvery = 15 * time.Minute

type cacheEntry struct {
	cfg       keyring.DockerConfig
	expiresAt time.Time
}

// globalKey cannot be an image or registry name.
const globalKey = "<global>"

func (p *plugin) matches(repo string) bool {
	for _, m := range p.MatchImages {
		if ok, _ := keyring.URLsMatch(m, repo); ok {
			return true
		}
	}
	return false
}

// registry is the kubelet's parseRegistry: the host, with its port.
func registry(repo string) string {
	host, _, _ := strings.Cut(repo, "/")
	return host
}

// cacheKey is where an answer of type t for repo is cached; sa is the
// service account part of the key ("" without a token).
func cacheKey(t credv1.PluginCacheKeyType, repo, sa string) string {
	switch t {
	case credv1.RegistryPluginCacheKeyType:
		repo = registry(repo)
	case credv1.GlobalPluginCacheKeyType:
		repo = globalKey
	}
	if sa == "" {
		return repo
	}
	return keyOf(repo, sa)
}

// keyOf joins parts without ambiguity: each is length-prefixed.
func keyOf(parts ...string) string {
	var b strings.Builder
	for _, s := range parts {
		fmt.Fprintf(&b, "%d:%s", len(s), s)
	}
	return b.String()
}

// cached looks repo up as the kubelet does: by image, by registry, then
// the global key, each with the service account part sa; expired entries
// go.
func (p *plugin) cached(repo, sa string) (keyring.DockerConfig, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.opts.Now()
	if now.Sub(p.swept) > sweepEvery {
		for key, e := range p.cache {
			if now.After(e.expiresAt) {
				delete(p.cache, key)
			}
		}
		p.swept = now
	}
	for _, t := range []credv1.PluginCacheKeyType{credv1.ImagePluginCacheKeyType, credv1.RegistryPluginCacheKeyType, credv1.GlobalPluginCacheKeyType} {
		key := cacheKey(t, repo, sa)
		e, ok := p.cache[key]
		if !ok {
			continue
		}
		if now.After(e.expiresAt) {
			delete(p.cache, key)
			continue
		}
		return e.cfg, true
	}
	return nil, false
}

type answer struct {
	cfg     keyring.DockerConfig
	keyType credv1.PluginCacheKeyType
	repo    string
}

// request is one run's input: the image and, for a provider with
// tokenAttributes, the service account's token and annotations.
type request struct {
	repo        string
	token       string
	annotations map[string]string
	// saKey is the service account part of the cache key, the kubelet's:
	// name, UID, annotations, and the token's hash for cacheType Token.
	saKey string
	// flight is the kubelet's singleflight key with a token: image, token
	// hash, annotations.
	flight string
}

// provide returns the provider's credentials for repo, from the cache or
// one run of the plugin per cache key at a time. A nil config without an
// error is a provider the kubelet would not run for this identity.
func (p *plugin) provide(ctx context.Context, repo string, id Identity) (keyring.DockerConfig, error) {
	req := request{repo: repo}
	if p.TokenAttributes != nil {
		run, err := p.serviceAccount(ctx, &req, id)
		if err != nil || !run {
			return nil, err
		}
	}
	if cfg, ok := p.cached(repo, req.saKey); ok {
		return cfg, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if req.token != "" {
		a, err := p.do(ctx, req.flight, req)
		return a.cfg, err
	}
	p.mu.Lock()
	keyType := p.keyType
	p.mu.Unlock()
	if keyType == "" {
		// Until an answer says what the cache key is, one run at a time.
		select {
		case p.learning <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-p.learning }()
		if cfg, ok := p.cached(repo, ""); ok {
			return cfg, nil
		}
		p.mu.Lock()
		keyType = p.keyType
		p.mu.Unlock()
	}
	a, err := p.do(ctx, cacheKey(keyType, repo, ""), req)
	if err == nil && a.keyType == credv1.ImagePluginCacheKeyType && a.repo != repo {
		// Shared a run for another image of what turned out to be a
		// per-image answer: this image needs its own.
		a, err = p.do(ctx, repo, req)
	}
	if err != nil {
		return nil, err
	}
	return a.cfg, nil
}

// serviceAccount fills req's token part as the kubelet does for a pod
// whose service account is id's, and says whether the plugin runs: not
// when a required annotation is missing (the kubelet's opt-in for
// workloads: the provider then gives nothing, and no error).
func (p *plugin) serviceAccount(ctx context.Context, req *request, id Identity) (bool, error) {
	t := p.TokenAttributes
	fail := func(format string, args ...any) (bool, error) {
		return false, &Error{Provider: p.Name, Kind: NoToken, Detail: fmt.Sprintf(format, args...)}
	}
	switch {
	case id.Name == "" && !t.RequireServiceAccount:
		return true, nil // the kubelet runs it without a token for a pod without a service account
	case id.Tokens == nil:
		return fail("the provider wants a token for audience %q, and preloader once has no service account to request one with (the agent has, for images that name a serviceAccount)", t.ServiceAccountTokenAudience)
	case id.Name == "":
		return fail("the provider requires a service account token for audience %q, and the image names no serviceAccount", t.ServiceAccountTokenAudience)
	}
	uid, all, err := id.Tokens.ServiceAccount(ctx, id.Name)
	if err != nil {
		return fail("serviceaccount %s: %v", id.Name, err)
	}
	annotations := map[string]string{}
	for _, k := range t.RequiredServiceAccountAnnotationKeys {
		v, ok := all[k]
		if !ok {
			return false, nil
		}
		annotations[k] = v
	}
	for _, k := range t.OptionalServiceAccountAnnotationKeys {
		if v, ok := all[k]; ok {
			annotations[k] = v
		}
	}
	token, err := id.Tokens.Token(ctx, id.Name, uid, t.ServiceAccountTokenAudience)
	if err != nil {
		return fail("token of serviceaccount %s for audience %q: %v", id.Name, t.ServiceAccountTokenAudience, err)
	}
	if token == "" {
		return fail("the API server gave serviceaccount %s an empty token", id.Name)
	}
	hash := fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(token)))
	ak := annotationsKey(annotations)
	req.token, req.annotations = token, annotations
	req.saKey = keyOf(id.Name, uid, ak)
	if t.CacheType == "Token" {
		req.saKey = keyOf(req.saKey, "token", hash)
	}
	req.flight = keyOf(req.repo, hash, ak)
	return true, nil
}

// annotationsKey is annotations in key order, unambiguous.
func annotationsKey(annotations map[string]string) string {
	keys := make([]string, 0, len(annotations))
	for k := range annotations {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		parts = append(parts, k, annotations[k])
	}
	return keyOf(parts...)
}

// do runs the plugin for req once per key at a time; a caller whose ctx
// ends stops waiting, the run goes on for the others (bounded by the
// timeout).
func (p *plugin) do(ctx context.Context, key string, req request) (answer, error) {
	ch := p.group.DoChan(key, func() (any, error) {
		if cfg, ok := p.cached(req.repo, req.saKey); ok {
			return answer{cfg, "", req.repo}, nil
		}
		return p.run(context.WithoutCancel(ctx), req)
	})
	select {
	case <-ctx.Done():
		return answer{}, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return answer{}, r.Err
		}
		return r.Val.(answer), nil
	}
}

// maxStdout bounds what is read of a plugin's answer; real ones are
// hundreds of bytes, tokens included.
const maxStdout = 1 << 20

// run execs the plugin once as the kubelet does, and caches its answer.
func (p *plugin) run(ctx context.Context, r request) (answer, error) {
	repo := r.repo
	fail := func(kind Kind, format string, args ...any) (answer, error) {
		return answer{}, &Error{Provider: p.Name, Kind: kind, Detail: fmt.Sprintf(format, args...)}
	}
	info, err := os.Stat(p.bin)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fail(Missing, "no plugin binary %s", p.bin)
	case err != nil:
		return fail(NotExecutable, "%v", err)
	case !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0:
		return fail(NotExecutable, "%s is not an executable file (mode %s)", p.bin, info.Mode())
	}

	req, err := json.Marshal(credv1.CredentialProviderRequest{
		TypeMeta: metav1.TypeMeta{APIVersion: p.APIVersion, Kind: "CredentialProviderRequest"},
		Image:    repo,
		// Only with tokenAttributes, which only v1 configs have.
		ServiceAccountToken:       r.token,
		ServiceAccountAnnotations: r.annotations,
	})
	if err != nil {
		return answer{}, fmt.Errorf("credential provider %s: request: %w", p.Name, err)
	}

	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.bin, p.Args...)
	env := p.opts.Environ()
	for _, e := range p.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	cmd.Env = env // os/exec keeps the last of duplicate names: the provider's env wins
	var stdout, stderr counting
	stdout.limit, stderr.limit = maxStdout, 0
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(req), &stdout, &stderr
	// A plugin's children may hold its stdout open after it is killed.
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	// Only sizes of what it printed: stdout holds credentials, and stderr
	// may (the kubelet puts it in its error).
	printed := fmt.Sprintf("%d bytes on stderr, not shown", stderr.n)
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return fail(TimedOut, "no answer after %s (%s)", p.opts.Timeout, printed)
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, os.ErrPermission):
		return fail(NotExecutable, "%s cannot be run", p.bin)
	case err != nil:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return fail(Crashed, "%s (%s)", exit.ProcessState, printed)
		}
		var pathErr *os.PathError
		if errors.As(err, &pathErr) {
			return fail(NotExecutable, "%s cannot be run: %v", p.bin, pathErr.Err)
		}
		return fail(Crashed, "%s cannot be run (%s)", p.bin, printed)
	case stdout.n > maxStdout:
		return fail(BadResponse, "more than %d bytes on stdout", maxStdout)
	}

	resp, err := p.decode(stdout.buf.Bytes())
	if err != nil {
		return answer{}, err
	}
	if r.token != "" && p.TokenAttributes.CacheType != "Token" {
		// As the kubelet: credentials that are the token itself may only
		// be cached with the token.
		for _, a := range resp.Auth {
			if a.Password == r.token {
				return fail(TokenEchoed, "the password is the service account token, which only cacheType Token allows")
			}
		}
	}
	cfg := keyring.DockerConfig{}
	for match, a := range resp.Auth {
		cfg[match] = keyring.DockerConfigEntry{Username: a.Username, Password: a.Password}
	}
	a := answer{cfg: cfg, keyType: resp.CacheKeyType, repo: repo}

	ttl := p.DefaultCacheDuration
	if resp.CacheDuration != nil {
		ttl = resp.CacheDuration.Duration
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keyType = resp.CacheKeyType
	if ttl > 0 {
		p.cache[cacheKey(resp.CacheKeyType, repo, r.saKey)] = cacheEntry{cfg, p.opts.Now().Add(ttl)}
	}
	return a, nil
}

// decode checks and reads a plugin's answer as the kubelet does: its
// apiVersion first, then a strict decoding. Errors describe the answer by
// its shape, never by its content.
func (p *plugin) decode(out []byte) (*credv1.CredentialProviderResponse, error) {
	fail := func(kind Kind, format string, args ...any) (*credv1.CredentialProviderResponse, error) {
		return nil, &Error{Provider: p.Name, Kind: kind, Detail: fmt.Sprintf(format, args...)}
	}
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(out, &meta); err != nil {
		return fail(BadResponse, "stdout (%d bytes) is not a JSON object", len(out))
	}
	if meta.APIVersion != p.APIVersion {
		return fail(WrongVersion, "answered %s, want %s", printable(meta.APIVersion, versionShape), p.APIVersion)
	}
	if meta.Kind != "CredentialProviderResponse" {
		return fail(BadResponse, "kind %s, want CredentialProviderResponse", printable(meta.Kind, nameShape))
	}
	// The v1alpha1 and v1beta1 answers are v1's without additions.
	var resp credv1.CredentialProviderResponse
	strict, err := sigsjson.UnmarshalStrict(out, &resp)
	if err != nil {
		return fail(BadResponse, "stdout (%d bytes) is not a CredentialProviderResponse", len(out))
	}
	if len(strict) > 0 {
		var fe sigsjson.FieldError
		if errors.As(strict[0], &fe) {
			return fail(BadResponse, "unknown or duplicate field %s", printable(fe.FieldPath(), fieldShape))
		}
		return fail(BadResponse, "not a strict CredentialProviderResponse")
	}
	switch resp.CacheKeyType {
	case credv1.ImagePluginCacheKeyType, credv1.RegistryPluginCacheKeyType, credv1.GlobalPluginCacheKeyType:
	default:
		return fail(BadResponse, "cacheKeyType %s is not Image, Registry or Global", printable(string(resp.CacheKeyType), nameShape))
	}
	if resp.CacheDuration != nil && resp.CacheDuration.Duration < 0 {
		return fail(BadResponse, "negative cacheDuration")
	}
	return &resp, nil
}

// Shapes of what a plugin's answer may show of a field that is not a
// credential, should it be wrong; anything else is described by its
// length, as a confused plugin may print a token anywhere.
var (
	versionShape = regexp.MustCompile(`^[a-z0-9.-]+/v[0-9]+((alpha|beta)[0-9]+)?$`)
	nameShape    = regexp.MustCompile(`^[A-Z][A-Za-z]{0,63}$`)
	fieldShape   = regexp.MustCompile(`^[a-z][A-Za-z0-9]{0,63}(\.[a-z][A-Za-z0-9]{0,63}|\[[0-9]+\])*$`)
)

func printable(s string, shape *regexp.Regexp) string {
	switch {
	case s == "":
		return "nothing"
	case len(s) <= 100 && shape.MatchString(s):
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("a value of %d bytes, not shown", len(s))
}

// counting keeps up to limit bytes and counts all of them. It has no
// ReadFrom, so that io.Copy goes through Write.
type counting struct {
	buf   bytes.Buffer
	limit int
	n     int
}

func (c *counting) Write(b []byte) (int, error) {
	c.n += len(b)
	if room := c.limit - c.buf.Len(); room > 0 {
		c.buf.Write(b[:min(room, len(b))])
	}
	return len(b), nil
}
