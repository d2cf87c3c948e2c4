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

// cosignTag is a tag cosign keeps beside an image, which a bundle carries
// as an index.json entry of its own.
type cosignTag struct {
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
func (a cosignTag) blob(desc ocispec.Descriptor) ([]byte, error) {
	data, ok := a.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: not in %s", desc.Digest, a.From)
	}
	return data, nil
}

// signatureError says why an image's signature does not hold: none in the
// registry, or none valid for the keys.
type signatureError struct {
	Image string // the image's name in the config
	Err   error
}

func (e *signatureError) Error() string {
	return e.Image + ": " + e.Err.Error()
}

func (e *signatureError) Unwrap() error { return e.Err }

// attachments checks that one of keys signs d, the digest name resolved to
// when fetched from from, with the signature cosign keeps in from's
// repository, and returns the cosign tags to carry beside the image. A
// missing or invalid signature is a *signatureError.
func attachments(ctx context.Context, store Store, name, from string, d digest.Digest, keys *signature.Keys) ([]cosignTag, error) {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	src, err := reference.ParseNormalizedNamed(from)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	var out []cosignTag
	for _, suffix := range cosignSuffixes {
		tag := signature.Tag(d, suffix)
		ref := src.Name() + ":" + tag
		// Only the tag may be missing: a manifest whose blobs the registry
		// lacks is a broken registry, not an unsigned image.
		desc, err := store.Resolve(ctx, ref)
		switch {
		case errors.Is(err, errdefs.ErrNotFound) && suffix == "sig":
			return nil, &signatureError{Image: name, Err: fmt.Errorf("%w: the registry has no signature %s", signature.ErrUnsigned, ref)}
		case errors.Is(err, errdefs.ErrNotFound):
			continue
		case err != nil:
			return nil, fmt.Errorf("%s: %s: %w", name, ref, err)
		}
		a, err := readCosignTag(ctx, store, ref, desc)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", name, ref, err)
		}
		a.Name, a.Tag = named.Name()+":"+tag, tag
		if suffix == "sig" {
			sigs, err := signature.FromManifest(ctx, a.Manifest, a.fetch)
			if err == nil {
				err = keys.Verify(d, sigs)
			}
			if err != nil {
				return nil, &signatureError{Image: name, Err: fmt.Errorf("signature %s: %w", ref, err)}
			}
		}
		out = append(out, a)
	}
	return out, nil
}

func (a cosignTag) fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	data, err := a.blob(desc)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// readCosignTag reads a cosign tag's manifest, which ref resolved to, and
// its blobs into memory.
func readCosignTag(ctx context.Context, store Store, ref string, desc ocispec.Descriptor) (cosignTag, error) {
	a := cosignTag{From: ref, Desc: desc, blobs: make(map[digest.Digest][]byte)}
	var err error
	if a.Manifest, err = readSmall(ctx, store, ref, desc); err != nil {
		return cosignTag{}, fmt.Errorf("manifest: %w", err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(a.Manifest, &m); err != nil {
		return cosignTag{}, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	if len(m.Layers) == 0 {
		return cosignTag{}, fmt.Errorf("manifest %s (%s) has no layers: not what cosign writes", desc.Digest, desc.MediaType)
	}
	for _, b := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		if _, ok := a.blobs[b.Digest]; ok {
			continue
		}
		// Cosign's blobs are small (a payload, an envelope, an SBOM of
		// some megabytes): in memory, like a manifest or config.
		if err := b.Digest.Validate(); err != nil {
			return cosignTag{}, fmt.Errorf("manifest %s: blob %q: %w", desc.Digest, b.Digest, err)
		}
		data, err := readSmall(ctx, store, ref, b)
		if err != nil {
			return cosignTag{}, err
		}
		a.blobs[b.Digest] = data
		a.Blobs = append(a.Blobs, b)
	}
	return a, nil
}

// carrying says what is carried beside an image, and from where.
func carrying(s Source, as []cosignTag) string {
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
func (bw *blobWriter) attached(a cosignTag) error {
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
