package noderuntime

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/failure"
)

// A runtime other than containerd has no containerd to connect to: the
// operation is refused by name, with what to do instead.
func TestConnectContainerdRefusesOtherRuntimes(t *testing.T) {
	s := critest.Start(t)
	s.Name, s.RuntimeVersion = "cri-o", "1.36.3"
	c, _, err := ConnectContainerd(context.Background(), Options{CRIEndpoint: s.Endpoint}, OpExport)
	if err == nil {
		c.Close()
		t.Fatal("ConnectContainerd to CRI-O: no error")
	}
	var u *UnsupportedError
	if !errors.As(err, &u) || u.Op != OpExport || u.Reason() != failure.Unsupported {
		t.Fatalf("ConnectContainerd to CRI-O: %v, want an UnsupportedError for %s", err, OpExport)
	}
	for _, want := range []string{"bundle --from-runtime", "cri-o 1.36.3", "without --from-runtime", "skopeo copy containers-storage:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ConnectContainerd to CRI-O: %q, want it to say %q", err, want)
		}
	}
}
