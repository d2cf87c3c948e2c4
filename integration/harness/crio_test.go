package harness_test

import (
	"os"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestCRIOVersion: the CRI-O the tests look for is the one
// scripts/install-deps.sh builds, the version tools/crio requires.
func TestCRIOVersion(t *testing.T) {
	mod, err := os.ReadFile("../../tools/crio/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(mod)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "github.com/cri-o/cri-o" {
			if f[1] != harness.CRIOVersion {
				t.Errorf("tools/crio/go.mod requires %s, harness looks for %s", f[1], harness.CRIOVersion)
			}
			return
		}
	}
	t.Fatal("tools/crio/go.mod does not require github.com/cri-o/cri-o")
}
