package preload

import "github.com/kube-preloader/kube-preloader/preload/config"

// Plan splits cfg.Images into those that apply to a node with the given
// labels and those that do not. The sandbox image (when not empty) always
// applies: every pod needs it; one that is a guess and that cfg does not
// list is tried as Image.Guess. Nil labels mean the node is unknown, as in
// `preloader once`: images with a nodeSelector then do not apply.
func Plan(cfg *config.Config, labels map[string]string, sandbox Sandbox) (apply, skipped []config.Image) {
	for _, img := range cfg.Images {
		if matches(img.NodeSelector, labels) || img.Name == sandbox.Name {
			apply = append(apply, img)
		} else {
			skipped = append(skipped, img)
		}
	}
	if sandbox.Name != "" && !contains(apply, sandbox.Name) {
		// First, so that pods can get sandboxes as early as possible.
		apply = append([]config.Image{{Ref: sandbox.Name, Name: sandbox.Name, Guess: sandbox.Guess}}, apply...)
	}
	return apply, skipped
}

func contains(images []config.Image, name string) bool {
	for _, img := range images {
		if img.Name == name {
			return true
		}
	}
	return false
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
