package scale

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The counting proxies of the scale test. They follow blobWatch of
// integration/waves_agents_test.go (a package this one cannot import):
// blob GETs are held for a moment, as a large layer over a slow link
// would be, and counted; here also by node and in bytes.

// front is where the nodes' containerd reach the registry: every node has
// its own listener (its hosts.toml names it as the only host for the
// upstream registry), so the proxy knows which node a download is for.
// All of them forward to target: the upstream proxy, or the mirror.
type front struct {
	hosts  []string // per node
	target atomic.Value
	hold   time.Duration

	mu       sync.Mutex
	inFlight map[int]int // node -> blob GETs in flight
	pulling  int         // nodes with a blob GET in flight
	peak     int
	gets     int
}

func startFront(t *testing.T, nodes int, hold time.Duration) *front {
	t.Helper()
	f := &front{hold: hold, inFlight: map[int]int{}}
	rp := &httputil.ReverseProxy{
		Director: func(r *http.Request) {
			r.URL.Scheme = "http"
			r.URL.Host = f.target.Load().(string)
			r.Host = r.URL.Host
		},
		FlushInterval: -1,
		// A pull that gives up on a held download cancels it: no news.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	for i := range nodes {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f.hosts = append(f.hosts, lis.Addr().String())
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/blobs/") || r.Method != http.MethodGet {
				rp.ServeHTTP(w, r)
				return
			}
			f.mu.Lock()
			f.gets++
			if f.inFlight[i]++; f.inFlight[i] == 1 {
				f.pulling++
				f.peak = max(f.peak, f.pulling)
			}
			f.mu.Unlock()
			defer func() {
				f.mu.Lock()
				if f.inFlight[i]--; f.inFlight[i] == 0 {
					f.pulling--
				}
				f.mu.Unlock()
			}()
			select {
			case <-time.After(f.hold):
			case <-r.Context().Done():
				return
			}
			rp.ServeHTTP(w, r)
		})}
		go srv.Serve(lis)
		t.Cleanup(func() { srv.Close() })
	}
	return f
}

// reset starts a run: downloads go to target from now on.
func (f *front) reset(target string) {
	f.target.Store(target)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peak, f.gets = 0, 0
}

func (f *front) read() (peak, gets int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.peak, f.gets
}

// upstream is the byte-counting proxy in front of the registry: what the
// registry serves, whoever asks (nodes, or the mirror).
type upstream struct {
	host  string
	bytes atomic.Int64

	mu   sync.Mutex
	gets map[string]int // blob digest -> GETs
}

func startUpstream(t *testing.T, target string) *upstream {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{host: lis.Addr().String(), gets: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	rp.FlushInterval = -1
	rp.ErrorLog = log.New(io.Discard, "", 0)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, digest, ok := strings.Cut(r.URL.Path, "/blobs/"); ok && r.Method == http.MethodGet {
			u.mu.Lock()
			u.gets[digest]++
			u.mu.Unlock()
		}
		rp.ServeHTTP(&countingWriter{ResponseWriter: w, n: &u.bytes}, r)
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return u
}

func (u *upstream) reset() {
	u.bytes.Store(0)
	u.mu.Lock()
	defer u.mu.Unlock()
	clear(u.gets)
}

func (u *upstream) blobGets() map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[string]int{}
	for k, v := range u.gets {
		out[k] = v
	}
	return out
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n.Add(int64(n))
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
