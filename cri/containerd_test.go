package cri_test

import (
	"context"
	"testing"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/cri/critest"
)

func TestContainerd(t *testing.T) {
	tests := []struct {
		name    string
		runtime string
		config  string
		want    cri.ContainerdInfo
		wantErr bool
	}{
		{
			name:    "containerd 1.6 reports its snapshotter",
			runtime: "containerd",
			config:  `{"containerd":{"snapshotter":"native","defaultRuntimeName":"runc"},"containerdEndpoint":"/run/k3s/containerd/containerd.sock"}`,
			want:    cri.ContainerdInfo{Address: "/run/k3s/containerd/containerd.sock", Snapshotter: "native"},
		},
		{
			name:    "containerd 2.x: the default runtime's own snapshotter",
			runtime: "containerd",
			config:  `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":"overlayfs"},"kata":{"snapshotter":"devmapper"}}},"containerdEndpoint":"/run/containerd/containerd.sock"}`,
			want:    cri.ContainerdInfo{Address: "/run/containerd/containerd.sock", Snapshotter: "overlayfs"},
		},
		{
			// Then the image filesystem decides, which this fake runtime
			// does not serve; the integration tests cover it.
			name:    "containerd 2.x without a runtime snapshotter",
			runtime: "containerd",
			config:  `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":""}}}}`,
			wantErr: true,
		},
		{name: "not containerd", runtime: "cri-o", config: `{}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			s.Name = tt.runtime
			s.Info = map[string]string{"config": tt.config}
			c, err := cri.Connect(context.Background(), s.Endpoint)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := c.Containerd(context.Background())
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("Containerd() = %+v, %v; want %+v (error: %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}
