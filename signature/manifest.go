package signature

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	// SimpleSigningMediaType is the media type cosign gives a .sig
	// manifest's layers (its pkg/types): each blob is a payload that was
	// signed.
	SimpleSigningMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	// SignatureAnnotation holds, on such a layer, the base64 signature
	// over its blob.
	SignatureAnnotation = "dev.cosignproject.cosign/signature"
	// maxPayload bounds what is read of a payload: cosign's are a few
	// hundred bytes, and a hostile archive must not make the node buffer
	// gigabytes.
	maxPayload = 1 << 20
)

// Fetch reads one blob of the repository a .sig manifest was found in.
type Fetch func(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)

// FromManifest reads the signatures a cosign .sig manifest (OCI or Docker
// schema 2) holds: for each simple-signing layer, its blob, read with
// fetch and checked against the layer's digest, and its signature
// annotation. Layers of other media types are not signatures and are
// passed over.
func FromManifest(ctx context.Context, manifest []byte, fetch Fetch) ([]Signature, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(manifest, &m); err != nil {
		return nil, fmt.Errorf("signature manifest: %w", err)
	}
	var sigs []Signature
	for _, l := range m.Layers {
		if l.MediaType != SimpleSigningMediaType {
			continue
		}
		b64, ok := l.Annotations[SignatureAnnotation]
		if !ok {
			continue
		}
		p, err := readPayload(ctx, l, fetch)
		if err != nil {
			return nil, err
		}
		sigs = append(sigs, Signature{Payload: p, Base64: b64})
	}
	return sigs, nil
}

func readPayload(ctx context.Context, l ocispec.Descriptor, fetch Fetch) ([]byte, error) {
	if l.Size > maxPayload {
		return nil, fmt.Errorf("signature payload %s: %d bytes, more than %d", l.Digest, l.Size, maxPayload)
	}
	if err := l.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("signature payload %q: %w", l.Digest, err)
	}
	rc, err := fetch(ctx, l)
	if err != nil {
		return nil, fmt.Errorf("signature payload %s: %w", l.Digest, err)
	}
	defer rc.Close()
	p, err := io.ReadAll(io.LimitReader(rc, maxPayload+1))
	if err != nil {
		return nil, fmt.Errorf("signature payload %s: %w", l.Digest, err)
	}
	if int64(len(p)) != l.Size || l.Digest.Algorithm().FromBytes(p) != l.Digest {
		return nil, fmt.Errorf("signature payload %s: content does not match its digest and size", l.Digest)
	}
	return p, nil
}
