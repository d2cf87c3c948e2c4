package harness

import "path/filepath"

// ECRCredentialProviderVersion is the ecr-credential-provider that
// tools/credproviders/go.mod requires and scripts/install-deps.sh builds
// from it.
const ECRCredentialProviderVersion = "v1.37.0"

// ECRCredentialProviderBinary is that plugin; a test that needs it calls
// Require with it.
func ECRCredentialProviderBinary() string {
	return filepath.Join(CacheDir(), "bin", "ecr-credential-provider-"+ECRCredentialProviderVersion)
}
