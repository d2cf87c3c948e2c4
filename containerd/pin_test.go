package containerd

import (
	"maps"
	"testing"
)

func TestPinUpdate(t *testing.T) {
	const (
		a, b   = "once:/etc/preloader/images.yaml", "agent:kube-preloader/preloader-config"
		markA  = LabelPinOwnerPrefix + a
		markB  = LabelPinOwnerPrefix + b
		legacy = LabelPreloaderPinned
	)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		owner  string
		hold   bool
		want   map[string]string
	}{
		{"pin a record nobody pinned", nil, a, true,
			map[string]string{LabelPinned: pinned, markA: held}},
		{"pin what a already holds", map[string]string{LabelPinned: pinned, markA: held}, a, true, nil},
		{"unpinned by hand while a still holds it: pinned again", map[string]string{markA: held}, a, true,
			map[string]string{LabelPinned: pinned}},
		{"pinned by an admin: not the preloader's", map[string]string{LabelPinned: pinned}, a, true, nil},
		{"pinned by b: a holds it too", map[string]string{LabelPinned: pinned, markB: held}, a, true,
			map[string]string{LabelPinned: pinned, markA: held}},
		{"pinned without owner: a holds it too", map[string]string{LabelPinned: pinned, legacy: held}, a, true,
			map[string]string{LabelPinned: pinned, markA: held}},
		{"b lets go just now: a pins it again", map[string]string{markB: held}, a, true,
			map[string]string{LabelPinned: pinned, markA: held}},
		{"no owner pins", nil, "", true,
			map[string]string{LabelPinned: pinned, legacy: held}},
		{"a lets go, the only holder", map[string]string{LabelPinned: pinned, markA: held}, a, false,
			map[string]string{LabelPinned: "", markA: ""}},
		{"a lets go, b holds it", map[string]string{LabelPinned: pinned, markA: held, markB: held}, a, false,
			map[string]string{markA: ""}},
		{"a lets go, a pin without owner holds it", map[string]string{LabelPinned: pinned, markA: held, legacy: held}, a, false,
			map[string]string{markA: ""}},
		{"a lets go of what it does not hold", map[string]string{LabelPinned: pinned, markB: held}, a, false, nil},
		{"a lets go of an admin's pin", map[string]string{LabelPinned: pinned}, a, false, nil},
		{"no owner never lets go", map[string]string{LabelPinned: pinned, legacy: held}, "", false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := PinUpdate(tc.labels, tc.owner, tc.hold); !maps.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
				t.Errorf("PinUpdate(%v, %q, hold %v) = %v, want %v", tc.labels, tc.owner, tc.hold, got, tc.want)
			}
		})
	}
}
