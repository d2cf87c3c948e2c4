package kubelet

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRefuses(t *testing.T) {
	allow := []string{"corp.example/team/app", "registry.k8s.io/*", "nginx"}
	tests := []struct {
		policy string
		minor  int
		image  string
		want   bool
	}{
		{NeverVerify, 37, "corp.example/team/app:1.4", false},
		{NeverVerifyPreloadedImages, 37, "corp.example/team/app:1.4", false},
		{AlwaysVerify, 37, "corp.example/team/app:1.4", true},
		{Unknown, 37, "corp.example/team/app:1.4", false},
		// 1.36+: exact names without tag and digest, prefixes by path.
		{NeverVerifyAllowlistedImages, 37, "corp.example/team/app:1.4", false},
		{NeverVerifyAllowlistedImages, 37, "corp.example/team/app@sha256:" + strings.Repeat("a", 64), false},
		{NeverVerifyAllowlistedImages, 36, "corp.example/team/app:1.4", false},
		{NeverVerifyAllowlistedImages, 37, "corp.example/team/other:1.4", true},
		{NeverVerifyAllowlistedImages, 37, "corp.example/team/app/sub:1", true},
		{NeverVerifyAllowlistedImages, 37, "registry.k8s.io/coredns/coredns:v1.12.0", false},
		{NeverVerifyAllowlistedImages, 37, "nginx:1.25", false},
		// As the pod writes it: the normalized form is another string.
		{NeverVerifyAllowlistedImages, 37, "docker.io/library/nginx:1.25", true},
		// 1.35 compares the tag too: only prefixes let a tagged image in.
		{NeverVerifyAllowlistedImages, 35, "corp.example/team/app:1.4", true},
		{NeverVerifyAllowlistedImages, 35, "corp.example/team/app", false},
		{NeverVerifyAllowlistedImages, 35, "registry.k8s.io/pause:3.10", false},
	}
	for _, tt := range tests {
		p := Policy{Name: tt.policy, Allowlist: allow, Minor: tt.minor}
		if got := p.Refuses(tt.image); got != tt.want {
			t.Errorf("%s on 1.%d: Refuses(%q) = %v, want %v", tt.policy, tt.minor, tt.image, got, tt.want)
		}
	}
}

