package containerd

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
)

func TestStreamCut(t *testing.T) {
	for _, tc := range []struct {
		name        string
		err         error
		unavailable bool
	}{
		// As the content proxy reports a Send that returned io.EOF.
		{"send cut by a killed containerd", fmt.Errorf("write blob sha256:ab: failed to copy: failed to send write: %w", errgrpc.ToNative(io.EOF)), true},
		{"status cut, as the proxy reports it", fmt.Errorf("error getting writer status: %w", errgrpc.ToNative(io.EOF)), true},
		{"bare io.EOF", fmt.Errorf("write blob sha256:ab: %w", io.EOF), true},
		{"status cut", fmt.Errorf("error getting writer status: %w", io.EOF), true},
		{"truncated archive", fmt.Errorf("write blob sha256:ab: failed to copy: %w", io.ErrUnexpectedEOF), false},
		{"truncated archive through the proxy", fmt.Errorf("failed to send write: %w", errgrpc.ToNative(io.ErrUnexpectedEOF)), false},
		{"digest mismatch", fmt.Errorf("write blob sha256:ab: %w", errdefs.ErrFailedPrecondition), false},
		{"already unavailable", fmt.Errorf("%w: %w", errdefs.ErrUnavailable, io.EOF), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := streamCut(tc.err)
			if errdefs.IsUnavailable(got) != tc.unavailable {
				t.Errorf("streamCut(%q) = %q; unavailable = %v, want %v", tc.err, got, !tc.unavailable, tc.unavailable)
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("streamCut(%q) = %q lost the error", tc.err, got)
			}
		})
	}
}
