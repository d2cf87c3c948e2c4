package containerd

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func gzipped(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestGzipISIZE(t *testing.T) {
	random := make([]byte, 100<<10)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(random)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"text", []byte(strings.Repeat("a compressible line\n", 5000))},
		{"random", random},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gz := gzipped(t, tc.data)
			got, err := gzipISIZE(gz[len(gz)-8:])
			if err != nil || got != uint32(len(tc.data)) {
				t.Errorf("ISIZE = %d, %v; want %d", got, err, len(tc.data))
			}
		})
	}
	if _, err := gzipISIZE([]byte{1, 2, 3}); err == nil {
		t.Error("a short trailer is read")
	}
}

func TestUnpackedSize(t *testing.T) {
	const gz = ocispec.MediaTypeImageLayerGzip
	for _, tc := range []struct {
		name       string
		mediaType  string
		compressed int64
		isize      uint32
		read       bool
		want       int64
		told       bool
	}{
		{"uncompressed layer is its size", ocispec.MediaTypeImageLayer, 1000, 0, false, 1000, true},
		{"trailer not read: estimate", gz, 1000, 0, false, 2000, false},
		{"zstd: estimate", ocispec.MediaTypeImageLayerZstd, 1000, 0, false, 2000, false},
		{"compressible: trailer", gz, 100 << 20, 400 << 20, true, 400 << 20, true},
		{"incompressible: trailer just under compressed", gz, 100 << 20, 100<<20 - 300, true, 100<<20 - 300, true},
		// 4 GiB + 1 MiB of zeros compress to some MiB: the trailer wraps.
		{"wrapped past 4 GiB: floor, not told", gz, 5 << 20, 1 << 20, true, 4<<30 + 1<<20, false},
		{"large layer: trailer above estimate", gz, 1 << 30, 3 << 30, true, 3 << 30, false},
		{"large layer: estimate above trailer", gz, 1 << 30, 1<<30 + 5, true, 2 << 30, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, told := unpackedSize(tc.mediaType, tc.compressed, tc.isize, tc.read)
			if got != tc.want || told != tc.told {
				t.Errorf("unpackedSize = %d, %v; want %d, %v", got, told, tc.want, tc.told)
			}
		})
	}
}

// seekFetcher serves blobs as the docker fetcher does: a reader that
// seeks, and counts the bytes read.
type seekFetcher struct {
	blobs map[digest.Digest][]byte
	read  *atomic.Int64
}

type countedSection struct {
	*io.SectionReader
	read *atomic.Int64
}

func (c countedSection) Read(p []byte) (int, error) {
	n, err := c.SectionReader.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (countedSection) Close() error { return nil }

func (f seekFetcher) Fetch(_ context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	b, ok := f.blobs[d.Digest]
	if !ok {
		return nil, errors.New("not found")
	}
	return countedSection{io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b))), f.read}, nil
}

func TestDiskNeed(t *testing.T) {
	text := gzipped(t, []byte(strings.Repeat("a compressible line\n", 50000)))
	other := gzipped(t, []byte(strings.Repeat("another line\n", 1000)))
	desc := func(mt string, b []byte) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
	}
	config := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("config"), Size: 500}
	var read atomic.Int64
	f := seekFetcher{blobs: map[digest.Digest][]byte{digest.FromBytes(text): text, digest.FromBytes(other): other}, read: &read}
	zstd := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerZstd, Digest: digest.FromString("z"), Size: 300}
	missingBlob := ocispec.Descriptor{MediaType: images.MediaTypeDockerSchema2LayerGzip, Digest: digest.FromString("gone"), Size: 400}
	for _, tc := range []struct {
		name    string
		f       *seekFetcher
		missing []ocispec.Descriptor
		want    DiskNeed
	}{
		{"all told", &f, []ocispec.Descriptor{config, desc(ocispec.MediaTypeImageLayerGzip, text), desc(images.MediaTypeDockerSchema2LayerGzip, other)},
			DiskNeed{Download: 500 + int64(len(text)+len(other)), Unpacked: 50000*20 + 13000, Layers: 2, Told: 2}},
		{"zstd and unreadable estimated", &f, []ocispec.Descriptor{desc(ocispec.MediaTypeImageLayerGzip, text), zstd, missingBlob},
			DiskNeed{Download: int64(len(text)) + 700, Unpacked: 50000*20 + 1400, Layers: 3, Told: 1}},
		{"no fetcher: estimated", nil, []ocispec.Descriptor{config, desc(ocispec.MediaTypeImageLayerGzip, text)},
			DiskNeed{Download: 500 + int64(len(text)), Unpacked: 2 * int64(len(text)), Layers: 1}},
		{"config only", &f, []ocispec.Descriptor{config}, DiskNeed{Download: 500}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			read.Store(0)
			var got DiskNeed
			if tc.f == nil {
				got = diskNeed(t.Context(), nil, tc.missing)
			} else {
				got = diskNeed(t.Context(), *tc.f, tc.missing)
			}
			if got != tc.want {
				t.Errorf("diskNeed = %+v, want %+v", got, tc.want)
			}
			if n := read.Load(); n > 8*int64(got.Layers) {
				t.Errorf("read %d bytes of %d layers: more than their trailers", n, got.Layers)
			}
		})
	}
}

// TestRangeOnly: a trailer read that a server answers with the whole
// blob fails before its body is read; one answered with the range passes,
// and so does any other request, whatever the answer.
func TestRangeOnly(t *testing.T) {
	blob := bytes.Repeat([]byte("x"), 1<<20)
	for _, tc := range []struct {
		name        string
		trailer     bool
		honourRange bool
		wantErr     bool
		wantStatus  int
		wantBytes   int
	}{
		{"trailer, range honoured", true, true, false, http.StatusPartialContent, 8},
		{"trailer, range ignored", true, false, true, 0, 0},
		{"pull, range ignored", false, false, false, http.StatusOK, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.honourRange {
					http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(blob))
					return
				}
				_, _ = w.Write(blob)
			}))
			defer srv.Close()
			ctx := t.Context()
			if tc.trailer {
				ctx = context.WithValue(ctx, trailerReadKey{}, true)
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			req.Header.Set("Range", "bytes=1048568-")
			resp, err := (&http.Client{Transport: rangeOnly{http.DefaultTransport}}).Do(req)
			if tc.wantErr {
				if !errors.Is(err, errRangeIgnored) {
					t.Fatalf("err = %v, want %v", err, errRangeIgnored)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantStatus || len(b) != tc.wantBytes {
				t.Errorf("status %d, %d bytes; want %d and %d", resp.StatusCode, len(b), tc.wantStatus, tc.wantBytes)
			}
		})
	}
}
