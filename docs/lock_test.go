package docs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/bundle"
)

// TestLockExampleParses reads the lock the bundle lock reference shows as
// preloader reads a lock, so that the page shows the format as it is.
func TestLockExampleParses(t *testing.T) {
	const page = "docs/reference/bundle-lock.md"
	data, err := os.ReadFile(filepath.Join(root, page))
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, block := range strings.Split(string(data), "```yaml\n")[1:] {
		text, _, _ := strings.Cut(block, "```")
		if !strings.HasPrefix(text, "# Written by preloader bundle") {
			continue
		}
		found++
		l, err := bundle.ParseLock([]byte(text))
		if err != nil {
			t.Errorf("%s: the lock example does not parse: line%v", page, err)
			continue
		}
		out, err := l.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != text {
			t.Errorf("%s: the lock example is not as preloader writes it:\n%s", page, out)
		}
	}
	if found == 0 {
		t.Fatalf("%s shows no lock", page)
	}
}
