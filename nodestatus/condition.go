package nodestatus

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Reasons of the ConditionImagesReady condition, stable for rules and
// alerts that match on them.
const (
	// ReasonImagesPresent: status True, every image that applies is
	// present and usable.
	ReasonImagesPresent = "ImagesPresent"
	// ReasonImagesFailed: an image's last attempt failed (its reason is in
	// the status annotation and in a PreloadFailed Event).
	ReasonImagesFailed = "ImagesFailed"
	// ReasonImagesMissing: images are not present yet, and none failed.
	ReasonImagesMissing = "ImagesMissing"
	// ReasonKubeletRefusesImages: every image is present, but the node
	// kubelet's credential verification policy refuses some of them to
	// pods without pull credentials.
	ReasonKubeletRefusesImages = "KubeletRefusesImages"
	// ReasonNoConfig: the agent has no config to apply: its ConfigMap
	// does not exist (yet).
	ReasonNoConfig = "NoConfig"
	// ReasonConfigInvalid: the agent's ConfigMap holds no valid config and
	// none was loaded before.
	ReasonConfigInvalid = "ConfigInvalid"
	// ReasonWorkloadsNotListed: the config selects workloads, and
	// preloader controller has not written their images yet; none was
	// loaded before.
	ReasonWorkloadsNotListed = "WorkloadsNotListed"
)

// Condition is what the agent writes of ConditionImagesReady; the times
// are the write's, not part of what it decides.
type Condition struct {
	Status  corev1.ConditionStatus
	Reason  string
	Message string
}

// ConditionOf is the condition for a status: True exactly when the status
// is Ready, as the label says, and a message with the counts, e.g.
// "12/14 images present, 1 failed, 1 missing". A failure outranks missing
// images and the kubelet's refusals in the reason: it is the one that
// needs someone to act.
func ConditionOf(s Status) Condition {
	failed := len(s.Failed)
	missing := max(s.Total-s.Present-failed, 0)
	parts := []string{fmt.Sprintf("%d/%d images present", s.Present, s.Total)}
	if failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", failed))
	}
	if missing > 0 {
		parts = append(parts, fmt.Sprintf("%d missing", missing))
	}
	if s.Refused > 0 {
		parts = append(parts, fmt.Sprintf("%d refused by the kubelet's policy %s to pods without pull credentials", s.Refused, s.Policy))
	}
	c := Condition{Status: corev1.ConditionFalse, Message: strings.Join(parts, ", ")}
	switch {
	case s.Ready():
		c.Status, c.Reason = corev1.ConditionTrue, ReasonImagesPresent
	case failed > 0:
		c.Reason = ReasonImagesFailed
	case missing > 0:
		c.Reason = ReasonImagesMissing
	default:
		c.Reason = ReasonKubeletRefusesImages
	}
	return c
}

// Unconfigured is the condition of a node whose agent has no config to
// apply: the ConfigMap configMap (NAMESPACE/NAME) is missing, or, with
// invalid, holds no valid config.
func Unconfigured(configMap string, invalid bool) Condition {
	if invalid {
		return Condition{Status: corev1.ConditionFalse, Reason: ReasonConfigInvalid,
			Message: fmt.Sprintf("ConfigMap %s holds no valid config (see the Node's InvalidConfig Events); nothing is preloaded", configMap)}
	}
	return Condition{Status: corev1.ConditionFalse, Reason: ReasonNoConfig,
		Message: fmt.Sprintf("no ConfigMap %s yet; nothing is preloaded", configMap)}
}

// WorkloadsNotListed is the condition of a node whose agent waits for
// preloader controller's list of the workloads that the config of the
// ConfigMap configMap (NAMESPACE/NAME) selects.
func WorkloadsNotListed(configMap string) Condition {
	return Condition{Status: corev1.ConditionFalse, Reason: ReasonWorkloadsNotListed,
		Message: fmt.Sprintf("ConfigMap %s selects workloads, and preloader controller has not listed their images yet (key workloads.yaml); nothing is preloaded", configMap)}
}

// ConditionFrom is the ConditionImagesReady of a Node's conditions; false
// when it has none.
func ConditionFrom(conds []corev1.NodeCondition) (corev1.NodeCondition, bool) {
	for _, c := range conds {
		if c.Type == ConditionImagesReady {
			return c, true
		}
	}
	return corev1.NodeCondition{}, false
}

// CheckTaintKey says whether key may be the taint the agent removes: a
// valid taint key, and not one of the taints Kubernetes itself manages on
// Nodes (node.kubernetes.io/…, node.cloudprovider.kubernetes.io/…), which
// their owners put back and which no preload must lift.
func CheckTaintKey(key string) error {
	if errs := validation.IsQualifiedName(key); len(errs) > 0 {
		return fmt.Errorf("%q is not a valid taint key: %s", key, strings.Join(errs, "; "))
	}
	for _, p := range []string{"node.kubernetes.io/", "node.cloudprovider.kubernetes.io/"} {
		if strings.HasPrefix(key, p) {
			return fmt.Errorf("%q is a taint Kubernetes manages (%s…), not one the agent may remove", key, p)
		}
	}
	return nil
}
