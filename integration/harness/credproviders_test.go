package harness_test

import (
	"os"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestECRCredentialProviderVersion: the plugin the tests look for is the
// one scripts/install-deps.sh builds, the version tools/credproviders
// requires.
func TestECRCredentialProviderVersion(t *testing.T) {
	mod, err := os.ReadFile("../../tools/credproviders/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(mod)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "k8s.io/cloud-provider-aws" {
			if f[1] != harness.ECRCredentialProviderVersion {
				t.Errorf("tools/credproviders/go.mod requires %s, harness looks for %s", f[1], harness.ECRCredentialProviderVersion)
			}
			return
		}
	}
	t.Fatal("tools/credproviders/go.mod does not require k8s.io/cloud-provider-aws")
}
