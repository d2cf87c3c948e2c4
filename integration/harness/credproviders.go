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

// GCPCredentialProviderBinary is the kubelet's own e2e test plugin,
// test/e2e_node/plugins/gcp-credential-provider of k8s.io/kubernetes at
// KubeVersion, which scripts/build-kube.sh builds (make deps); a test
// that needs it calls Require with it.
func GCPCredentialProviderBinary() string {
	return filepath.Join(CacheDir(), "bin", "gcp-credential-provider-"+KubeVersion)
}
