package bundle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/signature"
)

// Cosign keeps what it makes about an image as tags beside it in the
// image's repository, named after the digest they are about: the signature,
// attestations, and an attached SBOM. The signature comes first: it is the
// one that must be there.
var cosignSuffixes = []string{"sig", "att", "sbom"}

// Attached is a cosign tag a bundle carries beside an image, as an
// index.json entry of its own.
type Attached struct {
	// Name is the entry's name: the repository of the image's name, and
	// the tag (docker.io/library/nginx:sha256-<hex>.sig).
	Name string
	// Tag is the tag: sha256-<hex>.sig, .att or .sbom.
	Tag string
	// From is where it was read: the tag in the repository the image was
	// fetched from (its mirror's, when it has one).
	From string
	// Desc is its manifest.
	Desc ocispec.Descriptor
	// Manifest is the manifest as the registry served it.
	Manifest []byte
	// Blobs are the manifest's config and layers.
	Blobs []ocispec.Descriptor

	blobs map[digest.Digest][]byte
}

// blob returns the content of one of a's blobs.
func (a Attached) blob(desc ocispec.Descriptor) ([]byte, error) {
	data, ok := a.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: not in %s", desc.Digest, a.From)
	}
	return data, nil
}

// SignatureError says why an image's signature does not hold: none in the
// registry, or none valid for the keys.
type SignatureError struct {
	Image string // the image's name in the config
	Err   error
}

func (e *SignatureError) Error() string {
	return e.Image + ": " + e.Err.Error()
}

func (e *SignatureError) Unwrap() error { return e.Err }

// attachments checks that one of keys signs d, the digest name resolved to
// when fetched from from, with the signature cosign keeps in from's
// repository, and returns the cosign tags to carry beside the image. A
// missing or invalid signature is a *SignatureError.
func attachments(ctx context.Context, store Store, name, from string, d digest.Digest, keys *signature.Keys) ([]Attached, error) {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	src, err := reference.ParseNormalizedNamed(from)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	var out []Attached
	for _, suffix := range cosignSuffixes {
		tag := signature.Tag(d, suffix)
		ref := src.Name() + ":" + tag
		a, err := readAttached(ctx, store, ref)
		switch {
		case errors.Is(err, errdefs.ErrNotFound) && suffix == "sig":
			return nil, &SignatureError{Image: name, Err: fmt.Errorf("%w: the registry has no signature %s", signature.ErrUnsigned, ref)}
		case errors.Is(err, errdefs.ErrNotFound):
			continue
		case err != nil:
			return nil, fmt.Errorf("%s: %s: %w", name, ref, err)
		}
		a.Name, a.Tag = named.Name()+":"+tag, tag
		if suffix == "sig" {
			sigs, err := signature.FromManifest(ctx, a.Manifest, a.fetch)
			if err == nil {
				err = keys.Verify(d, sigs)
			}
			if err != nil {
				return nil, &SignatureError{Image: name, Err: fmt.Errorf("signature %s: %w", ref, err)}
			}
		}
		out = append(out, a)
	}
	return out, nil
}

func (a Attached) fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	data, err := a.blob(desc)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// readAttached reads a cosign tag's manifest and blobs into memory.
func readAttached(ctx context.Context, store Store, ref string) (Attached, error) {
	desc, err := store.Resolve(ctx, ref)
	if err != nil {
		return Attached{}, err
	}
	a := Attached{From: ref, Desc: desc, blobs: make(map[digest.Digest][]byte)}
	if a.Manifest, err = readSmall(ctx, store, ref, desc); err != nil {
		return Attached{}, fmt.Errorf("manifest: %w", err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(a.Manifest, &m); err != nil {
		return Attached{}, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	if len(m.Layers) == 0 {
		return Attached{}, fmt.Errorf("manifest %s (%s) has no layers: not what cosign writes", desc.Digest, desc.MediaType)
	}
	for _, b := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		if _, ok := a.blobs[b.Digest]; ok {
			continue
		}
		// Cosign's blobs are small (a payload, an envelope, an SBOM of
		// some megabytes): in memory, like a manifest or config.
		if err := b.Digest.Validate(); err != nil {
			return Attached{}, fmt.Errorf("manifest %s: blob %q: %w", desc.Digest, b.Digest, err)
		}
		data, err := readSmall(ctx, store, ref, b)
		if err != nil {
			return Attached{}, err
		}
		a.blobs[b.Digest] = data
		a.Blobs = append(a.Blobs, b)
	}
	return a, nil
}

// carrying says what is carried beside an image, and from where.
func carrying(s Source, as []Attached) string {
	var kinds []string
	for _, a := range as {
		kinds = append(kinds, a.Tag[strings.LastIndex(a.Tag, "."):])
	}
	where := ""
	if s.from() != s.Name {
		where = " (the mirror's)"
	}
	return fmt.Sprintf("signature %s%s verified; carrying %s", as[0].From, where, strings.Join(kinds, ", "))
}

// attached writes a carried tag's blobs that are not written yet, then its
// manifest. A delta carries them whole: the node reads them from the
// archive, never from its content store.
func (bw *blobWriter) attached(a Attached) error {
	for _, b := range a.Blobs {
		data, err := a.blob(b)
		if err != nil {
			return err
		}
		if err := bw.small(b, data); err != nil {
			return err
		}
	}
	return bw.small(a.Desc, a.Manifest)
}
