package warm

import (
	"strings"
	"testing"
)

func mustParse(t testing.TB, ref string) Image {
	t.Helper()
	img, err := ParseImage(ref)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestAddImage(t *testing.T) {
	tests := []struct {
		name, data, ref string
		want            string // the new images.yaml; the data itself when unchanged
		changed         bool
	}{
		{"block list", "images:\n  - image: a:1\n", "nginx:1",
			"images:\n  - image: a:1\n  - image: nginx:1\n", true},
		// The list stays in flow style; the encoder quotes a colon inside a
		// flow collection.
		{"flow list", "images: [{image: a:1}]\nconcurrency: 2\n", "nginx:1",
			"images: [{image: 'a:1'}, {image: 'nginx:1'}]\nconcurrency: 2\n", true},
		{"comments, other keys and styles stay",
			"# the cluster's images\nimages:\n  - image: a:1 # the app\n    nodeSelector: {gpu: \"true\"}\n# at most two at once\nconcurrency: 2\n",
			"nginx:1",
			"# the cluster's images\nimages:\n  - image: a:1 # the app\n    nodeSelector: {gpu: \"true\"}\n  - image: nginx:1\n# at most two at once\nconcurrency: 2\n", true},
		{"listed under another spelling", "images:\n  - image: docker.io/library/nginx:1\n", "nginx:1",
			"images:\n  - image: docker.io/library/nginx:1\n", false},
		{"listed, asked under another spelling", "images:\n  - image: nginx:1\n", "docker.io/library/nginx:1",
			"images:\n  - image: nginx:1\n", false},
		{"a mapping entry with more keys", "images:\n  - pullSecrets: [regcred]\n    image: nginx:1\n", "nginx:1",
			"images:\n  - pullSecrets: [regcred]\n    image: nginx:1\n", false},
		{"a plain string entry", "images:\n  - nginx:1\n", "docker.io/library/nginx:1",
			"images:\n  - nginx:1\n", false},
		{"a different tag is another image", "images:\n  - image: nginx:1\n", "nginx:2",
			"images:\n  - image: nginx:1\n  - image: nginx:2\n", true},
		{"empty list", "images: []\n", "nginx:1", "images: [{image: 'nginx:1'}]\n", true},
		{"null list", "images:\nconcurrency: 2\n", "nginx:1", "images:\n  - image: nginx:1\nconcurrency: 2\n", true},
		{"no images key", "concurrency: 2\n", "nginx:1", "images:\n  - image: nginx:1\nconcurrency: 2\n", true},
		{"empty config", "", "nginx:1", "images:\n  - image: nginx:1\n", true},
	}
	for _, tt := range tests {
		img := mustParse(t, tt.ref)
		got, changed, err := AddImage(tt.data, img)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got != tt.want || changed != tt.changed {
			t.Errorf("%s: changed %v, got:\n%s\nwant changed %v:\n%s", tt.name, changed, got, tt.changed, tt.want)
		}
		if !Lists(got, img) {
			t.Errorf("%s: the result does not list %s:\n%s", tt.name, tt.ref, got)
		}
	}
}

func TestAddImageRefusesWhatItCannotEdit(t *testing.T) {
	tests := []struct{ name, data, wantErr string }{
		{"invalid YAML", "images: [a:1\n", "did not find expected"},
		{"images not a list", "images: {not: a list}\n", "line 1: images must be a list"},
		{"config not a mapping", "- image: a:1\n", "line 1: the config must be a mapping"},
	}
	for _, tt := range tests {
		if _, _, err := AddImage(tt.data, mustParse(t, "nginx:1")); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestLists(t *testing.T) {
	img := mustParse(t, "nginx:1")
	tests := []struct {
		data string
		want bool
	}{
		{"images:\n  - image: docker.io/library/nginx:1\n", true},
		{"images: [nginx:1]\n", true},
		{"images:\n  - image: nginx:2\n", false},
		{"concurrency: 2\n", false},
		{"images: [nginx:1\n", false}, // invalid YAML lists nothing
	}
	for _, tt := range tests {
		if got := Lists(tt.data, img); got != tt.want {
			t.Errorf("Lists(%q) = %v, want %v", tt.data, got, tt.want)
		}
	}
}
