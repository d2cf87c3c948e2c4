package bundle_test

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/bundle"
)

// corpRegistry is a registry laid out as corporate ones are: a token
// service on another private address, blob downloads redirected to an
// object store on a third. The registry is addressed by name (localhost),
// the others by private IP literal, as a token realm and an object store
// URL usually are. It records which Authorization each host received.
type corpRegistry struct {
	host string // localhost:PORT
	mu   sync.Mutex
	seen map[string][]string // role -> Authorization headers received
}

const (
	corpUser     = "puller"
	corpPassword = "s3cret-pw"
	corpToken    = "opaque-token-1"
)

func startCorpRegistry(t *testing.T) *corpRegistry {
	t.Helper()
	c := &corpRegistry{seen: map[string][]string{}}
	backend := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(backend.Close)
	backendURL, _ := url.Parse(backend.URL)
	proxy := httputil.NewSingleHostReverseProxy(backendURL)

	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.record("token", r)
		if u, p, ok := r.BasicAuth(); !ok || u != corpUser || p != corpPassword {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"token":"`+corpToken+`","expires_in":300}`)
	}))
	t.Cleanup(tokens.Close)
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.record("store", r)
		r.URL.Path = strings.TrimPrefix(r.URL.Path, "/store")
		r.Header.Del("Authorization")
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(store.Close)

	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.record("registry", r)
		if r.Header.Get("Authorization") != "Bearer "+corpToken {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+tokens.URL+`/token",service="corp"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
			http.Redirect(w, r, store.URL+"/store"+r.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		r.Header.Del("Authorization")
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	c.host = strings.Replace(strings.TrimPrefix(front.URL, "http://"), "127.0.0.1", "localhost", 1)

	// The image, pushed to the backend directly.
	l, err := archivetest.Layer(7, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	img, err := archivetest.NewImage("linux/amd64", l)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(backendURL.Host + "/team/app:1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *corpRegistry) record(role string, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[role] = append(c.seen[role], r.Header.Get("Authorization"))
}

func (c *corpRegistry) authorizations(role string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.seen[role]...)
}

func TestWriteCorporateRegistry(t *testing.T) {
	c := startCorpRegistry(t)
	src := bundle.Source{Name: c.host + "/team/app:1"}
	var buf bytes.Buffer
	if err := writeWith(&buf, src, authn.AuthConfig{Username: corpUser, Password: corpPassword}); err != nil {
		t.Fatalf("bundle from a registry with its token service and object store on private addresses: %v", err)
	}
	if buf.Len() == 0 {
		t.Fatal("empty bundle")
	}
	// The password went to the token service only; the token to the
	// registry only; nothing to the object store.
	basic := "Basic " + base64(corpUser+":"+corpPassword)
	for role, allowed := range map[string][]string{"token": {"", basic}, "registry": {"", "Bearer " + corpToken}, "store": {""}} {
		got := c.authorizations(role)
		if len(got) == 0 {
			t.Errorf("%s: no request reached it", role)
		}
		for _, a := range got {
			if !contains(allowed, a) {
				t.Errorf("%s received Authorization %q, want one of %q", role, a, allowed)
			}
		}
	}

	// A wrong password: unauthorized, and the password is not quoted.
	err := writeWith(io.Discard, src, authn.AuthConfig{Username: corpUser, Password: "wrong-pw"})
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "unauthorized") || strings.Contains(err.Error(), "wrong-pw") {
		t.Errorf("err = %v, want unauthorized without the password", err)
	}
}

// writeWith bundles src for linux/amd64 from its registry with one
// credential (then anonymous).
func writeWith(w io.Writer, src bundle.Source, cred authn.AuthConfig) error {
	store := bundle.NewRegistry(func(string) []authn.Authenticator { return []authn.Authenticator{authn.FromConfig(cred)} }, nil)
	opts := bundle.Options{Platforms: bundle.Platforms{List: []ocispec.Platform{{OS: "linux", Architecture: "amd64"}}}}
	_, err := bundle.Write(context.Background(), w, store, []bundle.Source{src}, opts)
	return err
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func base64(s string) string {
	req, _ := http.NewRequest(http.MethodGet, "http://x", nil)
	u, p, _ := strings.Cut(s, ":")
	req.SetBasicAuth(u, p)
	return strings.TrimPrefix(req.Header.Get("Authorization"), "Basic ")
}

// A registry that asks for Basic: the password goes to it, and a wrong one
// is not sent again and again (an LDAP-backed account would lock). A
// registrytoken credential is sent as the bearer token it is.
func TestWriteBasicAndTokenRegistry(t *testing.T) {
	backend := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer backend.Close()
	backendURL, _ := url.Parse(backend.URL)
	proxy := httputil.NewSingleHostReverseProxy(backendURL)
	var mu sync.Mutex
	wrong := 0
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := r.Header.Get("Authorization")
		u, p, _ := r.BasicAuth()
		if a != "Bearer "+corpToken && (u != corpUser || p != corpPassword) {
			if a != "" {
				mu.Lock()
				wrong++
				mu.Unlock()
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="corp"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		r.Header.Del("Authorization")
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	host := strings.Replace(strings.TrimPrefix(front.URL, "http://"), "127.0.0.1", "localhost", 1)
	l, _ := archivetest.Layer(9, 1024, false)
	img, _ := archivetest.NewImage("linux/amd64", l)
	ref, _ := name.ParseReference(backendURL.Host + "/team/app:1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	write := func(cfg authn.AuthConfig) error {
		return writeWith(io.Discard, bundle.Source{Name: host + "/team/app:1"}, cfg)
	}
	if err := write(authn.AuthConfig{Username: corpUser, Password: corpPassword}); err != nil {
		t.Errorf("Basic: %v", err)
	}
	if err := write(authn.AuthConfig{RegistryToken: corpToken}); err != nil {
		t.Errorf("registrytoken: %v", err)
	}
	err := write(authn.AuthConfig{Username: corpUser, Password: "wrong-pw"})
	if err == nil || strings.Contains(err.Error(), "wrong-pw") {
		t.Errorf("wrong password: %v, want a failure without the password", err)
	}
	// go-containerregistry's ping and its manifest request: each may send
	// the password once, and no more.
	t.Logf("wrong password sent %d times", wrong)
	if wrong > 2 {
		t.Errorf("the wrong password was sent %d times, want at most once per request (2)", wrong)
	}
}
