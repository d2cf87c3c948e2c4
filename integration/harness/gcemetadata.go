package harness

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

const (
	// GCPAccessToken is the access token the metadata stub hands out for
	// the node's default service account; a registry behind the Google
	// names accepts it as the password of GCPTokenUser, as Artifact
	// Registry does.
	GCPAccessToken = "ya29.gcp-token-Rk7wN2-never-print-me"
	GCPTokenUser   = "_token"

	// gceMetadataHost is the name gcp-credential-provider asks, with a
	// trailing dot, so that no search domain is tried.
	gceMetadataHost = "metadata.google.internal"
	gceTokenPath    = "/computeMetadata/v1/instance/service-accounts/default/token"
)

// GCEMetadataStub is the GCE metadata server's token endpoint on port 80
// of a loopback address of its own, 127.a.b.c, picked at random so that
// tests running at once do not collide: the name metadata.google.internal
// reaches it only in a process started with WithHosts and Hosts. It
// counts the token requests.
type GCEMetadataStub struct {
	// IP is the stub's loopback address.
	IP     string
	status int

	mu    sync.Mutex
	calls int
}

// StartGCEMetadataStub serves the stub until the test ends. With status
// 0 it answers every token request with GCPAccessToken; with another
// status, that status and no token (a metadata server that fails).
func StartGCEMetadataStub(t T, status int) *GCEMetadataStub {
	t.Helper()
	Require(t, "unshare (util-linux)", "/usr/bin/unshare")
	Require(t, "mount (util-linux)", "/usr/bin/mount")
	s := &GCEMetadataStub{status: status}
	var (
		ln  net.Listener
		err error
	)
	for range 20 {
		ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(254), rand.IntN(256), 1+rand.IntN(254))
		if ln, err = net.Listen("tcp", net.JoinHostPort(ip, "80")); err == nil {
			s.IP = ip
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		t.Fatalf("GCE metadata stub: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The plugin's client sends the name it resolved, trailing dot
		// and all: a request that got here another way is not the one
		// under test.
		if r.Method != http.MethodGet || r.URL.Path != gceTokenPath || r.Host != gceMetadataHost+"." ||
			r.Header.Get("Metadata-Flavor") != "Google" {
			t.Errorf("GCE metadata stub: unexpected %s http://%s%s, Metadata-Flavor %q", r.Method, r.Host, r.URL, r.Header.Get("Metadata-Flavor"))
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.calls++
		s.mu.Unlock()
		if s.status != 0 {
			http.Error(w, "metadata stub failing as told", s.status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Metadata-Flavor", "Google")
		fmt.Fprintf(w, `{"access_token":%q,"expires_in":3599,"token_type":"Bearer"}`, GCPAccessToken)
	})}
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	t.Cleanup(func() { srv.Close() })
	return s
}

// Calls is how many token requests the stub has had.
func (s *GCEMetadataStub) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// Hosts writes the machine's /etc/hosts plus metadata.google.internal at
// the stub's address into a file of the test, for WithHosts.
func (s *GCEMetadataStub) Hosts(t T) string {
	t.Helper()
	hosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatalf("GCE metadata stub: %v", err)
	}
	hosts = fmt.Appendf(hosts, "\n%s %s\n", s.IP, gceMetadataHost)
	p := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(p, hosts, 0o644); err != nil {
		t.Fatalf("GCE metadata stub: %v", err)
	}
	return p
}

// WithHosts returns the program and arguments that run bin with args in a
// private mount namespace of their own, where the file hosts is bound over
// /etc/hosts: bin and its children (a credential provider plugin) resolve
// names from it, and nothing changes for the rest of the machine. unshare
// and the shell exec bin in their place, so the process's pid, signals and
// exit status are bin's.
func WithHosts(hosts, bin string, args ...string) (string, []string) {
	return "/usr/bin/unshare", append([]string{"--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", `/usr/bin/mount --bind "$0" /etc/hosts && exec "$@"`, hosts, bin}, args...)
}
