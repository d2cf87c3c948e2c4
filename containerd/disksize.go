package containerd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// UnpackFactor is the estimate of a layer's unpacked size against its
// compressed size where nothing tells it: gzip layers of real images
// commonly unpack to about twice it.
const UnpackFactor = 2

// DiskNeed is what a pull adds to the image filesystem: the blobs the
// content store lacks, which it keeps, and their layers unpacked into
// snapshots.
type DiskNeed struct {
	Download int64 // compressed size of the config and layers the content store lacks
	Unpacked int64 // their layers' unpacked size, told or estimated
	// Layers is how many layers the content store lacks; Told, of how
	// many of them Unpacked holds the size their blob tells.
	Layers, Told int
}

// Total is the bytes the pull adds on disk.
func (n DiskNeed) Total() int64 { return n.Download + n.Unpacked }

const (
	// trustedTrailer bounds the compressed size of a layer whose gzip
	// trailer is taken as its unpacked size. The trailer holds that size
	// modulo 4 GiB: below this bound, a layer unpacking to 4 GiB more
	// than the trailer says would have a ratio above 8, which layers do
	// not reach; above it, the trailer is only a floor.
	trustedTrailer = 512 << 20
	// trailerTimeout bounds the reads of a pull's trailers; past it the
	// layers left are estimated.
	trailerTimeout = 15 * time.Second
	trailerReads   = 8 // at once
)

// unpackedSize is a layer's unpacked size from what its media type and
// gzip trailer (isize, if read: the trailer was read) tell, with whether
// it is told rather than estimated.
func unpackedSize(mediaType string, compressed int64, isize uint32, read bool) (int64, bool) {
	if mediaType == ocispec.MediaTypeImageLayer {
		return compressed, true
	}
	estimate := compressed * UnpackFactor
	if !read {
		return estimate, false
	}
	// Deflate adds at most a few bytes per 16 KiB block of data it
	// cannot compress: what unpacks to less than the compressed size
	// less that has wrapped past 4 GiB.
	floor := compressed - compressed/256 - 64
	u, wrapped := int64(isize), false
	for u < floor {
		u += 1 << 32
		wrapped = true
	}
	if compressed < trustedTrailer && !wrapped {
		return u, true
	}
	return max(u, estimate), false
}

// gzipISIZE reads a gzip member's trailer, its last 8 bytes: the CRC-32
// and the size of the input modulo 2^32, little-endian.
func gzipISIZE(trailer []byte) (uint32, error) {
	if len(trailer) != 8 {
		return 0, fmt.Errorf("gzip trailer of %d bytes, want 8", len(trailer))
	}
	return binary.LittleEndian.Uint32(trailer[4:]), nil
}

// diskNeed is what a pull of the blobs missing adds on disk, with the
// unpacked size of its gzip layers read from their trailers through f
// (nil: not read). A trailer that cannot be read leaves its layer
// estimated.
func diskNeed(ctx context.Context, f remotes.Fetcher, missing []ocispec.Descriptor) DiskNeed {
	var n DiskNeed
	var gz []ocispec.Descriptor
	for _, d := range missing {
		n.Download += d.Size
		if !images.IsLayerType(d.MediaType) {
			continue
		}
		n.Layers++
		if c, err := images.DiffCompression(ctx, d.MediaType); err == nil && c == "gzip" && d.Size > 8 && len(d.URLs) == 0 && f != nil {
			gz = append(gz, d)
			continue
		}
		u, told := unpackedSize(d.MediaType, d.Size, 0, false)
		n.add(u, told)
	}
	isizes := make([]uint32, len(gz))
	read := make([]bool, len(gz))
	ctx, cancel := context.WithTimeout(ctx, trailerTimeout)
	defer cancel()
	var g errgroup.Group
	g.SetLimit(trailerReads)
	for i, d := range gz {
		g.Go(func() error {
			isizes[i], read[i] = readISIZE(ctx, f, d)
			return nil
		})
	}
	_ = g.Wait() // no reader fails the group
	for i, d := range gz {
		u, told := unpackedSize(d.MediaType, d.Size, isizes[i], read[i])
		n.add(u, told)
	}
	return n
}

func (n *DiskNeed) add(unpacked int64, told bool) {
	n.Unpacked += unpacked
	if told {
		n.Told++
	}
}

// readISIZE reads the trailer of the gzip layer d: a range of its last
// 8 bytes, which the fetcher asks for by seeking there.
func readISIZE(ctx context.Context, f remotes.Fetcher, d ocispec.Descriptor) (uint32, bool) {
	rc, err := f.Fetch(context.WithValue(ctx, trailerReadKey{}, true), d)
	if err != nil {
		return 0, false
	}
	defer rc.Close()
	s, ok := rc.(io.Seeker)
	if !ok {
		return 0, false
	}
	if _, err := s.Seek(d.Size-8, io.SeekStart); err != nil {
		return 0, false
	}
	b := make([]byte, 8)
	if _, err := io.ReadFull(rc, b); err != nil {
		return 0, false
	}
	isize, err := gzipISIZE(b)
	return isize, err == nil
}

// trailerReadKey marks the context of a trailer read.
type trailerReadKey struct{}

var errRangeIgnored = errors.New("ranged request answered with the whole blob")

// guardTrailerReads makes the registry clients of a resolver fail a
// trailer read that a registry or proxy answers with the whole blob,
// before its body, rather than download the layer to read its end (what
// containerd's fetcher does for a range it asked for). Other requests,
// a pull's ranged ones included, pass as they are.
func guardTrailerReads(hc *http.Client) error {
	rt := hc.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	hc.Transport = rangeOnly{rt}
	return nil
}

// rangeOnly fails a trailer read answered with 200.
type rangeOnly struct{ http.RoundTripper }

func (t rangeOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.RoundTripper.RoundTrip(r)
	if err == nil && r.Context().Value(trailerReadKey{}) != nil && resp.StatusCode == http.StatusOK {
		resp.Body.Close()
		return nil, errRangeIgnored
	}
	return resp, err
}

// needReservation asks r, once a pull of ref has found the blobs it
// lacks, with what they need on disk, their trailers read through the
// pull's own resolver (its hosts and authorization); nil if r is nil.
func (c *Client) needReservation(resolver remotes.Resolver, ref string, r Reservation) func(ctx context.Context, missing []ocispec.Descriptor) error {
	if r == nil {
		return nil
	}
	return func(ctx context.Context, missing []ocispec.Descriptor) error {
		f, err := resolver.Fetcher(ctx, ref)
		if err != nil {
			f = nil
		}
		return r(ctx, diskNeed(ctx, f, missing))
	}
}
