package harness_test

import (
	"os"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestORASVersion: the CLI the tests look for is the one
// scripts/install-deps.sh builds, the version tools/oras requires.
func TestORASVersion(t *testing.T) {
	mod, err := os.ReadFile("../../tools/oras/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(mod)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "oras.land/oras" {
			if f[1] != harness.ORASVersion {
				t.Errorf("tools/oras/go.mod requires %s, harness looks for %s", f[1], harness.ORASVersion)
			}
			return
		}
	}
	t.Fatal("tools/oras/go.mod does not require oras.land/oras")
}
