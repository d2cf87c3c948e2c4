package containerd

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxManifest bounds what PullNeed reads of one manifest or index.
const maxManifest = 4 << 20

// PullNeed is what a pull of ref would add on disk: the config and layers
// of its manifest for this platform that the content store does not hold
// yet, and those layers unpacked. It resolves ref and reads the manifests
// as a pull would reach them, and of the layers only their gzip trailers.
func (c *Client) PullNeed(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (DiskNeed, error) {
	f, missing, err := c.missing(ctx, ref, auth)
	if err != nil {
		return DiskNeed{}, fmt.Errorf("size of %s: %w", ref, err)
	}
	return diskNeed(ctx, f, missing), nil
}

// LargestLayer is the compressed size of the largest layer a pull of ref
// would download, from its manifest as PullNeed reads it.
func (c *Client) LargestLayer(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (int64, error) {
	_, missing, err := c.missing(ctx, ref, auth)
	if err != nil {
		return 0, fmt.Errorf("layers of %s: %w", ref, err)
	}
	var largest int64
	for _, d := range missing {
		if images.IsLayerType(d.MediaType) {
			largest = max(largest, d.Size)
		}
	}
	return largest, nil
}

// missing is the config and layers of ref's manifest for this platform
// that the content store does not hold, and the fetcher that reaches them.
func (c *Client) missing(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (remotes.Fetcher, []ocispec.Descriptor, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, nil, err
	}
	r := c.resolver(ctx, auth)
	name, desc, err := r.Resolve(ctx, named.String())
	if err != nil {
		return nil, nil, err
	}
	f, err := r.Fetcher(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	m, err := images.Manifest(ctx, fetched{f}, desc, c.platform)
	if err != nil {
		return nil, nil, err
	}
	var missing []ocispec.Descriptor
	for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		_, err := c.c.ContentStore().Info(ctx, d.Digest)
		switch {
		case errdefs.IsNotFound(err):
			missing = append(missing, d)
		case err != nil:
			return nil, nil, err
		}
	}
	return f, missing, nil
}

// fetched is a content.Provider of a registry's manifests, read whole.
type fetched struct{ f remotes.Fetcher }

func (p fetched) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if desc.Size > maxManifest {
		return nil, fmt.Errorf("manifest %s: %d bytes, more than %d", desc.Digest, desc.Size, maxManifest)
	}
	rc, err := p.f.Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxManifest+1))
	if err != nil {
		return nil, err
	}
	return bytesReaderAt{bytes.NewReader(b)}, nil
}

type bytesReaderAt struct{ *bytes.Reader }

func (bytesReaderAt) Close() error { return nil }
