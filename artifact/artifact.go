// Package artifact tells OCI artifacts from container images by their
// manifest, and decides where a runtime can hold one so that a pod mounts
// its content as an image volume.
package artifact

import (
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/failure"
)

// Shape is what a manifest says it holds.
type Shape struct {
	ConfigMediaType string
	ArtifactType    string // the manifest's artifactType; "" when it has none
}

// ShapeOf is the shape of manifest m.
func ShapeOf(m ocispec.Manifest) Shape {
	return Shape{ConfigMediaType: m.Config.MediaType, ArtifactType: m.ArtifactType}
}

// Image says whether s is a container image: its config is an image
// config, whose diff IDs name the layers an unpack applies. An
// artifactType beside an image config changes nothing a runtime reads.
func (s Shape) Image() bool {
	switch s.ConfigMediaType {
	case ocispec.MediaTypeImageConfig, images.MediaTypeDockerSchema2Config:
		return true
	}
	return false
}

func (s Shape) String() string {
	if s.ArtifactType != "" {
		return fmt.Sprintf("artifactType %s, config %s", s.ArtifactType, s.ConfigMediaType)
	}
	return "config " + s.ConfigMediaType
}

// Mountable decides whether a runtime, by the name its CRI Version gives
// ("containerd", "cri-o"), holds an image of shape s so that a pod can
// mount its content. containerd (1.6 to 2.4) records an artifact as an
// image but unpacks only the layers an image config lists: its pull
// fails, or "succeeds" with nothing unpacked and the pod that mounts it
// fails or finds none of its files. CRI-O keeps artifacts in an artifact
// store of its own and mounts them. Other runtimes are trusted as the
// kubelet trusts them.
func Mountable(runtime string, s Shape) bool {
	if s.Image() {
		return true
	}
	return !strings.EqualFold(runtime, "containerd")
}

// Error is an artifact a runtime cannot hold for a pod to mount. Retrying
// cannot mend it.
type Error struct {
	Ref     string
	Shape   Shape
	Runtime string // name and version, or the name alone where no version is known
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s is an OCI artifact (%s), not a container image: %s does not unpack OCI artifacts, so a pod could not mount its content as an image volume; pull it from a registry on CRI-O, which mounts artifacts, or package it as an image (an image config listing its layers)",
		e.Ref, e.Shape, e.Runtime)
}

func (e *Error) Reason() failure.Reason { return failure.Unsupported }
