package main

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informer's first list can hand out the ConfigMap from before warm's
// own edit: that is not someone removing the image; a newer version
// without it is.
func TestWarmIgnoresConfigMapOlderThanItsEdit(t *testing.T) {
	const img = "corp.example/team/new:2.0"
	cm := func(rv, data string) any {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "preloader-config", ResourceVersion: rv}, Data: map[string]string{configMapKey: data}}
	}
	without := "images:\n  - image: corp.example/team/app:1.0\n"
	with := without + "  - image: " + img + "\n"
	tests := []struct {
		name    string
		objs    []any
		removed bool
	}{
		{"stale list from before the edit", []any{cm("99", without)}, false},
		{"the edit itself", []any{cm("100", with)}, false},
		{"a later edit that took it out", []any{cm("101", without)}, true},
	}
	for _, tt := range tests {
		w := &warmWaiter{name: "preloader-config", image: img, norm: img, accept: map[string]bool{}, listedAt: "100"}
		w.observeConfig(tt.objs)
		if w.removed != tt.removed {
			t.Errorf("%s: removed = %v, want %v", tt.name, w.removed, tt.removed)
		}
	}
}
