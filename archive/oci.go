package archive

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/artifact"
)

// ociImages reads an OCI image layout: oci-layout, index.json, blobs/.
func (s *scan) ociImages(ctx context.Context) error {
	var layout ocispec.ImageLayout
	if err := s.json(ocispec.ImageLayoutFile, &layout); err != nil {
		return err
	}
	if layout.Version != ocispec.ImageLayoutVersion {
		return fmt.Errorf("unsupported OCI layout version %q", layout.Version)
	}
	if err := s.checkBlobDigests(); err != nil {
		return err
	}
	var index ocispec.Index
	if err := s.json(ocispec.ImageIndexFile, &index); err != nil {
		return err
	}
	for _, desc := range index.Manifests {
		if _, ok := desc.Annotations[images.AnnotationManifestSubject]; ok {
			continue // a referrer (signature, SBOM), not an image
		}
		if cosign, err := s.cosignEntry(desc); cosign || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		names, err := ociNames(desc.Annotations)
		if err != nil {
			return err
		}
		img, err := s.resolve(ctx, desc)
		var perr *PlatformError
		switch {
		case errors.As(err, &perr):
			// The archive's other images may still be imported.
			perr.Names, perr.Digest = names, desc.Digest
			s.contents.Unavailable = append(s.contents.Unavailable, perr)
			continue
		case err != nil:
			return fmt.Errorf("image %s: %w", describe(names, desc.Digest), err)
		}
		img.Names = names
		s.addImage(img)
	}
	if len(s.contents.Images)+len(s.contents.Unavailable) == 0 {
		return errors.New("index.json lists no images")
	}
	return nil
}

// checkBlobDigests checks that every blob's content has the digest it is
// stored under.
func (s *scan) checkBlobDigests() error {
	for p, e := range s.entries {
		rest, ok := strings.CutPrefix(p, "blobs/")
		if !ok {
			continue
		}
		alg, hex, ok := strings.Cut(rest, "/")
		if !ok || alg != string(digest.SHA256) || e.skipped {
			// Other algorithms are not hashed; the runtime checks them.
			// Layers passed over are checked as Each reads them.
			continue
		}
		if want := digest.NewDigestFromEncoded(digest.SHA256, hex); want != e.digest {
			return fmt.Errorf("digest mismatch: %s has content with digest %s", p, e.digest)
		}
	}
	return nil
}

// resolve walks desc down to the platform's manifest as a pull does,
// checks that every blob on the way is in the archive, and returns the
// image.
func (s *scan) resolve(ctx context.Context, desc ocispec.Descriptor) (Image, error) {
	p := provider{s}
	m, err := images.Manifest(ctx, p, desc, s.match)
	if err != nil {
		if strings.Contains(err.Error(), "no match for platform") {
			return Image{}, &PlatformError{Platform: platforms.Format(s.platform), Has: s.platforms(ctx, desc)}
		}
		return Image{}, err
	}
	// Only containerd imports archives, and it unpacks no artifact: said
	// here, before the layers' count against the diff IDs would fail it
	// in terms that do not say why.
	if shape := artifact.ShapeOf(m); !artifact.Mountable("containerd", shape) {
		return Image{}, &artifact.Error{Ref: "manifest " + desc.Digest.String(), Shape: shape, Runtime: "containerd"}
	}
	// images.Manifest does not check the platform of a top-level manifest.
	if images.IsManifestType(desc.MediaType) {
		cp, err := images.ConfigPlatform(ctx, p, m.Config)
		if err != nil {
			return Image{}, fmt.Errorf("config %s: %w", m.Config.Digest, err)
		}
		if cp.OS != "" && !s.match.Match(cp) {
			return Image{}, &PlatformError{Platform: platforms.Format(s.platform), Has: platforms.Format(cp)}
		}
	}
	layers, err := ociLayers(ctx, p, m)
	if err != nil {
		return Image{}, err
	}
	img := Image{
		Config: m.Config.Digest,
		Target: ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size},
		Layers: layers,
	}
	collect := images.HandlerFunc(func(ctx context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		d = ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
		if _, _, ok := s.entry(blobPath(d.Digest)); !ok && images.IsLayerType(d.MediaType) {
			// A delta's: the import takes it from the node's content
			// store, or fails before it writes anything.
			img.Blobs = append(img.Blobs, d)
			img.Absent = append(img.Absent, d)
			return nil, nil
		}
		if err := s.addBlob(d, blobPath(d.Digest)); err != nil {
			return nil, err
		}
		img.Blobs = append(img.Blobs, d)
		return images.Children(ctx, p, d)
	})
	if err := images.Walk(ctx, images.LimitManifests(images.FilterPlatforms(collect, s.match), s.match, 1), img.Target); err != nil {
		return Image{}, err
	}
	return img, nil
}

// ociLayers pairs the manifest's layers with the config's diff IDs, as
// containerd's Image.Unpack does: entries of other types (artifacts) are
// not layers.
func ociLayers(ctx context.Context, p provider, m ocispec.Manifest) ([]Layer, error) {
	diffIDs, err := images.RootFS(ctx, p, m.Config)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	var layers []Layer
	for _, l := range m.Layers {
		if images.IsLayerType(l.MediaType) {
			layers = append(layers, Layer{Blob: l})
		}
	}
	if len(layers) != len(diffIDs) {
		return nil, fmt.Errorf("the manifest has %d layers, config %s has %d", len(layers), m.Config.Digest, len(diffIDs))
	}
	for i := range layers {
		layers[i].DiffID = diffIDs[i]
	}
	return layers, nil
}

// platforms lists the platforms an index offers, for messages.
func (s *scan) platforms(ctx context.Context, desc ocispec.Descriptor) string {
	ps, err := images.Platforms(ctx, provider{s}, desc)
	if err != nil || len(ps) == 0 {
		return "none"
	}
	var names []string
	for _, p := range ps {
		names = append(names, platforms.Format(p))
	}
	return strings.Join(names, ", ")
}

// ociNames reads an index.json entry's names: containerd's and Docker's
// io.containerd.image.name, else org.opencontainers.image.ref.name when it
// is a full reference. A bare tag there ("1.0", as buildkit writes it)
// names nothing on its own.
func ociNames(annotations map[string]string) ([]string, error) {
	if n := annotations[images.AnnotationImageName]; n != "" {
		name, err := normalize(n)
		if err != nil {
			return nil, fmt.Errorf("index.json: %s %q: %w", images.AnnotationImageName, n, err)
		}
		return []string{name}, nil
	}
	ref, err := reference.ParseNormalizedNamed(annotations[ocispec.AnnotationRefName])
	if err != nil {
		return nil, nil
	}
	_, tagged := ref.(reference.Tagged)
	_, digested := ref.(reference.Digested)
	if !tagged && !digested {
		return nil, nil
	}
	return []string{ref.String()}, nil
}
