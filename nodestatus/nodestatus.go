// Package nodestatus is the contract between the agent, which writes what
// a node holds on its Node object, and the readers of it (`preloader
// status`, `warm --wait`, pods that select the label, autoscalers and
// controllers that watch the condition or the taint): the label, the
// annotation and its format, the condition, the taint, and what ready
// means, for one Node (Read, List) and for all of them (Verdict).
package nodestatus

import (
	"encoding/json"
	"fmt"
	"time"
)

// What the agent shows on its Node object, fixed by the design contract.
const (
	LabelReady       = "preloader.io/ready"
	AnnotationStatus = "preloader.io/status"
	// ConditionImagesReady is the Node condition that says what the label
	// says, for readers that work from conditions (the Node Readiness
	// Controller, `kubectl describe node`).
	ConditionImagesReady = "preloader.io/ImagesReady"
	// TaintNotReady is the taint the agent removes once the node is
	// ready, unless `agent --taint-key` names another.
	TaintNotReady = "preloader.io/not-ready"
)

// FormatVersion is the version of the annotation's format that this
// release writes. Fields are only ever added, each optional, so a reader
// takes any version: during a rolling upgrade of the agent, Nodes written
// by the old release (no version: 1) and the new one are read alike, and a
// field an older reader does not know is ignored. A change of meaning of
// an existing field would need a new version and readers that handle both.
const FormatVersion = 1

// Status is the JSON kept in the preloader.io/status annotation. It is
// compact because it lives on every Node, and it holds no credentials.
type Status struct {
	// Version is FormatVersion when written; 0 (absent) was written by
	// releases before the field, and means 1.
	Version    int    `json:"v,omitempty"`
	ConfigHash string `json:"configHash"`
	Present    int    `json:"present"`
	Total      int    `json:"total"`
	// Runtime is the container runtime the agent reached; absent in
	// statuses written before the field.
	Runtime *Runtime      `json:"runtime,omitempty"`
	Missing []string      `json:"missing,omitempty"`
	Failed  []FailedImage `json:"failed,omitempty"`
	// Policy is the node kubelet's imagePullCredentialsVerificationPolicy
	// (KEP-2535), "unknown" where its config cannot be read, empty where
	// the agent was not asked to read it.
	Policy string `json:"policy,omitempty"`
	// Refused counts the images, present or not, that the kubelet will
	// refuse to pods without pull credentials; RefusedImages names the
	// first MaxListed of them.
	Refused       int      `json:"refused,omitempty"`
	RefusedImages []string `json:"refusedImages,omitempty"`
	// PruneHeld names images prune would remove but a container still
	// uses (the first MaxListed); WouldPrune, under prune: dryRun, those
	// it would remove.
	PruneHeld  []string `json:"pruneHeld,omitempty"`
	WouldPrune []string `json:"wouldPrune,omitempty"`
	// Refreshed counts the tags found moved and pulled again under this
	// config; RefreshedImages names the last MaxListed of them.
	Refreshed       int      `json:"refreshed,omitempty"`
	RefreshedImages []string `json:"refreshedImages,omitempty"`
	// Pulling is the pulls in flight when the agent wrote, with their
	// bytes; absent when none was. It is progress, not a change of status:
	// Changed does not move with it.
	Pulling []Pulling `json:"pulling,omitempty"`
	// Changed is when this status last differed from the one before,
	// Pulling aside.
	Changed time.Time `json:"changed"`
}

// Runtime is a container runtime as its CRI Version call names it
// (RuntimeName, RuntimeVersion): containerd, cri-o, …
type Runtime struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Pulling is one image's pull in flight: the bytes its attempt running has
// received and has to receive (0 while not known, or where the runtime
// cannot say).
type Pulling struct {
	Image string `json:"image"`
	Done  int64  `json:"done"`
	Total int64  `json:"total,omitempty"`
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
func (s Status) Complete() bool { return s.Present == s.Total }

// Ready is what the preloader.io/ready label says: pods without pull
// credentials can use every image that applies to the node, because it is
// present and the node's kubelet, as far as its config tells, does not
// refuse it.
func (s Status) Ready() bool { return s.Complete() && s.Refused == 0 }

// Encode is the annotation's value for s, stamped with FormatVersion.
func Encode(s Status) string {
	s.Version = FormatVersion
	b, _ := json.Marshal(s) // strings, ints and a time: cannot fail
	return string(b)
}

// Decode reads an annotation written by any release of the agent.
func Decode(annotation string) (Status, error) {
	var s Status
	if err := json.Unmarshal([]byte(annotation), &s); err != nil {
		return Status{}, fmt.Errorf("%s annotation: %w", AnnotationStatus, err)
	}
	if s.Version == 0 {
		s.Version = 1
	}
	return s, nil
}
