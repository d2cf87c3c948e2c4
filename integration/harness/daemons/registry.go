package daemons

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/crypto/bcrypt"
)

// RegistryBinary is the Debian docker-registry package (distribution v2).
const RegistryBinary = "/usr/bin/docker-registry"

// RegistryOptions configure StartRegistry. The zero value is an anonymous
// plain-HTTP registry.
type RegistryOptions struct {
	Username string // when set, htpasswd (basic) auth with Password is required
	Password string
	TLS      bool // serve HTTPS with a certificate for 127.0.0.1 from a test CA
	// Token: the registry wants bearer tokens from a token service of its
	// own (Username and Password, if set, are the service's credentials)
	// instead of basic auth.
	Token bool
}

// Registry is a distribution registry on 127.0.0.1 with storage in its own
// directory. Stop and Start keep the port and the stored images, so tests can
// take it down and bring it back.
type Registry struct {
	Host       string // "127.0.0.1:PORT", the registry part of image references
	URL        string // "http://Host" or "https://Host"
	Username   string
	Password   string
	CACertPath string // PEM of the test CA when TLS, else ""
	// TokensIssued counts the tokens its token service issued (Token).
	TokensIssued *atomic.Int64
	Dir          string
	LogPath      string

	t      T
	caPool *x509.CertPool
	config string
	proc   *Process
}

// StartRegistry starts a registry and waits until /v2/ answers. It skips or
// fails the test (see Require) when the binary or root is missing. The
// registry is stopped when the test ends; its storage goes with t.TempDir.
func StartRegistry(t T, opts RegistryOptions) *Registry {
	t.Helper()
	Require(t, "docker-registry", RegistryBinary)
	r := &Registry{
		Username: opts.Username,
		Password: opts.Password,
		Dir:      t.TempDir(),
		t:        t,
	}
	r.LogPath = filepath.Join(r.Dir, "registry.log")
	r.config = filepath.Join(r.Dir, "config.yml")
	ports, err := FreePorts(1)
	if err != nil {
		t.Fatalf("registry: %v", err)
	}
	r.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	r.URL = "http://" + r.Host
	if opts.TLS {
		r.URL = "https://" + r.Host
	}
	if err := r.writeFiles(opts); err != nil {
		t.Fatalf("registry: %v", err)
	}
	t.Cleanup(func() {
		if r.running() {
			if err := r.proc.Stop(10 * time.Second); err != nil {
				t.Logf("registry: %v", err)
			}
		}
	})
	r.Start()
	return r
}

func (r *Registry) writeFiles(opts RegistryOptions) error {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	cfg := `version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: ` + strconv.Quote(filepath.Join(r.Dir, "data")) + `
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: ` + r.Host + `
  # A fixed secret keeps upload state valid across Stop and Start.
  secret: ` + hex.EncodeToString(secret) + `
`
	if opts.TLS {
		dir := filepath.Join(r.Dir, "tls")
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		pool, err := writeTestCerts(dir)
		if err != nil {
			return fmt.Errorf("test certificates: %w", err)
		}
		r.caPool = pool
		r.CACertPath = filepath.Join(dir, "ca.crt")
		cfg += `  tls:
    certificate: ` + strconv.Quote(filepath.Join(dir, "server.crt")) + `
    key: ` + strconv.Quote(filepath.Join(dir, "server.key")) + `
`
	}
	if opts.Token {
		ts, err := startTokenService(opts.Username, opts.Password, filepath.Join(r.Dir, "token.crt"))
		if err != nil {
			return fmt.Errorf("token service: %w", err)
		}
		r.t.Cleanup(ts.close)
		r.TokensIssued = &ts.Issued
		cfg += `auth:
  token:
    realm: ` + ts.URL + `
    service: ` + tokenAudience + `
    issuer: ` + tokenIssuer + `
    rootcertbundle: ` + strconv.Quote(filepath.Join(r.Dir, "token.crt")) + `
`
		return os.WriteFile(r.config, []byte(cfg), 0o600)
	}
	if opts.Username != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.MinCost)
		if err != nil {
			return fmt.Errorf("htpasswd: %w", err)
		}
		htpasswd := filepath.Join(r.Dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(opts.Username+":"+string(hash)+"\n"), 0o600); err != nil {
			return err
		}
		cfg += `auth:
  htpasswd:
    realm: harness
    path: ` + strconv.Quote(htpasswd) + `
`
	}
	return os.WriteFile(r.config, []byte(cfg), 0o600)
}

