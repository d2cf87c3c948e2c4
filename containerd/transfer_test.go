package containerd

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

type fakeFetcher map[digest.Digest][]byte

func (f fakeFetcher) Fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(f[desc.Digest])), nil
}

var _ remotes.Fetcher = fakeFetcher{}

func blobDesc(data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

// TestPullBytes follows one pull's blobs through the counters as the
// handler and the fetcher move them: each way a blob can end leaves done
// equal to total, and the pull's end leaves the client at zero.
func TestPullBytes(t *testing.T) {
	layer := bytes.Repeat([]byte("l"), 1000)
	shared := bytes.Repeat([]byte("s"), 300)
	tests := []struct {
		name string
		// reads is how often the blob is read in full (a reset copy reads
		// it again); 0: another pull had fetched it.
		reads    int
		data     []byte
		wantDone int64
	}{
		{name: "read once", reads: 1, data: layer, wantDone: 1000},
		{name: "read twice after a reset", reads: 2, data: layer, wantDone: 1000},
		{name: "fetched by another pull", reads: 0, data: shared, wantDone: 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p transfers
			var watch Bytes
			b := p.start(&watch)
			d := blobDesc(tt.data)
			b.expect([]ocispec.Descriptor{d, d}) // named twice, counted once
			if got := p.total.Load(); got != int64(len(tt.data)) {
				t.Fatalf("total = %d, want %d", got, len(tt.data))
			}
			f := b.fetching(d)
			if f == nil {
				t.Fatal("expected blob not found")
			}
			fetcher := countingFetcher{fakeFetcher{d.Digest: tt.data}}
			ctx := context.WithValue(context.Background(), blobKey{}, f)
			for range tt.reads {
				rc, err := fetcher.Fetch(ctx, d)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, rc); err != nil {
					t.Fatal(err)
				}
			}
			if tt.reads > 0 && p.done.Load() != int64(len(tt.data)) {
				t.Errorf("done after reads = %d, want %d", p.done.Load(), len(tt.data))
			}
			b.fetched(f)
			if got := p.done.Load(); got != tt.wantDone {
				t.Errorf("done = %d, want %d", got, tt.wantDone)
			}
			if p.inFlight.Load() != 1 {
				t.Errorf("inFlight = %d, want 1", p.inFlight.Load())
			}
			if done, total := watch.Load(); done != tt.wantDone || total != int64(len(tt.data)) {
				t.Errorf("the pull's own bytes = %d of %d, want %d of %d", done, total, tt.wantDone, len(tt.data))
			}
			b.end()
			if p.inFlight.Load() != 0 || p.done.Load() != 0 || p.total.Load() != 0 {
				t.Errorf("after end: inFlight %d done %d total %d, want zeros", p.inFlight.Load(), p.done.Load(), p.total.Load())
			}
		})
	}
}

// TestPullBytesTwoPulls: the client's sums are over the pulls in flight;
// one that fails half-way takes out what it had.
func TestPullBytesTwoPulls(t *testing.T) {
	var p transfers
	a, b := p.start(nil), p.start(nil)
	da, db := blobDesc([]byte("aaaa")), blobDesc([]byte("bbbbbbbb"))
	a.expect([]ocispec.Descriptor{da})
	b.expect([]ocispec.Descriptor{db})
	fb := b.fetching(db)
	fb.add(3) // half-way when it fails
	if p.inFlight.Load() != 2 || p.done.Load() != 3 || p.total.Load() != 12 {
		t.Fatalf("two pulls: inFlight %d done %d total %d, want 2 3 12", p.inFlight.Load(), p.done.Load(), p.total.Load())
	}
	b.end()
	if p.inFlight.Load() != 1 || p.done.Load() != 0 || p.total.Load() != 4 {
		t.Fatalf("after the failed pull: inFlight %d done %d total %d, want 1 0 4", p.inFlight.Load(), p.done.Load(), p.total.Load())
	}
	if a.fetching(db) != nil {
		t.Error("a blob of another pull is counted in this one")
	}
	a.end()
}
