package docs

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackageMapComplete checks that the package map of
// docs/design/architecture.md names every directory of this module that
// holds Go code (what `go list ./...` lists), so that the map stays true as packages come and go.
func TestPackageMapComplete(t *testing.T) {
	page, err := os.ReadFile(filepath.Join(root, "docs/design/architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	pkgs := map[string]bool{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && path != root {
			if strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" {
				return filepath.SkipDir
			}
			// Another module (a tools module) is not this one's package,
			// as `go list ./...` counts them.
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
				return filepath.SkipDir
			}
		}
		if !d.IsDir() && strings.HasSuffix(name, ".go") {
			rel, err := filepath.Rel(root, filepath.Dir(path))
			if err != nil {
				return err
			}
			pkgs[filepath.ToSlash(rel)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 10 {
		t.Fatalf("found %d Go packages: the walk is broken", len(pkgs))
	}
	for p := range pkgs {
		if !strings.Contains(string(page), "| `"+p+"` |") {
			t.Errorf("docs/design/architecture.md: the package map has no row for %s", p)
		}
	}
}
