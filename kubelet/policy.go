// Package kubelet says what a node's kubelet decides about images that are
// already on the node: its credential verification policy (KEP-2535,
// feature gate KubeletEnsureSecretPulledImages, on by default since 1.35),
// read from its configuration files, and matched as that kubelet's release
// matches (pkg/kubelet/images/pullmanager).
//
// The kubelet verifies the pod's credentials for a present image unless the
// policy says not to; a pod with imagePullPolicy Never and no pull secret
// is then refused with ErrImageNeverPull, although the image is there. The
// sandbox image never goes through this: the runtime uses it, not a pod.
package kubelet

import (
	"strconv"
	"strings"

	"github.com/distribution/reference"
)

// The values of imagePullCredentialsVerificationPolicy.
const (
	NeverVerify                  = "NeverVerify"
	NeverVerifyPreloadedImages   = "NeverVerifyPreloadedImages"
	NeverVerifyAllowlistedImages = "NeverVerifyAllowlistedImages"
	AlwaysVerify                 = "AlwaysVerify"
	// Unknown is the policy of a node whose kubelet configuration cannot
	// be read.
	Unknown = "unknown"
)

// FeatureGate is the kubelet feature that verifies credentials of present
// images.
const FeatureGate = "KubeletEnsureSecretPulledImages"

// Policy is what a kubelet does with a present image for a pod without
// pull credentials.
type Policy struct {
	// Name is one of the four policies (NeverVerify too when the feature
	// gate is off), or Unknown.
	Name string
	// Allowlist is preloadedImagesVerificationAllowlist, for
	// NeverVerifyAllowlistedImages.
	Allowlist []string
	// Minor is the kubelet's minor release (37 for v1.37.2), which decides
	// how the allowlist matches; 0 when unknown, taken as the newest.
	Minor int
	// Reason says why Name is Unknown, or where it came from.
	Reason string
}

// Refuses reports whether the kubelet refuses image, written as a pod
// writes it, to a pod without credentials: ErrImageNeverPull for
// imagePullPolicy Never, a pull without credentials for IfNotPresent.
//
// NeverVerifyPreloadedImages accepts an image the kubelet did not pull
// itself; one it pulled with another pod's secret is verified (the kubelet's
// records under /var/lib/kubelet/image_manager, not read here).
func (p Policy) Refuses(image string) bool {
	switch p.Name {
	case AlwaysVerify:
		return true
	case NeverVerifyAllowlistedImages:
		return !p.allows(image)
	default:
		return false
	}
}

// allows matches image against the allowlist: exact names and "prefix/*"
// patterns, compared with the string the pod writes, not a normalized one.
// Kubelet 1.36 compares it without its tag and digest; 1.35 compares it as
// written, tag included, so only prefixes match a tagged image there.
func (p Policy) allows(image string) bool {
	name := image
	if p.Minor == 0 || p.Minor >= 36 {
		name = trimTagDigest(image)
	}
	for _, entry := range p.Allowlist {
		if prefix, ok := strings.CutSuffix(entry, "*"); ok && strings.HasSuffix(prefix, "/") {
			if strings.HasPrefix(name, prefix) {
				return true
			}
		} else if entry == name {
			return true
		}
	}
	return false
}

// trimTagDigest is image without its tag and digest, as the kubelet trims
// it (distribution/reference.Parse, no normalization).
func trimTagDigest(image string) string {
	ref, err := reference.Parse(image)
	if err != nil {
		return image // the kubelet too matches what it has
	}
	if named, ok := ref.(reference.Named); ok {
		return named.Name()
	}
	return image
}

// Minor is the minor release of a kubelet version such as "v1.37.2", 0 when
// it does not parse.
func Minor(version string) int {
	v := strings.TrimPrefix(version, "v")
	major, rest, ok := strings.Cut(v, ".")
	if !ok || major != "1" {
		return 0
	}
	minor, _, _ := strings.Cut(rest, ".")
	n, err := strconv.Atoi(minor)
	if err != nil {
		return 0
	}
	return n
}
