package artifact

import (
	"errors"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/failure"
)

func TestMountable(t *testing.T) {
	const (
		empty  = "application/vnd.oci.empty.v1+json"
		custom = "application/vnd.example.model.config.v1+json"
		docker = "application/vnd.docker.container.image.v1+json"
	)
	for _, tc := range []struct {
		name       string
		m          ocispec.Manifest
		image      bool
		containerd bool
		crio       bool
	}{
		{"OCI image", ocispec.Manifest{Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig}}, true, true, true},
		{"Docker image", ocispec.Manifest{Config: ocispec.Descriptor{MediaType: docker}}, true, true, true},
		{"image config with an artifactType", ocispec.Manifest{ArtifactType: "application/vnd.example.model.v1", Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig}}, true, true, true},
		{"empty config with an artifactType (oras push --artifact-type)", ocispec.Manifest{ArtifactType: "application/vnd.example.model.v1", Config: ocispec.Descriptor{MediaType: empty}}, false, false, true},
		{"empty config without an artifactType", ocispec.Manifest{Config: ocispec.Descriptor{MediaType: empty}}, false, false, true},
		{"custom config", ocispec.Manifest{Config: ocispec.Descriptor{MediaType: custom}}, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ShapeOf(tc.m)
			if got := s.Image(); got != tc.image {
				t.Errorf("Image() = %v, want %v", got, tc.image)
			}
			if got := Mountable("containerd", s); got != tc.containerd {
				t.Errorf("Mountable(containerd) = %v, want %v", got, tc.containerd)
			}
			if got := Mountable("cri-o", s); got != tc.crio {
				t.Errorf("Mountable(cri-o) = %v, want %v", got, tc.crio)
			}
		})
	}
}

func TestError(t *testing.T) {
	var err error = &Error{Ref: "r.example/models/m:1", Runtime: "containerd 2.4.2", Shape: Shape{ConfigMediaType: "application/vnd.oci.empty.v1+json", ArtifactType: "application/vnd.example.model.v1"}}
	for _, want := range []string{
		"r.example/models/m:1 is an OCI artifact (artifactType application/vnd.example.model.v1, config application/vnd.oci.empty.v1+json)",
		"containerd 2.4.2 does not unpack OCI artifacts",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	var known interface{ Reason() failure.Reason }
	if !errors.As(err, &known) || known.Reason() != failure.Unsupported {
		t.Errorf("reason of %v is not %v", err, failure.Unsupported)
	}
}
