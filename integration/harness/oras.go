package harness

import "path/filepath"

// ORASVersion is the ORAS CLI that tools/oras/go.mod requires and
// scripts/install-deps.sh builds from it.
const ORASVersion = "v1.3.6"

// ORASBinary is that CLI; a test that needs it calls Require with it.
func ORASBinary() string {
	return filepath.Join(CacheDir(), "bin", "oras-"+ORASVersion)
}
