package harness_test

import (
	"os"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestToolVersions: each tool the tests look for is the one
// scripts/install-deps.sh builds, the version its tools module requires.
func TestToolVersions(t *testing.T) {
	for _, tc := range []struct {
		goMod, module, want string
	}{
		{"../../tools/credproviders/go.mod", "k8s.io/cloud-provider-aws", harness.ECRCredentialProviderVersion},
		{"../../tools/crio/go.mod", "github.com/cri-o/cri-o", harness.CRIOVersion},
		{"../../tools/oras/go.mod", "oras.land/oras", harness.ORASVersion},
		{"../../tools/cosign/go.mod", "github.com/sigstore/cosign/v2", harness.CosignVersion},
		{"../../tools/karpenter/go.mod", "sigs.k8s.io/karpenter", harness.KarpenterVersion},
	} {
		t.Run(tc.module, func(t *testing.T) {
			mod, err := os.ReadFile(tc.goMod)
			if err != nil {
				t.Fatal(err)
			}
			for line := range strings.Lines(string(mod)) {
				// In a require block, or a require line of its own.
				f := strings.Fields(strings.TrimPrefix(line, "require "))
				if len(f) >= 2 && f[0] == tc.module {
					if f[1] != tc.want {
						t.Errorf("%s requires %s, harness looks for %s", tc.goMod, f[1], tc.want)
					}
					return
				}
			}
			t.Fatalf("%s does not require %s", tc.goMod, tc.module)
		})
	}
}
