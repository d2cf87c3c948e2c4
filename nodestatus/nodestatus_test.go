package nodestatus

import (
	"strings"
	"testing"
	"time"
)

// Annotations of every release read alike: before the version field
// (rolling upgrade, old agents still writing), this one, and a newer one
// with fields this release does not know.
func TestDecodeAcrossReleases(t *testing.T) {
	tests := []struct {
		name, annotation string
		ready            bool
		refused          int
	}{
		{"before versions", `{"configHash":"c27028984a95","present":2,"total":2,"changed":"2026-11-01T10:00:00Z"}`, true, 0},
		{"before versions, missing", `{"configHash":"c27028984a95","present":1,"total":2,"missing":["a:1"],"changed":"2026-11-01T10:00:00Z"}`, false, 0},
		{"this release, refused", `{"v":1,"configHash":"x","present":2,"total":2,"policy":"AlwaysVerify","refused":2,"refusedImages":["a:1","b:1"],"changed":"2026-12-01T10:00:00Z"}`, false, 2},
		{"newer release", `{"v":2,"configHash":"x","present":2,"total":2,"pruned":["old:1"],"changed":"2026-12-01T10:00:00Z"}`, true, 0},
	}
	for _, tt := range tests {
		st, err := Decode(tt.annotation)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if st.Ready() != tt.ready || st.Refused != tt.refused || st.Version < 1 {
			t.Errorf("%s: %+v: want ready %v, refused %d, a version", tt.name, st, tt.ready, tt.refused)
		}
	}
	if _, err := Decode("{"); err == nil || !strings.Contains(err.Error(), AnnotationStatus) {
		t.Errorf("Decode of a broken annotation: %v, want an error naming %s", err, AnnotationStatus)
	}
}

func TestEncodeStampsVersion(t *testing.T) {
	st := Status{ConfigHash: "x", Present: 1, Total: 1, Changed: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	ann := Encode(st)
	if !strings.HasPrefix(ann, `{"v":1,`) {
		t.Errorf("Encode = %s, want the format version first", ann)
	}
	back, err := Decode(ann)
	if err != nil || back.ConfigHash != "x" || !back.Ready() || back.Version != FormatVersion {
		t.Errorf("round trip: %+v %v", back, err)
	}
}
