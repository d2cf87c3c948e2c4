package containerd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// blobServer serves one blob at /v2/r/blobs/<digest>, honouring Range or
// not, and records what each request asked and how many body bytes it
// was sent.
type blobServer struct {
	blob        []byte
	ignoreRange bool
	mu          sync.Mutex
	ranges      []string
	sent        atomic.Int64
	conns       atomic.Int64
}

func (s *blobServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	s.mu.Unlock()
	if s.ignoreRange {
		r.Header.Del("Range")
	}
	cw := &countingWriter{ResponseWriter: w, n: &s.sent}
	http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(s.blob))
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

func rangedTestFetcher(t *testing.T, srv *httptest.Server) rangedFetcher {
	t.Helper()
	host := strings.TrimPrefix(srv.URL, "http://")
	hosts := withRangeTransport(func(string) ([]docker.RegistryHost, error) {
		return []docker.RegistryHost{{Client: srv.Client(), Host: host, Scheme: "http", Path: "/v2", Capabilities: docker.HostCapabilityPull}}, nil
	})
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: hosts})
	f, err := resolver.Fetcher(context.Background(), host+"/r:1")
	if err != nil {
		t.Fatal(err)
	}
	return rangedFetcher{Fetcher: f, ranges: newRanges()}
}

func TestRangedBlob(t *testing.T) {
	blob := make([]byte, 3*rangeChunk+12345)
	rand.New(rand.NewSource(1)).Read(blob)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	tests := []struct {
		name        string
		ignoreRange bool
		seek        int64
		wantRanges  []string // in any order
	}{
		{
			name: "ranges honoured: closed ranges, the first alone",
			wantRanges: []string{
				fmt.Sprintf("bytes=0-%d", rangeChunk-1),
				fmt.Sprintf("bytes=%d-%d", rangeChunk, 2*rangeChunk-1),
				fmt.Sprintf("bytes=%d-%d", 2*rangeChunk, 3*rangeChunk-1),
				fmt.Sprintf("bytes=%d-%d", 3*rangeChunk, len(blob)-1),
			},
		},
		{
			name:        "ranges ignored: the whole blob once",
			ignoreRange: true,
			wantRanges:  []string{fmt.Sprintf("bytes=0-%d", rangeChunk-1)},
		},
		{
			name: "resumed: from where the copy sought",
			seek: int64(rangeChunk) + 5,
			wantRanges: []string{
				fmt.Sprintf("bytes=%d-%d", rangeChunk+5, 2*rangeChunk+4),
				fmt.Sprintf("bytes=%d-%d", 2*rangeChunk+5, 3*rangeChunk+4),
				fmt.Sprintf("bytes=%d-%d", 3*rangeChunk+5, len(blob)-1),
			},
		},
		{
			name:       "near its end: one request, no slot",
			seek:       int64(len(blob)) - 8,
			wantRanges: []string{fmt.Sprintf("bytes=%d-", len(blob)-8)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := &blobServer{blob: blob, ignoreRange: tt.ignoreRange}
			srv := httptest.NewUnstartedServer(bs)
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					bs.conns.Add(1)
				}
			}
			srv.Start()
			defer srv.Close()
			f := rangedTestFetcher(t, srv)
			rc, err := f.Fetch(context.Background(), desc)
			if err != nil {
				t.Fatal(err)
			}
			if tt.seek > 0 {
				if _, err := rc.(io.Seeker).Seek(tt.seek, io.SeekStart); err != nil {
					t.Fatal(err)
				}
			}
			got, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			if err := rc.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, blob[tt.seek:]) {
				t.Fatalf("read %d bytes, not the blob's %d from %d", len(got), len(blob)-int(tt.seek), tt.seek)
			}
			if sent := bs.sent.Load(); sent != int64(len(blob))-tt.seek {
				t.Errorf("server sent %d body bytes for %d read: something was fetched twice", sent, len(blob)-int(tt.seek))
			}
			bs.mu.Lock()
			ranges := slices.Clone(bs.ranges)
			bs.mu.Unlock()
			slices.Sort(ranges)
			want := slices.Clone(tt.wantRanges)
			slices.Sort(want)
			if !slices.Equal(ranges, want) {
				t.Errorf("requests asked %q; want %q", ranges, want)
			}
			if n := bs.conns.Load(); n > int64(rangeParallel) {
				t.Errorf("%d connections for %d ranges: closed ranges should keep theirs", n, len(ranges))
			}
			if f.ranges.users != 0 || f.ranges.free != nil || f.ranges.slots != 1 {
				t.Errorf("after Close: %d users, %d buffers kept; want none", f.ranges.users, len(f.ranges.free))
			}
		})
	}
}
