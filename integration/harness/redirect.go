package harness

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// BlobRedirect is a registry front that sends blob downloads elsewhere,
// as registries backed by an object store do (Docker Hub, ECR, GCR,
// distribution with S3): every request goes to the registry, but an
// authorized blob GET is answered with a 307 to the object store, which
// serves the blob, with Range, under another host name (localhost rather
// than 127.0.0.1: credentials must not follow the redirect).
type BlobRedirect struct {
	Host  string // the registry front, 127.0.0.1:PORT
	Store *ObjectStore
	srv   *http.Server
}

// ObjectStore serves a registry's blobs from its storage directory and
// records what it was asked.
type ObjectStore struct {
	Host        string // localhost:PORT
	ignoreRange bool
	mu          sync.Mutex
	asked       []*StoreRequest
	srv         *http.Server
}

var blobPath = regexp.MustCompile(`^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$`)

// StartBlobRedirect fronts reg; ignoreRange makes its object store
// answer every GET with the whole blob, as some proxies and object
// stores do.
func StartBlobRedirect(t T, reg *Registry, ignoreRange bool) *BlobRedirect {
	t.Helper()
	store := &ObjectStore{ignoreRange: ignoreRange}
	slis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("object store: %v", err)
	}
	_, port, _ := net.SplitHostPort(slis.Addr().String())
	store.Host = "localhost:" + port
	store.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		store.serve(w, r, reg.Dir)
	})}
	go store.srv.Serve(slis)
	t.Cleanup(func() { store.srv.Close() })

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("blob redirect: %v", err)
	}
	b := &BlobRedirect{Host: lis.Addr().String(), Store: store}
	target, _ := url.Parse(reg.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = reg.Transport()
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := blobPath.FindStringSubmatch(r.URL.Path)
		if r.Method != http.MethodGet || m == nil {
			rp.ServeHTTP(w, r)
			return
		}
		// The registry decides whether the client may have the blob.
		head, _ := http.NewRequestWithContext(r.Context(), http.MethodHead, reg.URL+r.URL.Path, nil)
		head.Header = r.Header.Clone()
		head.Header.Del("Range") // the whole blob's answer: 200, or why not
		resp, err := (&http.Client{Transport: reg.Transport()}).Do(head)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(resp.StatusCode)
			return
		}
		http.Redirect(w, r, "http://"+store.Host+"/blobs/"+m[2]+"?expires="+time.Now().Add(time.Hour).Format("20060102T150405"), http.StatusTemporaryRedirect)
	})}
	go b.srv.Serve(lis)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func (s *ObjectStore) serve(w http.ResponseWriter, r *http.Request, regDir string) {
	req := &StoreRequest{Range: r.Header.Get("Range"), Auth: r.Header.Get("Authorization") != ""}
	s.mu.Lock()
	s.asked = append(s.asked, req)
	s.mu.Unlock()
	dgst, ok := strings.CutPrefix(r.URL.Path, "/blobs/sha256:")
	if !ok || len(dgst) != 64 {
		http.NotFound(w, r)
		return
	}
	f, err := os.Open(filepath.Join(regDir, "data", "docker", "registry", "v2", "blobs", "sha256", dgst[:2], dgst, "data"))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	if s.ignoreRange {
		r.Header.Del("Range")
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(&countingResponse{ResponseWriter: w, n: &req.sent}, r, "", time.Time{}, f)
}

// StoreRequest is one request the object store answered.
type StoreRequest struct {
	Range string // "" for none
	Auth  bool   // it came with an Authorization header
	sent  atomic.Int64
}

// Sent is the body bytes it was sent.
func (r *StoreRequest) Sent() int64 { return r.sent.Load() }

// Asked is every request the store answered, in order.
func (s *ObjectStore) Asked() []*StoreRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*StoreRequest(nil), s.asked...)
}

type countingResponse struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countingResponse) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n.Add(int64(n))
	return n, err
}
