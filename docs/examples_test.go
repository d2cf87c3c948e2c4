package docs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// configReference is the page whose every ```yaml block is an images.yaml.
const configReference = "docs/reference/config.md"

// TestConfigExamplesParse parses every images.yaml the pages show (a
// ```yaml block whose first key is images:, and every ```yaml block of the
// config reference) as `once` and the agent would, so that an operator who
// copies one gets a config the parser takes.
func TestConfigExamplesParse(t *testing.T) {
	found := 0
	for _, page := range markdownPages(t) {
		data, err := os.ReadFile(filepath.Join(root, page))
		if err != nil {
			t.Fatal(err)
		}
		for _, ex := range configExamples(string(data), page == configReference) {
			found++
			if strings.HasPrefix(ex.text, "# Written by preloader controller") {
				// The list the controller writes, shown as it looks.
				if _, err := workloads.Decode(page, ex.text); err != nil {
					t.Errorf("%s:%d: the workloads.yaml example does not decode: %v", page, ex.line, err)
				}
				continue
			}
			if _, err := config.Parse(page, []byte(ex.text)); err != nil {
				t.Errorf("%s:%d: the images.yaml example does not parse: %v", page, ex.line, err)
			}
		}
	}
	if found == 0 {
		t.Fatal("no images.yaml example found in the pages")
	}
	t.Logf("%d images.yaml examples checked", found)
}

type example struct {
	line int // of the block's first line of YAML
	text string
}

// configExamples returns the ```yaml blocks of a page whose first line
// that is not a comment starts with "images:", or all of them.
func configExamples(page string, all bool) []example {
	var (
		out   []example
		in    bool
		block []string
		start int
	)
	for i, line := range strings.Split(page, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case !in && trimmed == "```yaml":
			in, block, start = true, nil, i+2
		case in && strings.HasPrefix(trimmed, "```"):
			in = false
			if all {
				out = append(out, example{line: start, text: strings.Join(block, "\n") + "\n"})
				break
			}
			for _, l := range block {
				if t := strings.TrimSpace(l); t == "" || strings.HasPrefix(t, "#") {
					continue
				} else if strings.HasPrefix(l, "images:") {
					out = append(out, example{line: start, text: strings.Join(block, "\n") + "\n"})
				}
				break
			}
		case in:
			block = append(block, line)
		}
	}
	return out
}

// TestPodExamplesDecode decodes every Pod the pages show (a ```yaml block
// of kind: Pod) strictly, as the API server would refuse a misspelt
// field, so that an operator who copies one gets the pod it describes.
func TestPodExamplesDecode(t *testing.T) {
	found := 0
	for _, page := range markdownPages(t) {
		data, err := os.ReadFile(filepath.Join(root, page))
		if err != nil {
			t.Fatal(err)
		}
		for _, ex := range configExamples(string(data), true) {
			if !strings.Contains("\n"+ex.text, "\nkind: Pod\n") {
				continue
			}
			found++
			var pod corev1.Pod
			if err := yaml.UnmarshalStrict([]byte(ex.text), &pod); err != nil {
				t.Errorf("%s:%d: the Pod example does not decode: %v", page, ex.line, err)
			}
		}
	}
	if found == 0 {
		t.Fatal("no Pod example found in the pages")
	}
	t.Logf("%d Pod examples checked", found)
}
