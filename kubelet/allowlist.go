package kubelet

import (
	"fmt"
	"path"
	"slices"

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
		if name == img {
			// Untagged: 1.35 would match an exact entry, but only a
			// normalized one passes its validation.
			notes = append(notes, fmt.Sprintf("%s: kubelet 1.%d accepts only fully qualified names in the allowlist; write the image as registry/path:tag", img, minor))
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
