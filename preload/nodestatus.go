package preload

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// What the agent shows on its Node object, fixed by the design contract.
const (
	LabelReady       = "preloader.io/ready"
	AnnotationStatus = "preloader.io/status"
	TaintNotReady    = "preloader.io/not-ready"
)

// NodeStatus is the JSON kept in the preloader.io/status annotation. It is
// compact because it lives on every Node, and it holds no credentials.
type NodeStatus struct {
	ConfigHash string        `json:"configHash"`
	Present    int           `json:"present"`
	Total      int           `json:"total"`
	Missing    []string      `json:"missing,omitempty"`
	Failed     []FailedImage `json:"failed,omitempty"`
	// Policy is the node kubelet's imagePullCredentialsVerificationPolicy
	// (KEP-2535), "unknown" where its config cannot be read, empty where
	// the agent was not asked to read it.
	Policy string `json:"policy,omitempty"`
	// Refused counts the images, present or not, that the kubelet will
	// refuse to pods without pull credentials; RefusedImages names the
	// first MaxListed of them.
	Refused       int      `json:"refused,omitempty"`
	RefusedImages []string `json:"refusedImages,omitempty"`
	// Changed is when this status last differed from the one before.
	Changed time.Time `json:"changed"`
}

// FailedImage is an image whose last attempt failed, with a short reason.
type FailedImage struct {
	Image  string `json:"image"`
	Reason string `json:"reason"`
}

// MaxListed bounds the images a status names in one list: it lives on
// every Node.
const MaxListed = 20

// Complete reports whether every image that applies to the node is present.
func (s NodeStatus) Complete() bool { return s.Present == s.Total }

// Ready reports whether pods without pull credentials can use every image
// that applies to the node: present, and none refused by the kubelet.
func (s NodeStatus) Ready() bool { return s.Complete() && s.Refused == 0 }

// ConfigHash identifies a config's content, so that status can say which
// config it describes.
func ConfigHash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])[:12]
}
