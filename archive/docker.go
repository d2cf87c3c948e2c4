package archive

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// dockerImages reads `docker save` output: manifest.json, configs, layers.
func (s *scan) dockerImages() error {
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := s.json("manifest.json", &manifest); err != nil {
		return err
	}
	for _, m := range manifest {
		var names []string
		for _, tag := range m.RepoTags {
			n, err := normalize(tag)
			if err != nil {
				return fmt.Errorf("manifest.json: repo tag %q: %w", tag, err)
			}
			names = append(names, n)
		}
		img, err := s.dockerImage(path.Clean(m.Config), m.Layers)
		var perr *PlatformError
		switch {
		case errors.As(err, &perr):
			perr.Names = names
			s.contents.Unavailable = append(s.contents.Unavailable, perr)
			continue
		case err != nil:
			return fmt.Errorf("image %s: %w", describe(names, digest.Digest(m.Config)), err)
		}
		img.Names = names
		s.addImage(img)
	}
	if len(s.contents.Images)+len(s.contents.Unavailable) == 0 {
		return errors.New("manifest.json lists no images")
	}
	return nil
}

// dockerImage checks one image of manifest.json and builds the manifest
// containerd's importer (core/images/archive.ImportIndex) writes for it, so
// that an image has the same digest however it was imported.
func (s *scan) dockerImage(configPath string, layerPaths []string) (Image, error) {
	_, ce, ok := s.entry(configPath)
	if !ok || ce.data == nil {
		return Image{}, fmt.Errorf("config %s is missing from the archive (truncated or incomplete)", configPath)
	}
	// The config is stored under its digest: <hex>.json, or
	// blobs/sha256/<hex> since Docker 25.
	hex := strings.TrimSuffix(path.Base(configPath), ".json")
	if want := digest.NewDigestFromEncoded(digest.SHA256, hex); want.Validate() == nil && want != ce.digest {
		return Image{}, fmt.Errorf("digest mismatch: %s has content with digest %s", configPath, ce.digest)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(ce.data, &cfg); err != nil {
		return Image{}, fmt.Errorf("config %s: %w", configPath, err)
	}
	if p := platforms.Normalize(cfg.Platform); p.OS != "" && !s.match.Match(p) {
		return Image{}, &PlatformError{Digest: ce.digest, Platform: platforms.Format(s.platform), Has: platforms.Format(p)}
	}
	if len(layerPaths) != len(cfg.RootFS.DiffIDs) {
		return Image{}, fmt.Errorf("manifest.json lists %d layers, config %s has %d", len(layerPaths), configPath, len(cfg.RootFS.DiffIDs))
	}

	config := ocispec.Descriptor{MediaType: images.MediaTypeDockerSchema2Config, Digest: ce.digest, Size: ce.size}
	if err := s.addBlob(config, configPath); err != nil {
		return Image{}, err
	}
	layers := make([]ocispec.Descriptor, len(layerPaths))
	unpack := make([]Layer, len(layerPaths))
	for i, lp := range layerPaths {
		lp = path.Clean(lp)
		_, le, ok := s.entry(lp)
		if !ok {
			return Image{}, fmt.Errorf("layer %s is missing from the archive (truncated or incomplete)", lp)
		}
		// docker save stores layers uncompressed: their digest is the
		// config's diff ID. Compressed ones are checked on unpack. Like
		// containerd's importer, call any compressed layer gzip: the
		// runtime detects the compression from the content.
		// An uncompressed layer Inspect passed over is checked against
		// the diff ID as Each reads it.
		mediaType := images.MediaTypeDockerSchema2Layer
		dgst := le.digest
		switch {
		case le.compressed:
			mediaType = images.MediaTypeDockerSchema2LayerGzip
			if le.skipped {
				// Passed over as blobs/sha256/<hex>: the name is the digest.
				real, _, _ := s.entry(lp)
				dgst = digest.NewDigestFromEncoded(digest.SHA256, path.Base(real))
			}
		case le.skipped:
			dgst = cfg.RootFS.DiffIDs[i]
		case le.digest != cfg.RootFS.DiffIDs[i]:
			return Image{}, fmt.Errorf("digest mismatch: layer %s has digest %s, the config says %s", lp, le.digest, cfg.RootFS.DiffIDs[i])
		}
		if err := dgst.Validate(); err != nil {
			return Image{}, fmt.Errorf("config %s: diff ID %q: %w", configPath, dgst, err)
		}
		layers[i] = ocispec.Descriptor{MediaType: mediaType, Digest: dgst, Size: le.size}
		if err := s.addBlob(layers[i], lp); err != nil {
			return Image{}, err
		}
		unpack[i] = Layer{Blob: layers[i], DiffID: cfg.RootFS.DiffIDs[i]}
	}
	manifest, err := json.Marshal(struct {
		SchemaVersion int                  `json:"schemaVersion"`
		MediaType     string               `json:"mediaType"`
		Config        ocispec.Descriptor   `json:"config"`
		Layers        []ocispec.Descriptor `json:"layers"`
	}{2, images.MediaTypeDockerSchema2Manifest, config, layers})
	if err != nil {
		return Image{}, err
	}
	target := ocispec.Descriptor{MediaType: images.MediaTypeDockerSchema2Manifest, Digest: digest.FromBytes(manifest), Size: int64(len(manifest))}
	s.contents.blobs[target.Digest] = blob{data: manifest}
	return Image{
		Config: ce.digest,
		Target: target,
		Blobs:  append([]ocispec.Descriptor{target, config}, layers...),
		Layers: unpack,
	}, nil
}
