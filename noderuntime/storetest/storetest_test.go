package storetest_test

import (
	"context"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/noderuntime/storetest"
)

var _ noderuntime.Containerd = (*critest.Containerd)(nil)

// The in-process fake passes the suite the real runtimes pass in
// integration/: as containerd (CRI plus critest.Containerd) and as a
// runtime known only by its CRI, which must refuse containerd's
// operations rather than fake them.
func TestFakeConforms(t *testing.T) {
	for _, tt := range []struct {
		name  string
		store func(*critest.Server, *cri.Client) noderuntime.Store
	}{
		{"containerd", func(s *critest.Server, c *cri.Client) noderuntime.Store {
			return noderuntime.WithContainerd(c, critest.NewContainerd(s))
		}},
		{"CRI only", func(_ *critest.Server, c *cri.Client) noderuntime.Store { return noderuntime.CRIOnly(c) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			auth := &runtimeapi.AuthConfig{Username: "team", Password: "right-secret"}
			pub := s.Publish("registry.example/conformance/public:1", "public", nil)
			priv := s.Publish("registry.example/conformance/private:1", "private", auth)
			c, err := cri.Connect(context.Background(), s.Endpoint)
			if err != nil {
				t.Fatal(err)
			}
			st := tt.store(s, c)
			defer st.Close()
			storetest.Run(t, storetest.Backend{
				Store:        st,
				Public:       storetest.Image{Ref: pub.Ref, Digest: pub.Digest},
				Private:      storetest.Image{Ref: priv.Ref, Digest: priv.Digest},
				Auth:         auth,
				WrongAuth:    &runtimeapi.AuthConfig{Username: "team", Password: "wrong-secret"},
				Missing:      "registry.example/conformance/missing:1",
				PinsReported: true,
			})
		})
	}
}
