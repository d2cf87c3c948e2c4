package archivetest

import (
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Signature is a cosign signature for an archive to carry: the
// index.json entry Name (repo:sha256-<hex>.sig), the payload signed and
// the base64 signature over it.
type Signature struct {
	Name    string
	Payload []byte
	Base64  string
}

// SignatureManifest is the image cosign pushes as a .sig tag: an OCI
// manifest with one simple-signing layer, the payload, its annotation
// the signature.
func SignatureManifest(sigs ...Signature) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, s := range sigs {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:       static.NewLayer(s.Payload, "application/vnd.dev.cosign.simplesigning.v1+json"),
			Annotations: map[string]string{"dev.cosignproject.cosign/signature": s.Base64},
		})
		if err != nil {
			return nil, err
		}
	}
	return img, nil
}

// WriteSigned writes imgs as an OCI layout named as bundles name them
// (io.containerd.image.name and org.opencontainers.image.ref.name), with
// each of sigs an extra index.json entry holding its .sig manifest.
func WriteSigned(w io.Writer, imgs []Image, sigs []Signature) error {
	for _, s := range sigs {
		m, err := SignatureManifest(s)
		if err != nil {
			return err
		}
		imgs = append(imgs, Image{Names: []string{s.Name}, Image: m})
	}
	return WriteBundle(w, imgs, nil)
}

// WriteBundle writes imgs and indexes (by name) as an OCI layout named as
// bundles name them, each manifest and index as it is.
func WriteBundle(w io.Writer, imgs []Image, indexes map[string]v1.ImageIndex) error {
	return writeLayout(w, func(p layout.Path) error {
		for n, idx := range indexes {
			if err := p.AppendIndex(idx, layout.WithAnnotations(names(n))); err != nil {
				return err
			}
		}
		for _, img := range imgs {
			for _, n := range img.Names {
				if err := p.AppendImage(img.Image, layout.WithAnnotations(names(n))); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func names(n string) map[string]string {
	return map[string]string{"io.containerd.image.name": n, "org.opencontainers.image.ref.name": n}
}
