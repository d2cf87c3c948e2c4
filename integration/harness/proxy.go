package harness

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// ProxyOptions shape the link a Proxy simulates.
type ProxyOptions struct {
	// Latency is added before each request is forwarded: a round trip to a
	// remote registry.
	Latency time.Duration
	// BytesPerSec caps each response body; 0 is unlimited.
	BytesPerSec int64
	// Fault, when set, may answer a request itself (an injected failure);
	// it returns false to let the request through.
	Fault func(w http.ResponseWriter, r *http.Request) bool
	// Hold, when set, holds the response bodies of the requests it
	// matches midway.
	Hold *Hold
	// Served, when set, is told of each response the registry gave once
	// it is sent: its status and how many body bytes went out.
	Served func(r *http.Request, status int, bytes int64)
}

// Proxy is a reverse proxy on 127.0.0.1 in front of a registry, to make a
// loopback registry behave like a remote one or a failing one, or to see
// what clients send it.
type Proxy struct {
	Host     string
	URL      string // "http://Host", or "https://Host" in front of a TLS registry
	Requests atomic.Int64
	opts     ProxyOptions
	srv      *http.Server
}

// StartProxy proxies plain HTTP to the plain-HTTP registry at targetHost.
func StartProxy(t T, targetHost string, opts ProxyOptions) *Proxy {
	t.Helper()
	return startProxy(t, &url.URL{Scheme: "http", Host: targetHost}, nil, "", "", opts)
}

// StartTLSProxy proxies to a TLS registry and serves HTTPS with the
// registry's own certificate: a client that trusts the registry's test CA
// (its CACertPath) trusts the proxy too.
func StartTLSProxy(t T, reg *Registry, opts ProxyOptions) *Proxy {
	t.Helper()
	if reg.CACertPath == "" {
		t.Fatalf("proxy: registry %s does not serve TLS", reg.Host)
	}
	cert, key := reg.ServerCertificate()
	return startProxy(t, &url.URL{Scheme: "https", Host: reg.Host}, reg.Transport(), cert, key, opts)
}

// startProxy serves plain HTTP, or TLS with certFile and keyFile when
// given, and forwards to target through transport (nil: the default).
func startProxy(t T, target *url.URL, transport http.RoundTripper, certFile, keyFile string, opts ProxyOptions) *Proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p := &Proxy{Host: lis.Addr().String(), opts: opts}
	p.URL = "http://" + p.Host
	if certFile != "" {
		p.URL = "https://" + p.Host
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = transport
	// Registries answer with absolute Location headers for blob redirects
	// only when configured to; distribution's defaults are relative, so no
	// rewriting is needed.
	rp.FlushInterval = -1
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.Requests.Add(1)
		if opts.Latency > 0 {
			select {
			case <-time.After(opts.Latency):
			case <-r.Context().Done():
				return
			}
		}
		if opts.Fault != nil && opts.Fault(w, r) {
			return
		}
		if opts.BytesPerSec > 0 {
			w = &throttledWriter{ResponseWriter: w, rate: opts.BytesPerSec, start: time.Now()}
		}
		if h := opts.Hold; h != nil && h.match(r) {
			w = &heldWriter{ResponseWriter: w, h: h, ctx: r.Context()}
		}
		if opts.Served != nil {
			cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
			defer func() { opts.Served(r, cw.status, cw.n) }()
			w = cw
		}
		rp.ServeHTTP(w, r)
	})}
	if certFile != "" {
		go p.srv.ServeTLS(lis, certFile, keyFile)
	} else {
		go p.srv.Serve(lis)
	}
	t.Cleanup(func() { p.srv.Close() })
	return p
}

// countingWriter counts a response's body bytes.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// throttledWriter paces one response to rate bytes per second.
type throttledWriter struct {
	http.ResponseWriter
	rate    int64
	start   time.Time
	written int64
}

func (w *throttledWriter) Write(b []byte) (int, error) {
	var n int
	for len(b) > 0 {
		chunk := b[:min(len(b), 32<<10)]
		m, err := w.ResponseWriter.Write(chunk)
		n += m
		w.written += int64(m)
		if err != nil {
			return n, err
		}
		b = b[m:]
		due := time.Duration(w.written * int64(time.Second) / w.rate)
		if wait := due - time.Since(w.start); wait > 0 {
			time.Sleep(wait)
		}
	}
	return n, nil
}

func (w *throttledWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hold stops response bodies after their first bytes until it is released:
// a download that provably started and cannot finish, for a test to
// interrupt at leisure rather than race against its end.
type Hold struct {
	after int64
	match func(*http.Request) bool

	mu       sync.Mutex
	held     int
	released chan struct{}
}

// NewHold holds the body of each request match accepts once after bytes
// of it are out, until Release; bodies no longer than that pass.
func NewHold(after int64, match func(*http.Request) bool) *Hold {
	return &Hold{after: after, match: match, released: make(chan struct{})}
}

// Held is how many bodies have been stopped so far, released or not.
func (h *Hold) Held() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held
}

// Release lets the bodies held, and all after, through. It may be called
// more than once.
func (h *Hold) Release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.released:
	default:
		close(h.released)
	}
}

// heldWriter passes h.after bytes of a body, flushes them to the client
// and waits for h's release or the request's end before the rest.
type heldWriter struct {
	http.ResponseWriter
	h       *Hold
	ctx     context.Context
	written int64
	done    bool // held once, or released before the point
}

func (w *heldWriter) Write(b []byte) (int, error) {
	if w.done || w.written+int64(len(b)) <= w.h.after {
		n, err := w.ResponseWriter.Write(b)
		w.written += int64(n)
		return n, err
	}
	k := w.h.after - w.written
	n, err := w.ResponseWriter.Write(b[:k])
	w.written += int64(n)
	if err != nil {
		return n, err
	}
	w.done = true
	select {
	case <-w.h.released:
	default:
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		w.h.mu.Lock()
		w.h.held++
		w.h.mu.Unlock()
		select {
		case <-w.h.released:
		case <-w.ctx.Done():
			return n, errors.New("held body: request ended")
		}
	}
	m, err := w.ResponseWriter.Write(b[k:])
	w.written += int64(m)
	return n + m, err
}

func (w *heldWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
