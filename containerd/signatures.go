package containerd

import (
	"context"
	"fmt"
	"io"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxSignatureManifest bounds a signature manifest read into memory:
// cosign's are well under a KiB per signature.
const maxSignatureManifest = 4 << 20

// RegistryManifest reads the manifest that tag names in the repository of
// ref, from the registry a pull of ref would reach (hosts.toml mirrors,
// the same credentials auth), and returns it with a fetch of the blobs of
// that repository. A tag the registry does not have is an error wrapping
// errdefs.ErrNotFound. It writes nothing into containerd.
func (c *Client) RegistryManifest(ctx context.Context, ref, tag string, auth *runtimeapi.AuthConfig) ([]byte, func(context.Context, ocispec.Descriptor) (io.ReadCloser, error), error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, nil, fmt.Errorf("resolve %s: %w", ref, err)
	}
	tagged, err := reference.WithTag(reference.TrimNamed(named), tag)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: tag %s: %w", ref, tag, err)
	}
	resolver := c.resolver(ctx, auth)
	name, desc, err := resolver.Resolve(ctx, tagged.String())
	if err != nil {
		return nil, nil, fmt.Errorf("resolve %s: %w", tagged, err)
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch %s: %w", tagged, err)
	}
	if desc.Size > maxSignatureManifest {
		return nil, nil, fmt.Errorf("%s: manifest of %d bytes, more than %d", tagged, desc.Size, maxSignatureManifest)
	}
	rc, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch %s: %w", tagged, err)
	}
	defer rc.Close()
	manifest, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return nil, nil, fmt.Errorf("fetch %s: %w", tagged, err)
	}
	if int64(len(manifest)) != desc.Size || desc.Digest.Algorithm().FromBytes(manifest) != desc.Digest {
		return nil, nil, fmt.Errorf("fetch %s: the manifest does not have digest %s", tagged, desc.Digest)
	}
	fetch := func(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
		return fetcher.Fetch(ctx, d)
	}
	return manifest, fetch, nil
}
