// Package failure is the one vocabulary of why an image is not on a node.
// A Reason carries every spelling users read of it: its text (the `reason`
// of `once -o json` and its table, the status annotation's failed list,
// the message of a PreloadFailed Event) and its label, the `reason` label
// value of preloader_pulls_total. All of them are stable: dashboards,
// alerts and scripts match them.
//
// It sits below the engine (preload) and the runtimes (noderuntime), so
// that an error of either can say its own reason.
package failure

import (
	"fmt"
	"slices"
)

// Reason says why an image failed. The zero Reason is no reason: an
// image that did not fail.
type Reason struct {
	text  string
	label string
}

// The reasons the engine finds. Texts are short and stable, for tables
// and status; labels come from a closed set (Labels), so that a fleet's
// series do not grow with its errors.
var (
	Unauthorized = Reason{"unauthorized", "unauthorized"}
	NotFound     = Reason{"not found", "not_found"}
	Unreachable  = Reason{"registry unreachable", "network"} // refused, reset, no such host
	Registry     = Reason{"registry error", "registry"}      // the registry answered 5xx or 429
	TLS          = Reason{"tls", "tls"}
	Timeout      = Reason{"timeout", "timeout"}
	Stalled      = Reason{"stalled", "stalled"} // a download received no bytes for stallTimeout
	NoSpace      = Reason{"no space", "no_space"}
	DiskBudget   = Reason{"disk budget", "disk_budget"} // held back before the pull
	Runtime      = Reason{"runtime unavailable", "runtime"}
	Invalid      = Reason{"invalid reference", "invalid_reference"}
	// Archive and Import share their label: to a dashboard both are an
	// archive that did not become images.
	Archive = Reason{"bad archive", "archive"}   // unreadable, unsafe, truncated, wrong digest or platform, incomplete (a part, a delta's layers)
	Import  = Reason{"import failed", "archive"} // a sound archive the runtime did not take
	// Signature: with verify, an image without a valid signature by one
	// of the keys, refused before anything of it was recorded.
	Signature   = Reason{"signature", "signature"}
	Unsupported = Reason{"unsupported runtime", "unsupported"}
	NotPresent  = Reason{"not present after pull", "not_present"} // pulled or listed, yet ImageStatus does not find it
	Canceled    = Reason{"canceled", "canceled"}
	Other       = Reason{"error", "other"}
)

const (
	credentialsLabel = "credentials"
	otherLabel       = "other"
)

// All is every reason of a fixed text, in the order the docs list them.
func All() []Reason {
	return []Reason{
		Unauthorized, NotFound, Unreachable, Registry, TLS, Timeout, Stalled, NoSpace, DiskBudget,
		Runtime, Invalid, Archive, Import, Signature, Unsupported, NotPresent, Canceled, Other,
	}
}

// Labels is every label value a failure has: the closed set of the reason
// label of preloader_pulls_total{result="failed"}.
func Labels() []string {
	var out []string
	for _, r := range append(All(), Credentials("")) {
		if l := r.Label(); !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	return out
}

// Credentials is the reason of a pull the agent holds back for want of
// usable credentials. Its text is detail, which names the Secret or
// ServiceAccount and what is wrong with it (never a value), so that the
// status says what to fix; its label is one value, whatever the name.
func Credentials(detail string) Reason { return Reason{detail, credentialsLabel} }

// Note is a free-form reason of an image that did not fail: a skipped
// image, or a present one whose tag could not be checked. It is never
// counted as a failure; should it be, it is other.
func Note(text string) Reason { return Reason{text, otherLabel} }

// String is the reason's text.
func (r Reason) String() string { return r.text }

// Label is the reason's value of the reason label of preloader_pulls_total.
func (r Reason) Label() string {
	if r.label == "" {
		return otherLabel
	}
	return r.label
}

// IsZero says that r is no reason; `json:",omitzero"` leaves it out.
func (r Reason) IsZero() bool { return r == Reason{} }

// EventReason is the reason of the Warning Event that reports an image
// failing, whatever its Reason, so that one field selector finds every
// failure; the Reason is in its message.
const EventReason = "PreloadFailed"

// Event is the reason and message of the Event that reports image failing
// for r with the runtime's message errText: `IMAGE: REASON (error)`, the
// error left out when it says no more than the reason.
func (r Reason) Event(image, errText string) (reason, message string) {
	message = fmt.Sprintf("%s: %s", image, r.text)
	if errText != "" && errText != r.text {
		message += " (" + errText + ")"
	}
	return EventReason, message
}

// MarshalText writes the reason's text, as `-o json` shows it.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.text), nil }

// UnmarshalText reads a reason's text back: a fixed one's gets that
// reason, any other (a credentials problem, a note) keeps its text with
// other's label, as the label is not written.
func (r *Reason) UnmarshalText(b []byte) error {
	*r = parse(string(b))
	return nil
}

// parse is the reason of a text: the fixed reason that has it, no reason
// for "", else a Note.
func parse(text string) Reason {
	if text == "" {
		return Reason{}
	}
	for _, r := range All() {
		if r.text == text {
			return r
		}
	}
	return Note(text)
}
