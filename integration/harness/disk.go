package harness

import (
	"fmt"
	"syscall"

	"github.com/kube-preloader/kube-preloader/preload/config"
)

// CheckDiskBudget fails when the filesystem of dir, where the tests'
// runtimes keep their images, is fuller than the product's default disk
// budget allows: every test on that budget would then refuse its pulls
// with "disk budget", one confusing failure each, instead of this one.
func CheckDiskBudget(dir string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("disk space of %s: %w", dir, err)
	}
	if st.Blocks == 0 {
		return nil
	}
	high := config.DefaultBudget().ImageGCHighThresholdPercent
	used := 100 * float64(st.Blocks-st.Bavail) / float64(st.Blocks)
	if used >= float64(high) {
		free := float64(st.Bavail) * float64(st.Bsize) / (1 << 30)
		return fmt.Errorf("%s is %.1f%% full (%.1f GiB free): the default disk budget refuses pulls past %d%%, so the integration tests would fail with \"disk budget\"; free some space (Go build cache, old test directories in %s)", dir, used, free, high, dir)
	}
	return nil
}