func TestReadPolicy(t *testing.T) {
	tests := []struct {
		name    string
		main    string // "" : no file
		dropIns map[string]string
		minor   int
		want    string
		allow   []string
		reason  string // substring of Reason
	}{
		{name: "default on 1.37", main: "kind: KubeletConfiguration\n", minor: 37, want: NeverVerifyPreloadedImages, reason: "the default"},
		{name: "default on 1.34 (gate off)", main: "kind: KubeletConfiguration\n", minor: 34, want: NeverVerify, reason: "feature gate"},
		{name: "gate turned off", main: "featureGates: {KubeletEnsureSecretPulledImages: false}\nimagePullCredentialsVerificationPolicy: AlwaysVerify\n", minor: 37, want: NeverVerify},
		{name: "set in the file", main: "imagePullCredentialsVerificationPolicy: AlwaysVerify\n", minor: 37, want: AlwaysVerify},
		{name: "json file", main: `{"imagePullCredentialsVerificationPolicy": "NeverVerify"}`, minor: 36, want: NeverVerify},
		{
			name:    "drop-ins merge in lexical order, lists replaced",
			main:    "imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist: [a.example/x]\n",
			dropIns: map[string]string{"10-a.conf": "preloadedImagesVerificationAllowlist: [b.example/y]\n", "sub/20-b.conf": "preloadedImagesVerificationAllowlist: [c.example/z]\n", "30-c.yaml": "imagePullCredentialsVerificationPolicy: AlwaysVerify\n"},
			minor:   37, want: NeverVerifyAllowlistedImages, allow: []string{"c.example/z"}, reason: "20-b.conf",
		},
		{name: "no file", minor: 37, want: Unknown, reason: "no such file"},
		{name: "empty file", main: "\n", minor: 37, want: Unknown, reason: "is empty"},
		{name: "not yaml", main: "a: [\n", minor: 37, want: Unknown, reason: "config.yaml"},
		{name: "unknown value", main: "imagePullCredentialsVerificationPolicy: Sometimes\n", minor: 37, want: Unknown, reason: `"Sometimes"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "config.yaml")
			if tt.main != "" {
				write(t, file, tt.main)
			}
			confDir := filepath.Join(dir, "conf.d")
			for name, content := range tt.dropIns {
				write(t, filepath.Join(confDir, name), content)
			}
			p := ReadPolicy(file, confDir, tt.minor)
			if p.Name != tt.want {
				t.Fatalf("policy %q (%s), want %q", p.Name, p.Reason, tt.want)
			}
			if tt.allow != nil && !slices.Equal(p.Allowlist, tt.allow) {
				t.Errorf("allowlist %v, want %v", p.Allowlist, tt.allow)
			}
			if !strings.Contains(p.Reason, tt.reason) {
				t.Errorf("reason %q, want it to contain %q", p.Reason, tt.reason)
			}
		})
	}
}

func TestAllowlist(t *testing.T) {
	images := []string{
		"corp.example/team/app:1.4",
		"corp.example/team/app@sha256:" + strings.Repeat("b", 64),
		"corp.example:5000/team/tool:2.0",
		"registry.k8s.io/pause:3.10",
		"nginx:1.25",
		"corp.example/team/untagged",
		"library/busybox",
	}
	tests := []struct {
		minor   int
		entries []string
		notes   int
	}{
		{37, []string{"corp.example/team/app", "corp.example/team/untagged", "corp.example:5000/team/tool", "library/busybox", "nginx", "registry.k8s.io/pause"}, 0},
		// 1.35: prefixes for tagged images (each with a note), the exact
		// name for an untagged qualified one, nothing for a bare name.
		{35, []string{"corp.example/team/*", "corp.example/team/untagged", "corp.example:5000/team/*", "library/*", "registry.k8s.io/*"}, 6},
	}
	for _, tt := range tests {
		entries, notes := Allowlist(images, tt.minor)
		if !slices.Equal(entries, tt.entries) {
			t.Errorf("1.%d: entries %v, want %v", tt.minor, entries, tt.entries)
		}
		if len(notes) != tt.notes {
			t.Errorf("1.%d: %d notes, want %d: %q", tt.minor, len(notes), tt.notes, notes)
		}
		// What it allows is what that kubelet lets through, except what
		// the notes say it cannot express.
		p := Policy{Name: NeverVerifyAllowlistedImages, Allowlist: entries, Minor: tt.minor}
		for _, img := range images {
			if p.Refuses(img) && !slices.ContainsFunc(notes, func(n string) bool { return strings.HasPrefix(n, img+":") }) {
				t.Errorf("1.%d: the allowlist refuses %s and no note says so", tt.minor, img)
			}
		}
	}
}

func TestSnippet(t *testing.T) {
	b, err := Snippet([]string{"corp.example/team/app"}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n" +
		"imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\n" +
		"preloadedImagesVerificationAllowlist:\n- corp.example/team/app\n"
	if string(b) != want {
		t.Errorf("drop-in:\n%s\nwant:\n%s", b, want)
	}
	// What it writes, the kubelet reads back (as a drop-in over an empty config).
	dir := t.TempDir()
	write(t, filepath.Join(dir, "config.yaml"), "kind: KubeletConfiguration\n")
	write(t, filepath.Join(dir, "d", "50-preloader.conf"), string(b))
	if p := ReadPolicy(filepath.Join(dir, "config.yaml"), filepath.Join(dir, "d"), 37); p.Name != NeverVerifyAllowlistedImages || p.Refuses("corp.example/team/app:1") {
		t.Errorf("read back: %+v", p)
	}
}

func TestMinor(t *testing.T) {
	for in, want := range map[string]int{"v1.37.2": 37, "v1.35.4-eks-1": 35, "1.36": 36, "v2.0.0": 0, "": 0, "v1.x": 0} {
		if got := Minor(in); got != want {
			t.Errorf("Minor(%q) = %d, want %d", in, got, want)
		}
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
