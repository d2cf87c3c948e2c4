package preload_test

import (
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// TestNextRefresh: the agent sleeps until the earliest check a result
// names, and no longer than the shortest interval when none names one.
func TestNextRefresh(t *testing.T) {
	soon := time.Now().Add(time.Minute)
	images := []config.Image{{Name: "a:1", Refresh: time.Hour}, {Name: "b:1", Refresh: 2 * time.Hour}, {Name: "c:1"}}
	tests := []struct {
		name    string
		images  []config.Image
		results []preload.Result
		want    time.Duration // from now; -1: zero time
	}{
		{"nothing refreshed", images[2:], []preload.Result{{Image: "c:1"}}, -1},
		{"a result's check", images, []preload.Result{{Image: "a:1", NextCheck: soon}, {Image: "b:1", NextCheck: soon.Add(time.Minute)}}, time.Minute},
		{"no time told: the shortest interval", images, []preload.Result{{Image: "a:1"}, {Image: "b:1"}}, time.Hour},
		{"a check past the interval: the interval", images, []preload.Result{{Image: "b:1", NextCheck: time.Now().Add(90 * time.Minute)}}, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := preload.NextRefresh(tt.images, tt.results)
			if tt.want < 0 {
				if !got.IsZero() {
					t.Fatalf("NextRefresh = %v, want none", got)
				}
				return
			}
			if d := time.Until(got); d > tt.want || d < tt.want-5*time.Second {
				t.Errorf("NextRefresh in %v, want %v", d.Round(time.Second), tt.want)
			}
		})
	}
}