// Start starts the registry (again) on the same port and storage and waits
// until it answers.
func (r *Registry) Start() {
	r.t.Helper()
	if r.running() {
		r.t.Fatalf("registry: Start while running")
	}
	// REGISTRY_* variables override the config file; keep the test's out.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REGISTRY_") {
			env = append(env, kv)
		}
	}
	start := time.Now()
	p, err := StartProcess(r.LogPath, env, RegistryBinary, "serve", r.config)
	if err != nil {
		r.t.Fatalf("registry: %v", err)
	}
	r.proc = p
	if err := r.waitReady(15 * time.Second); err != nil {
		r.proc.Kill()
		r.t.Fatalf("registry did not become ready: %v\nlog %s:\n%s", err, r.LogPath, LogTail(r.LogPath, 30))
	}
	r.t.Logf("registry ready in %s at %s", time.Since(start).Round(time.Millisecond), r.URL)
}

// waitReady polls GET /v2/ until it answers; 401 means up, with auth.
func (r *Registry) waitReady(timeout time.Duration) error {
	client := &http.Client{Transport: r.Transport(), Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		if done, err := r.proc.Exited(); done {
			return fmt.Errorf("docker-registry exited: %v", err)
		}
		resp, err := client.Get(r.URL + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
			err = fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the registry (SIGTERM); Start brings it back.
func (r *Registry) Stop() {
	r.t.Helper()
	if !r.running() {
		return
	}
	if err := r.proc.Stop(10 * time.Second); err != nil {
		r.t.Errorf("registry: %v", err)
	}
}

func (r *Registry) running() bool {
	if r.proc == nil {
		return false
	}
	done, _ := r.proc.Exited()
	return !done
}

// Transport returns an HTTP transport that trusts the registry's test CA.
func (r *Registry) Transport() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if r.caPool != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: r.caPool}
	}
	return tr
}

// ServerCertificate is the registry's TLS certificate and key files (for
// 127.0.0.1, from its test CA); "" without TLS.
func (r *Registry) ServerCertificate() (certFile, keyFile string) {
	if r.CACertPath == "" {
		return "", ""
	}
	dir := filepath.Dir(r.CACertPath)
	return filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
}

// Authenticator returns the credentials for go-containerregistry clients.
func (r *Registry) Authenticator() authn.Authenticator {
	if r.Username == "" {
		return authn.Anonymous
	}
	return &authn.Basic{Username: r.Username, Password: r.Password}
}

// TrustIn writes <c.ConfigPath>/<Host>/hosts.toml so that containerd's CRI
// reaches this registry with the right scheme and trusts its test CA.
func (r *Registry) TrustIn(c *Containerd) {
	r.t.Helper()
	if err := c.WriteHosts(r.Host, r.URL, r.URL, r.CACertPath); err != nil {
		r.t.Fatalf("registry: %v", err)
	}
}

// MirrorFor makes this registry (its URL and test CA) host's mirror in c,
// as an admin's certs.d/<host>/hosts.toml would. The server is a local
// port that refuses, not host's real name: a pull the mirror does not
// serve fails here instead of leaving 127.0.0.1.
func (r *Registry) MirrorFor(c *Containerd, host string) {
	r.t.Helper()
	if err := c.WriteHosts(host, "https://127.0.0.1:1", r.URL, r.CACertPath); err != nil {
		r.t.Fatalf("registry: %v", err)
	}
}

// writeTestCerts writes ca.crt, server.crt and server.key (for 127.0.0.1 and
// localhost) into dir and returns a pool holding the CA.
func writeTestCerts(dir string) (*x509.CertPool, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kube-preloader test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	files := map[string]*pem.Block{
		"ca.crt":     {Type: "CERTIFICATE", Bytes: caDER},
		"server.crt": {Type: "CERTIFICATE", Bytes: der},
		"server.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	}
	for name, block := range files {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, nil
}

// FreePorts reserves n distinct ephemeral ports on 127.0.0.1 and releases
// them for the caller to bind.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
