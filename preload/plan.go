package preload

// Plan splits cfg.Images into those that apply to a node with the given
// labels and those that do not, and adds the sandbox image (when not empty)
// in front. Nil labels mean the node is unknown, as in `preloader once`:
// images with a nodeSelector then do not apply.
func Plan(cfg *Config, labels map[string]string, sandbox string) (apply, skipped []Image) {
	if sandbox != "" {
		apply = append(apply, Image{Ref: sandbox, Name: sandbox})
	}
	for _, img := range cfg.Images {
		if matches(img.NodeSelector, labels) {
			apply = append(apply, img)
		} else {
			skipped = append(skipped, img)
		}
	}
	return apply, skipped
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
