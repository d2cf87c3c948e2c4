package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// HelmVersion is the helm scripts/install-deps.sh builds.
const HelmVersion = "v4.3.1"

// HelmBinary is that helm; a test that needs it calls Require with it.
func HelmBinary() string {
	return filepath.Join(CacheDir(), "bin", "helm-"+HelmVersion)
}

// Helm runs helm with args and returns its combined output and error.
// kubeconfig may be empty (helm template, lint, package); helm's caches
// and registry logins stay in a directory of the test's own.
func Helm(t T, kubeconfig string, args ...string) (string, error) {
	t.Helper()
	Require(t, "helm "+HelmVersion+" (scripts/install-deps.sh)", HelmBinary())
	cmd := exec.Command(HelmBinary(), args...)
	cmd.Env = append(os.Environ(), HelmEnv(t.TempDir())...)
	if kubeconfig != "" {
		cmd.Env = append(cmd.Env, "KUBECONFIG="+kubeconfig)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// HelmEnv keeps helm's caches, config and registry logins in home, as a
// CI job's own would be, away from the machine's.
func HelmEnv(home string) []string {
	return []string{
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
		"HELM_REGISTRY_CONFIG=" + filepath.Join(home, "registry.json"),
	}
}

// MustHelm is Helm that fails the test on an error.
func MustHelm(t T, kubeconfig string, args ...string) string {
	t.Helper()
	out, err := Helm(t, kubeconfig, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// HelmDocsVersion is the helm-docs that tools/go.mod requires and
// scripts/install-deps.sh builds from it.
const HelmDocsVersion = "v1.14.2"

// HelmDocsBinary is that helm-docs; a test that needs it calls Require
// with it.
func HelmDocsBinary() string {
	return filepath.Join(CacheDir(), "bin", "helm-docs-"+HelmDocsVersion)
}
