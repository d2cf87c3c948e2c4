package nodestatus

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// The condition says what the label says, with the reason that needs
// acting on first and the counts in its message.
func TestConditionOf(t *testing.T) {
	failed := []FailedImage{{Image: "a:1", Reason: "registry error"}}
	for _, tt := range []struct {
		name   string
		st     Status
		status corev1.ConditionStatus
		reason string
		msg    string
	}{
		{"all present", Status{Present: 14, Total: 14}, corev1.ConditionTrue, ReasonImagesPresent, "14/14 images present"},
		{"no image applies here", Status{}, corev1.ConditionTrue, ReasonImagesPresent, "0/0 images present"},
		{"failed and missing", Status{Present: 12, Total: 14, Failed: failed, Missing: []string{"b:1"}}, corev1.ConditionFalse, ReasonImagesFailed, "12/14 images present, 1 failed, 1 missing"},
		{"missing only (a run canceled)", Status{Present: 1, Total: 3, Missing: []string{"b:1", "c:1"}}, corev1.ConditionFalse, ReasonImagesMissing, "1/3 images present, 2 missing"},
		{"present, kubelet refuses", Status{Present: 2, Total: 2, Policy: "AlwaysVerify", Refused: 1}, corev1.ConditionFalse, ReasonKubeletRefusesImages,
			"2/2 images present, 1 refused by the kubelet's policy AlwaysVerify to pods without pull credentials"},
		{"failed and refused: the failure first", Status{Present: 1, Total: 2, Failed: failed, Policy: "AlwaysVerify", Refused: 2}, corev1.ConditionFalse, ReasonImagesFailed,
			"1/2 images present, 1 failed, 2 refused by the kubelet's policy AlwaysVerify to pods without pull credentials"},
	} {
		c := ConditionOf(tt.st)
		if c.Status != tt.status || c.Reason != tt.reason || c.Message != tt.msg {
			t.Errorf("%s: %+v, want %s %s %q", tt.name, c, tt.status, tt.reason, tt.msg)
		}
		if (c.Status == corev1.ConditionTrue) != tt.st.Ready() {
			t.Errorf("%s: condition %s, label would say %v", tt.name, c.Status, tt.st.Ready())
		}
	}
}

func TestUnconfigured(t *testing.T) {
	if c := Unconfigured("ns/cm", false); c.Status != corev1.ConditionFalse || c.Reason != ReasonNoConfig || !strings.Contains(c.Message, "ns/cm") {
		t.Errorf("no config: %+v", c)
	}
	if c := Unconfigured("ns/cm", true); c.Status != corev1.ConditionFalse || c.Reason != ReasonConfigInvalid || !strings.Contains(c.Message, "ns/cm") {
		t.Errorf("invalid config: %+v", c)
	}
}

func TestCheckTaintKey(t *testing.T) {
	for _, tt := range []struct {
		key  string
		want string // part of the error, "" for none
	}{
		{TaintNotReady, ""},
		{"startup-taint.cluster-autoscaler.kubernetes.io/preloader", ""},
		{"images-pending", ""},
		{"", "not a valid taint key"},
		{"preloader.io/not ready", "not a valid taint key"},
		{"Example.com/x", "not a valid taint key"},
		{"a/b/c", "not a valid taint key"},
		{"node.kubernetes.io/not-ready", "a taint Kubernetes manages"},
		{"node.cloudprovider.kubernetes.io/uninitialized", "a taint Kubernetes manages"},
	} {
		err := CheckTaintKey(tt.key)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%q: %v, want valid", tt.key, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%q: %v, want an error saying %q", tt.key, err, tt.want)
		}
	}
}
