package failure_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/failure"
)

// TestReasons: every reason has a non-empty text, label and Event, that
// `-o json` writes and reads back as its text; texts are distinct, and
// every label is one of the closed set and every value of the set is some
// reason's label.
func TestReasons(t *testing.T) {
	reasons := append(failure.All(), failure.Credentials("secret kube-preloader/regcred not found"))
	texts := map[string]failure.Reason{}
	used := map[string]bool{}
	for _, r := range reasons {
		t.Run(r.String(), func(t *testing.T) {
			if r.String() == "" || r.Label() == "" || r.IsZero() {
				t.Fatalf("%#v: empty text or label", r)
			}
			if other, dup := texts[r.String()]; dup {
				t.Errorf("%q is the text of both %#v and %#v", r, r, other)
			}
			texts[r.String()] = r
			if !slices.Contains(failure.Labels(), r.Label()) {
				t.Errorf("%q: label %q is not in the closed set %q", r, r.Label(), failure.Labels())
			}
			used[r.Label()] = true

			reason, msg := r.Event("corp.example/app:1", "")
			if reason != failure.EventReason || msg != "corp.example/app:1: "+r.String() {
				t.Errorf("%q: Event %q %q, want %q with the image and the reason", r, reason, msg, failure.EventReason)
			}

			type result struct {
				Reason failure.Reason `json:"reason,omitzero"`
			}
			data, err := json.Marshal(result{r})
			if err != nil {
				t.Fatal(err)
			}
			if want := `{"reason":` + jsonString(r.String()) + `}`; string(data) != want {
				t.Errorf("JSON %s, want %s", data, want)
			}
			var back result
			if err := json.Unmarshal(data, &back); err != nil {
				t.Fatal(err)
			}
			if back.Reason.String() != r.String() || (slices.Contains(failure.All(), r) && back.Reason != r) {
				t.Errorf("JSON %s reads back as %#v, want %#v", data, back.Reason, r)
			}
		})
	}
	for _, l := range failure.Labels() {
		if !used[l] {
			t.Errorf("label %q is no reason's", l)
		}
	}
}

// TestNoReason: an image that did not fail has no reason in `-o json`; a
// free-form note never adds a label value.
func TestNoReason(t *testing.T) {
	data, err := json.Marshal(struct {
		Reason failure.Reason `json:"reason,omitzero"`
	}{})
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != "{}" {
		t.Errorf("no reason: JSON %s, want {}", data)
	}
	if l := failure.Note("refresh: not found").Label(); l != failure.Other.Label() {
		t.Errorf("a note's label is %q, want other's %q", l, failure.Other.Label())
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// docReason is a row of the troubleshooting guide's table of failure
// reasons: | `text`, … | why | what to do | `label` |
var docReason = regexp.MustCompile("^\\| (`[^|]+`) \\|[^|]+\\|[^|]+\\| `([a-z_]+)` \\|$")

// TestReasonsDoc: the troubleshooting guide lists every reason with its
// label, and no label the agent does not have; the metrics reference
// lists every label, and the Node reference the failure's Event.
func TestReasonsDoc(t *testing.T) {
	const guide = "../docs/operations/troubleshooting.md"
	data, err := os.ReadFile(guide)
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{} // text → label
	labels := map[string]bool{}
	for line := range strings.Lines(string(data)) {
		m := docReason.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		for _, text := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(m[1], -1) {
			documented[text[1]] = m[2]
		}
		labels[m[2]] = true
	}
	for _, r := range failure.All() {
		if got, ok := documented[r.String()]; !ok {
			t.Errorf("%s does not list the reason %q", guide, r)
		} else if got != r.Label() {
			t.Errorf("%s gives %q the label %q, the agent %q", guide, r, got, r.Label())
		}
	}
	if !labels[failure.Credentials("x").Label()] {
		t.Errorf("%s does not list the credentials reasons (label %q)", guide, failure.Credentials("x").Label())
	}
	for l := range labels {
		if !slices.Contains(failure.Labels(), l) {
			t.Errorf("%s lists the label %q, which no reason has", guide, l)
		}
	}

	const metrics = "../docs/reference/metrics.md"
	data, err = os.ReadFile(metrics)
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "### `reason` values of `preloader_pulls_total`")
	if !ok {
		t.Fatalf("%s has no section of reason values", metrics)
	}
	section, _, _ = strings.Cut(section, "\n#")
	listed, _, _ := strings.Cut(section, "\n\n\n")
	listed, _, _ = strings.Cut(strings.TrimSpace(listed), "\n\n") // the list is the first paragraph
	var values []string
	for _, m := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(listed, -1) {
		values = append(values, m[1])
	}
	slices.Sort(values)
	want := slices.Sorted(slices.Values(failure.Labels()))
	if !slices.Equal(values, want) {
		t.Errorf("%s lists the reason values %q, the agent has %q", metrics, values, want)
	}

	const node = "../docs/reference/node.md"
	data, err = os.ReadFile(node)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "| `"+failure.EventReason+"` | Warning | Node |") {
		t.Errorf("%s does not list the Event %s", node, failure.EventReason)
	}
}
