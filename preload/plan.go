package preload

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// Plan splits cfg.Images into those that apply to node and those that do
// not. The sandbox image (when not empty) always applies: every pod needs
// it; one that is a guess and that cfg does not list is tried as
// Image.Guess. A nil node is unknown, as in `preloader once`: images with
// a nodeSelector or node affinity then do not apply.
func Plan(cfg *config.Config, node *corev1.Node, sandbox Sandbox) (apply, skipped []config.Image) {
	for _, img := range cfg.Images {
		if placed(img, node) || img.Name == sandbox.Name {
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

// placed says whether img goes on node: its nodeSelector, and its node
// affinity matched as the kubelet matches a pod's required node affinity
// when it admits the pod.
func placed(img config.Image, node *corev1.Node) bool {
	var labels map[string]string
	if node != nil {
		labels = node.Labels
	}
	if !matches(img.NodeSelector, labels) {
		return false
	}
	return workloads.Matches(img.NodeAffinity, node)
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
