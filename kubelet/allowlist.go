package kubelet

import (
	"fmt"
	"path"
	"slices"

	"github.com/distribution/reference"
	"sigs.k8s.io/yaml"
)

// Allowlist returns the preloadedImagesVerificationAllowlist entries that
// let pods without credentials use images (written as pods write them) on
// a kubelet of the given minor release (0: the newest), and notes on what
// the list cannot express exactly.
//
// From 1.36 the kubelet compares the pod's image without tag and digest
// with exact entries, so each image gets its own name. Kubelet 1.35
// compares the image as written, tag included: an exact entry never
// matches a tagged image, so only the repository's parent as "prefix/*"
// can, which lets every sibling repository through too.
func Allowlist(images []string, minor int) (entries, notes []string) {
	seen := map[string]bool{}
	add := func(e string) {
		if !seen[e] {
			seen[e] = true
			entries = append(entries, e)
		}
	}
	for _, img := range images {
		name := trimTagDigest(img)
		if minor == 0 || minor >= 36 {
			add(name)
			continue
		}
		if name == img && normalized(img) {
			// Untagged and fully qualified: 1.35 matches it exactly, and
			// its validation accepts it.
			add(img)
			continue
		}
		parent := path.Dir(name)
		if parent == "." {
			notes = append(notes, fmt.Sprintf("%s: kubelet 1.%d compares the tag too, and a name without a registry has no prefix to allow; write the image with its registry and path (and so in pods)", img, minor))
			continue
		}
		add(parent + "/*")
		notes = append(notes, fmt.Sprintf("%s: kubelet 1.%d compares the tag too (fixed in 1.36), so %s/* allows it, and every other image under %s/", img, minor, parent, parent))
	}
	slices.Sort(entries)
	return entries, notes
}

// normalized reports whether name is already in its fully qualified form,
// the only exact entry kubelet 1.35 accepts.
func normalized(name string) bool {
	n, err := reference.ParseNormalizedNamed(name)
	return err == nil && n.Name() == name
}

// Snippet is the KubeletConfiguration fragment that sets the policy and
// allowlist; as a drop-in (for --config-dir) it carries apiVersion and kind,
// which the kubelet requires of every drop-in file.
func Snippet(entries []string, dropIn bool) ([]byte, error) {
	body, err := yaml.Marshal(map[string]any{
		"imagePullCredentialsVerificationPolicy": NeverVerifyAllowlistedImages,
		"preloadedImagesVerificationAllowlist":   entries,
	})
	if err != nil {
		return nil, err
	}
	if !dropIn {
		return body, nil
	}
	return append([]byte("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"), body...), nil
}
