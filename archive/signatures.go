package archive

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Signed is a cosign signature manifest an archive carries: the
// index.json entry tagged sha256-<hex>.sig in the image's repository.
type Signed struct {
	// Name is the entry's name, repo:sha256-<hex>.sig.
	Name string
	// Manifest is its manifest, as the archive holds it.
	Manifest []byte
	// blobs are the manifest's layers the archive holds as JSON: the
	// signed payloads.
	blobs map[digest.Digest][]byte
}

// Fetch reads one blob of the manifest (a signed payload) from the
// archive.
func (sg Signed) Fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	b, ok := sg.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s of %s is not in the archive, or not JSON: %w", desc.Digest, sg.Name, errdefs.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// cosignTag is the tag, alone or ending a reference, that cosign keeps a
// digest's signatures (.sig), attestations (.att) or SBOM (.sbom) under.
var cosignTag = regexp.MustCompile(`(?:^|:)(sha256)-([0-9a-f]{64})\.(sig|att|sbom)$`)

// cosignEntry tells whether the index.json entry desc is cosign's rather
// than an image: such entries are never imported. For a signature it
// records the manifest and its payloads under the digest it signs.
func (s *scan) cosignEntry(desc ocispec.Descriptor) (bool, error) {
	for _, n := range []string{desc.Annotations["io.containerd.image.name"], desc.Annotations[ocispec.AnnotationRefName]} {
		m := cosignTag.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		if m[3] != "sig" {
			return true, nil
		}
		sg, err := s.signed(n, desc)
		if err != nil {
			return true, fmt.Errorf("signature %s: %w", n, err)
		}
		signs := digest.NewDigestFromEncoded(digest.Algorithm(m[1]), m[2])
		if s.contents.Signatures == nil {
			s.contents.Signatures = make(map[digest.Digest][]Signed)
		}
		s.contents.Signatures[signs] = append(s.contents.Signatures[signs], sg)
		return true, nil
	}
	return false, nil
}

func (s *scan) signed(name string, desc ocispec.Descriptor) (Signed, error) {
	_, e, ok := s.entry(blobPath(desc.Digest))
	if !ok || e.data == nil {
		return Signed{}, fmt.Errorf("manifest %s is missing from the archive", desc.Digest)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(e.data, &m); err != nil {
		return Signed{}, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	sg := Signed{Name: name, Manifest: e.data, blobs: make(map[digest.Digest][]byte)}
	for _, l := range m.Layers {
		if _, e, ok := s.entry(blobPath(l.Digest)); ok && e.data != nil {
			sg.blobs[l.Digest] = e.data
		}
	}
	return sg, nil
}
