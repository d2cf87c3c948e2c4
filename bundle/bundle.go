// Package bundle fetches images from their registries, without a Docker
// daemon, into one OCI image layout archive for a platform: the file an
// air-gapped node imports from its archive directory. Blobs that images
// share are stored once; each image's name is recorded the way containerd
// reads it back on import.
package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kube-preloader/kube-preloader/artifact"
)

// Annotations on index.json entries that name an image. containerd's
// importer reads the first; ref.name holds the full reference too (as
// crane and skopeo write it), so that names stay unique in a bundle of
// many repositories and tools that read only the OCI annotation agree.
const (
	AnnotationImageName = "io.containerd.image.name"
	AnnotationRefName   = "org.opencontainers.image.ref.name"
)

// Source is one image to bundle.
type Source struct {
	// Name is recorded in the bundle: the reference pods use.
	Name string
	// From is where to fetch it, when not Name: a mirror's reference.
	From string
	// Auth are the credentials to try, in order; anonymous comes last.
	Auth []authn.Authenticator
}

// Options configure Write.
type Options struct {
	Platform v1.Platform
	// Progress receives a line per image and, while blobs stream, one
	// every ProgressEvery. Nil: no progress.
	Progress      io.Writer
	ProgressEvery time.Duration
	// Transport for registry requests; nil is http.DefaultTransport.
	Transport http.RoundTripper
}

type fetched struct {
	src    Source
	desc   v1.Descriptor
	img    v1.Image
	config v1.Hash
}

// Write fetches every source's image for opts.Platform and writes them to
// w as the tar stream of one OCI image layout.
func Write(ctx context.Context, w io.Writer, sources []Source, opts Options) error {
	p := &meter{w: opts.Progress, every: opts.ProgressEvery}
	var imgs []fetched
	blobs := make(map[v1.Hash]bool)
	for i, s := range sources {
		f, err := fetch(ctx, s, opts)
		if err != nil {
			return err
		}
		imgs = append(imgs, f)
		layers, err := f.img.Layers()
		if err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		var size int64
		for _, l := range layers {
			d, err := l.Digest()
			if err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
			if !blobs[d] {
				blobs[d] = true
				n, err := l.Size()
				if err != nil {
					return fmt.Errorf("%s: %w", s.Name, err)
				}
				size += n
			}
		}
		p.total += size
		p.printf("bundle: [%d/%d] %s (%s from %s): %s to fetch\n", i+1, len(sources), s.Name, f.desc.Digest, s.from(), mib(size))
	}

	tw := tar.NewWriter(w)
	if err := writeFile(tw, "oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	written := make(map[v1.Hash]bool)
	index := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	stop := p.start()
	defer stop()
	for _, f := range imgs {
		if err := writeImage(ctx, tw, f, written, p); err != nil {
			return fmt.Errorf("%s: %w", f.src.Name, err)
		}
		desc := f.desc
		desc.Platform = &opts.Platform
		desc.Annotations = map[string]string{AnnotationImageName: f.src.Name, AnnotationRefName: f.src.Name}
		index.Manifests = append(index.Manifests, desc)
	}
	data, err := json.Marshal(index)
	if err != nil {
		return err
	}
	if err := writeFile(tw, "index.json", data); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	stop()
	p.printf("bundle: %d images, %d blobs, %s\n", len(imgs), len(written), mib(p.done.Load()))
	return nil
}

func (s Source) from() string {
	if s.From != "" {
		return s.From
	}
	return s.Name
}

// fetch resolves a source's image for the platform, trying each credential
// while the registry says unauthorized.
func fetch(ctx context.Context, s Source, opts Options) (fetched, error) {
	ref, err := name.ParseReference(s.from())
	if err != nil {
		return fetched{}, fmt.Errorf("%s: %w", s.from(), err)
	}
	base := opts.Transport
	if base == nil {
		base = http.DefaultTransport // HTTPS_PROXY, NO_PROXY
	}
	var errs []error
	for _, a := range append(s.Auth, nil) {
		tr := newRegistryTransport(base, ref.Context().RegistryStr(), a)
		ropts := []remote.Option{remote.WithContext(ctx), remote.WithPlatform(opts.Platform), remote.WithTransport(tr)}
		desc, err := remote.Get(ref, ropts...)
		if err == nil {
			var img v1.Image
			if img, err = desc.Image(); err == nil {
				return resolved(s, img)
			}
		}
		errs = append(errs, err)
		var terr *transport.Error
		if !errors.As(err, &terr) || (terr.StatusCode != http.StatusUnauthorized && terr.StatusCode != http.StatusForbidden) {
			break
		}
	}
	return fetched{}, fmt.Errorf("fetch %s: %w", s.from(), errors.Join(errs...))
}

func resolved(s Source, img v1.Image) (fetched, error) {
	m, err := img.Manifest()
	if err != nil {
		return fetched{}, err
	}
	// A bundle is for containerd's import, which unpacks no artifact:
	// refused here rather than on the node.
	shape := artifact.Shape{ConfigMediaType: string(m.Config.MediaType), ArtifactType: m.ArtifactType}
	if !artifact.Mountable("containerd", shape) {
		return fetched{}, &artifact.Error{Ref: s.from(), Shape: shape, Runtime: "containerd"}
	}
	digest, err := img.Digest()
	if err != nil {
		return fetched{}, err
	}
	mt, err := img.MediaType()
	if err != nil {
		return fetched{}, err
	}
	size, err := img.Size()
	if err != nil {
		return fetched{}, err
	}
	cfg, err := img.ConfigName()
	if err != nil {
		return fetched{}, err
	}
	return fetched{src: s, img: img, config: cfg, desc: v1.Descriptor{MediaType: mt, Digest: digest, Size: size}}, nil
}

// writeImage writes an image's blobs that are not written yet: layers,
// config, then the manifest exactly as the registry served it, so that its
// digest holds.
func writeImage(ctx context.Context, tw *tar.Writer, f fetched, written map[v1.Hash]bool, p *meter) error {
	layers, err := f.img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		if written[d] {
			continue
		}
		size, err := l.Size()
		if err != nil {
			return err
		}
		// Compressed verifies the digest as it reads: a bad blob fails
		// the bundle instead of landing in it.
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d, err)
		}
		err = writeBlob(tw, d, size, ctxReader{ctx, io.TeeReader(rc, p)})
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d, err)
		}
		written[d] = true
	}
	raw, err := f.img.RawConfigFile()
	if err != nil {
		return err
	}
	if !written[f.config] {
		if err := writeBlob(tw, f.config, int64(len(raw)), bytes.NewReader(raw)); err != nil {
			return err
		}
		written[f.config] = true
	}
	manifest, err := f.img.RawManifest()
	if err != nil {
		return err
	}
	if !written[f.desc.Digest] {
		if err := writeBlob(tw, f.desc.Digest, int64(len(manifest)), bytes.NewReader(manifest)); err != nil {
			return err
		}
		written[f.desc.Digest] = true
	}
	return nil
}

func writeBlob(tw *tar.Writer, d v1.Hash, size int64, r io.Reader) error {
	if err := tw.WriteHeader(&tar.Header{Name: "blobs/" + d.Algorithm + "/" + d.Hex, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	n, err := io.Copy(tw, r)
	if err == nil && n != size {
		err = fmt.Errorf("got %d bytes, want %d", n, size)
	}
	return err
}

func writeFile(tw *tar.Writer, name string, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}
