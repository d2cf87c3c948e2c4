package preload

import (
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// inUse keeps an image that a container runs or mounts as an image
// volume, matched by ID or by any of its names, and nothing else.
func TestInUse(t *testing.T) {
	const id = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	img := &runtimeapi.Image{Id: id, RepoTags: []string{"registry.example/models/llama:1"},
		RepoDigests: []string{"registry.example/models/llama@sha256:2222222222222222222222222222222222222222222222222222222222222222"}}
	ctr := func(name, image string, mounts ...string) containerUse {
		c := &runtimeapi.Container{Id: name, Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image: &runtimeapi.ImageSpec{Image: image}, ImageRef: image,
			Labels: map[string]string{"io.kubernetes.pod.name": "infer", "io.kubernetes.pod.namespace": "ml"}}
		var ms []*runtimeapi.Mount
		ms = append(ms, &runtimeapi.Mount{ContainerPath: "/etc/hosts", HostPath: "/var/lib/kubelet/hosts"}) // not an image volume
		for _, m := range mounts {
			ms = append(ms, &runtimeapi.Mount{ContainerPath: "/models", Image: &runtimeapi.ImageSpec{Image: m}})
		}
		return useOf(c, ms)
	}
	tests := []struct {
		name       string
		containers []containerUse
		want       string
	}{
		{name: "no containers"},
		{name: "others' images and mounts", containers: []containerUse{ctr("app", "sha256:33", "sha256:44")}},
		{name: "a plain bind mount is no image volume", containers: []containerUse{ctr("app", "sha256:33")}},
		{name: "mounted by ID, as the kubelet asks",
			containers: []containerUse{ctr("server", "sha256:33", id)},
			want:       "mounted as an image volume by container ml/infer/server"},
		{name: "mounted by tag", containers: []containerUse{ctr("server", "sha256:33", img.RepoTags[0])},
			want: "mounted as an image volume by container ml/infer/server"},
		{name: "mounted by digest", containers: []containerUse{ctr("server", "sha256:33", img.RepoDigests[0])},
			want: "mounted as an image volume by container ml/infer/server"},
		{name: "run by one, mounted by two",
			containers: []containerUse{ctr("a", id), ctr("b", "sha256:33", "sha256:44", id), ctr("c", "sha256:33", id)},
			want:       "used by container ml/infer/a; mounted as an image volume by container ml/infer/b, ml/infer/c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inUse(img, tt.containers); got != tt.want {
				t.Errorf("inUse = %q, want %q", got, tt.want)
			}
		})
	}
}
