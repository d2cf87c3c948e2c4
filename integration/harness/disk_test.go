package harness

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestCheckDiskBudget: on a filesystem of its own (a 4 MiB tmpfs), the
// check passes while it is empty and fails, saying how full, once it is
// past the default budget's 85%.
func TestCheckDiskBudget(t *testing.T) {
	if os.Geteuid() != 0 {
		if Strict() {
			t.Fatal("integration prerequisite missing: root, to mount a tmpfs")
		}
		t.Skip("integration prerequisite missing: root, to mount a tmpfs (set CI=true to fail instead of skip)")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	if err := CheckDiskBudget(dir); err != nil {
		t.Fatalf("empty: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "fill"), make([]byte, 3600<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	err := CheckDiskBudget(dir)
	if err == nil || !strings.Contains(err.Error(), "% full") || !strings.Contains(err.Error(), "disk budget") {
		t.Fatalf("at 88%% full: %v, want an error saying how full", err)
	}
}
