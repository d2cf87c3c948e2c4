package harness

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
)

// SocketProxy forwards a unix socket, such as containerd's gRPC socket, and
// can cap the bytes its clients send through it. Past the cap a client's
// bytes wait in the proxy: a call that needs more than the cap is provably
// in flight, and stays so, until the test raises the cap or the server
// goes away. Replies are never held.
type SocketProxy struct {
	Path    string // the socket clients dial
	backend string
	lis     net.Listener

	mu      sync.Mutex
	sent    int64         // client bytes forwarded, over all connections
	limit   int64         // cap on sent; negative: none
	waiting int           // connections with bytes held at the cap
	changed chan struct{} // closed and replaced when limit changes
	stops   map[*sync.Once]func()
}

// StartSocketProxy listens on a fresh socket and forwards every connection
// to the socket at backend, dialled anew for each; it starts with no cap.
func StartSocketProxy(t T, backend string) *SocketProxy {
	t.Helper()
	// A short directory: socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "sockproxy-")
	if err != nil {
		t.Fatalf("socket proxy: %v", err)
	}
	p := &SocketProxy{Path: filepath.Join(dir, "s.sock"), backend: backend, limit: -1, changed: make(chan struct{}), stops: map[*sync.Once]func(){}}
	p.lis, err = net.Listen("unix", p.Path)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("socket proxy: %v", err)
	}
	var conns sync.WaitGroup
	go func() {
		for {
			c, err := p.lis.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				p.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		p.lis.Close()
		p.mu.Lock()
		for _, stop := range p.stops {
			stop()
		}
		p.mu.Unlock()
		conns.Wait()
		os.RemoveAll(dir)
	})
	return p
}

// Limit caps the client bytes forwarded, counted from the start over all
// connections, at n; a negative n lifts the cap.
func (p *SocketProxy) Limit(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.limit = n
	close(p.changed)
	p.changed = make(chan struct{})
}

// Holding reports whether a client has bytes waiting at the cap.
func (p *SocketProxy) Holding() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiting > 0
}

// serve forwards one connection until either side closes it; then it
// closes both, so a server that dies drops its clients as it would
// without the proxy.
func (p *SocketProxy) serve(client net.Conn) {
	server, err := net.Dial("unix", p.backend)
	if err != nil {
		client.Close()
		return
	}
	closed := make(chan struct{})
	once := new(sync.Once)
	stop := func() {
		once.Do(func() {
			close(closed)
			client.Close()
			server.Close()
		})
	}
	p.mu.Lock()
	p.stops[once] = stop
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.stops, once)
		p.mu.Unlock()
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(client, server)
		stop()
	}()
	p.forward(server, client, closed)
	stop()
	<-done
}

// forward copies client bytes to server within the cap.
func (p *SocketProxy) forward(server, client net.Conn, closed <-chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := client.Read(buf)
		for b := buf[:n]; len(b) > 0; {
			k, wait := p.take(int64(len(b)))
			if k == 0 {
				select {
				case <-wait:
				case <-closed:
					p.unwait()
					return
				}
				p.unwait()
				continue
			}
			if _, err := server.Write(b[:k]); err != nil {
				return
			}
			b = b[k:]
		}
		if err != nil {
			return
		}
	}
}

// take reserves up to n bytes under the cap. With none left it returns 0
// and a channel closed when the cap changes, counting the caller as
// waiting until it calls unwait.
func (p *SocketProxy) take(n int64) (int64, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.limit >= 0 {
		n = min(n, p.limit-p.sent)
	}
	if n <= 0 {
		p.waiting++
		return 0, p.changed
	}
	p.sent += n
	return n, nil
}

func (p *SocketProxy) unwait() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waiting--
}
