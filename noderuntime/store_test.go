package noderuntime

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/failure"
)

// A runtime known only by its CRI fails what only containerd does, each
// with the unsupported reason and what to do instead, and does what needs
// nothing of it (unpin nothing, collect no garbage).
func TestCRIOnlyUnsupported(t *testing.T) {
	s := critest.Start(t)
	s.Name = "cri-o"
	c, err := cri.Connect(context.Background(), s.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st := CRIOnly(c)
	ctx := context.Background()
	_, pinErr := st.SyncPins(ctx, "once:/etc/images.yaml", []string{"registry.example/a:1"}, nil)
	for _, tt := range []struct {
		op      Op
		err     error
		instead string
	}{
		{OpPullDirect, st.PullDirect(ctx, "registry.example/a:1", nil, 3), "pullVia: cri"},
		{OpImport, st.Import(ctx, nil, nil), ""},
		{OpTag, st.Tag(ctx, "registry.example/a:1", "mirror.example/a:1"), "registries.conf"},
		{OpPin, pinErr, "pinned_images"},
	} {
		var u *UnsupportedError
		if !errors.As(tt.err, &u) || u.Op != tt.op || u.Reason() != failure.Unsupported {
			t.Errorf("%s: %v, want an UnsupportedError", tt.op, tt.err)
			continue
		}
		if !strings.Contains(tt.err.Error(), "cri-o") || !strings.Contains(tt.err.Error(), tt.instead) {
			t.Errorf("%s: %q does not name the runtime and %q", tt.op, tt.err, tt.instead)
		}
		if st.Can(tt.op) == nil {
			t.Errorf("Can(%s) = nil", tt.op)
		}
	}
	if _, err := st.SyncPins(ctx, "once:/etc/images.yaml", nil, []string{"registry.example/a:1"}); err != nil {
		t.Errorf("SyncPins with nothing to pin: %v", err)
	}
	if err := st.CollectGarbage(ctx); err != nil {
		t.Errorf("CollectGarbage: %v", err)
	}
}
