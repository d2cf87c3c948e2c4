package daemons

import (
	"fmt"
	"os"
)

// Strict reports whether missing prerequisites must fail tests instead of
// skipping them: in CI (CI=true) or when PRELOADER_REQUIRE_INTEGRATION=1.
// Integration tests must never pass in CI by silently skipping.
func Strict() bool {
	return os.Getenv("CI") == "true" || os.Getenv("PRELOADER_REQUIRE_INTEGRATION") == "1"
}

// Require checks that the test runs as root and that path is an executable
// file (name says what it is, for the message). If not, the test is skipped,
// or failed when Strict.
func Require(t T, name, path string) {
	t.Helper()
	var missing string
	if os.Geteuid() != 0 {
		missing = "root (the integration harness runs containerd, which needs root)"
	} else if err := CheckExecutable(path); err != nil {
		missing = fmt.Sprintf("%s: %v", name, err)
	}
	if missing == "" {
		return
	}
	if Strict() {
		t.Fatalf("integration prerequisite missing: %s; run scripts/install-deps.sh", missing)
	}
	t.Skipf("integration prerequisite missing: %s (run scripts/install-deps.sh; set CI=true to fail instead of skip)", missing)
}

// CheckExecutable reports why path is not an executable file, or nil.
func CheckExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}
