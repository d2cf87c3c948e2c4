package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// KarpenterVersion is the Karpenter API module that
// tools/karpenter/go.mod requires; scripts/install-deps.sh downloads it
// into the Go module cache.
const KarpenterVersion = "v1.14.1"

// karpenterModule is that module's path.
const karpenterModule = "sigs.k8s.io/karpenter"

// KarpenterCRD is a CustomResourceDefinition Karpenter ships, the YAML of
// pkg/apis/crds/NAME (e.g. karpenter.sh_nodepools.yaml) in its module,
// which `go mod download` of tools/karpenter brings from the Go module
// proxy (or finds in the module cache) and checks against that module's
// go.sum. When it cannot, the test is skipped, or failed when Strict.
func KarpenterCRD(t T, name string) []byte {
	t.Helper()
	dir, err := karpenterModuleDir()
	if err == nil {
		var b []byte
		b, err = os.ReadFile(filepath.Join(dir, "pkg", "apis", "crds", name))
		if err == nil {
			return b
		}
	}
	missing := fmt.Sprintf("Karpenter's CRD %s (%s %s through tools/karpenter): %v", name, karpenterModule, KarpenterVersion, err)
	if Strict() {
		t.Fatalf("integration prerequisite missing: %s; run scripts/install-deps.sh", missing)
	}
	t.Skipf("integration prerequisite missing: %s (run scripts/install-deps.sh; set CI=true to fail instead of skip)", missing)
	return nil
}

// karpenterModuleDir is where the module cache holds tools/karpenter's
// Karpenter module.
func karpenterModuleDir() (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the project's module: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if root == "." || root == "/" {
		return "", fmt.Errorf("not inside the project's module (go env GOMOD = %q)", strings.TrimSpace(string(gomod)))
	}
	cmd := exec.Command("go", "mod", "download", "-json", karpenterModule)
	cmd.Dir = filepath.Join(root, "tools", "karpenter")
	// Its own module: not a go.work of the project, nor flags meant for it.
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	out, runErr := cmd.Output()
	// On failure the JSON still says why (its Error field).
	var m struct{ Version, Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil {
		if runErr != nil {
			return "", fmt.Errorf("go mod download in %s: %w", cmd.Dir, runErr)
		}
		return "", fmt.Errorf("go mod download in %s: %w", cmd.Dir, err)
	}
	switch {
	case m.Error != "":
		return "", fmt.Errorf("go mod download in %s: %s", cmd.Dir, m.Error)
	case runErr != nil:
		return "", fmt.Errorf("go mod download in %s: %w", cmd.Dir, runErr)
	case m.Version != KarpenterVersion:
		return "", fmt.Errorf("%s requires %s %s, the harness wants %s", cmd.Dir, karpenterModule, m.Version, KarpenterVersion)
	}
	return m.Dir, nil
}
