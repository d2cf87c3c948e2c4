package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// What a user reads of a node whose images are all present but which the
// kubelet refuses to pods without credentials (KEP-2535).
func TestStatusShowsKubeletRefusals(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	rows := []nodestatus.Node{
		{Name: "node-a", Ready: "true", Status: &nodestatus.Status{ConfigHash: "c1", Present: 2, Total: 2, Policy: "NeverVerifyPreloadedImages", Changed: now.Add(-3 * time.Minute)}},
		{Name: "node-c", Ready: "false", Status: &nodestatus.Status{ConfigHash: "c1", Present: 2, Total: 2, Policy: "AlwaysVerify",
			Refused: 22, RefusedImages: []string{"corp.example/app:1.4", "corp.example/tool:2.0"}, Changed: now.Add(-40 * time.Second)}},
	}
	var wide bytes.Buffer
	if err := writeNodeStatus(&wide, "wide", rows, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(wide.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "POLICY") || !strings.Contains(lines[0], "REFUSED") {
		t.Fatalf("wide:\n%s", wide.String())
	}
	for _, want := range []string{"AlwaysVerify", "corp.example/app:1.4,corp.example/tool:2.0,+20 more"} {
		if !strings.Contains(lines[2], want) {
			t.Errorf("node-c row lacks %q: %s", want, lines[2])
		}
	}
	if !strings.Contains(lines[1], "NeverVerifyPreloadedImages") || !strings.Contains(lines[1], "<none>") {
		t.Errorf("node-a row: %s", lines[1])
	}

	err := statusExit(rows)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitMissing || !strings.Contains(err.Error(), "node-c (kubelet policy AlwaysVerify refuses 22 images to pods without credentials)") {
		t.Errorf("verdict = %v, want exit 1 naming node-c and why", err)
	}
}

// -o wide shows each pull in flight with its bytes as the agent last
// wrote them; the short table leaves them out.
func TestStatusWideShowsPulling(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	rows := []nodestatus.Node{
		{Name: "gpu-1", Ready: "false", Status: &nodestatus.Status{ConfigHash: "c1", Present: 1, Total: 2, Missing: []string{"corp.example/vllm:0.9"},
			Pulling: []nodestatus.Pulling{{Image: "corp.example/vllm:0.9", Done: 3 << 30, Total: 12 << 30}}, Changed: now.Add(-time.Minute)}},
		{Name: "gpu-2", Ready: "true", Status: &nodestatus.Status{ConfigHash: "c1", Present: 2, Total: 2, Changed: now.Add(-time.Hour)}},
	}
	for _, tt := range []struct {
		format string
		want   []string // per row
	}{
		{"wide", []string{"corp.example/vllm:0.9 3.0GiB/12.0GiB", "<none>"}},
		{"table", []string{"", ""}},
	} {
		var out bytes.Buffer
		if err := writeNodeStatus(&out, tt.format, rows, now); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if got := strings.Contains(lines[0], "PULLING"); got != (tt.format == "wide") {
			t.Errorf("%s: PULLING column shown: %v\n%s", tt.format, got, out.String())
		}
		for i, w := range tt.want {
			if w != "" && !strings.Contains(lines[i+1], w) {
				t.Errorf("%s: row %d lacks %q:\n%s", tt.format, i, w, out.String())
			}
		}
		if tt.format == "table" && strings.Contains(out.String(), "GiB") {
			t.Errorf("table shows bytes:\n%s", out.String())
		}
	}
}
