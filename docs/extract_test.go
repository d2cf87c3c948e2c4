package docs

import (
	"slices"
	"testing"
)

func TestSlug(t *testing.T) {
	for _, tc := range []struct{ heading, want string }{
		{"Install with Helm", "install-with-helm"},
		{"`prune`: images that left the list", "prune-images-that-left-the-list"},
		{"Annotation `preloader.io/status`", "annotation-preloaderiostatus"},
		{"KEP-2535: the kubelet refuses preloaded images", "kep-2535-the-kubelet-refuses-preloaded-images"},
		{"What the kubelet lets pods use (KEP-2535)", "what-the-kubelet-lets-pods-use-kep-2535"},
		{"Proof on a real node (`make e2e`)", "proof-on-a-real-node-make-e2e"},
		{"[Linked](other.md) heading", "linked-heading"},
		{"snake_case and ünïcode", "snake_case-and-ünïcode"},
	} {
		if got := slug(tc.heading); got != tc.want {
			t.Errorf("slug(%q) = %q, want %q", tc.heading, got, tc.want)
		}
	}
}

func TestHeadingAnchors(t *testing.T) {
	page := "# Title\n## Notes\n```\n## not a heading\n```\n## Notes\n<a id=\"custom\"></a>\n### Closed ###\n"
	got := headingAnchors(page)
	for _, want := range []string{"title", "notes", "notes-1", "custom", "closed"} {
		if !got[want] {
			t.Errorf("anchors %v lack %q", got, want)
		}
	}
	if got["not-a-heading"] {
		t.Errorf("a heading inside a fenced block became an anchor")
	}
}

func TestExtractLinks(t *testing.T) {
	page := "See [a](a.md) and [`b`](dir/b.md#sec), ![img](pic.png).\n" +
		"Code: `[not](a-link.md)` stays code.\n" +
		"~~~\n[fenced](no.md)\n~~~\n" +
		"````\n```\n[nested](no2.md)\n````\n" +
		"[ref]: ref.md \"title\"\n" +
		"[ext](https://example.com/x) and [self](#top)\n"
	var got []string
	for _, l := range extractLinks("p.md", page) {
		got = append(got, l.target)
	}
	want := []string{"a.md", "dir/b.md#sec", "pic.png", "ref.md", "https://example.com/x", "#top"}
	if !slices.Equal(got, want) {
		t.Errorf("links = %q, want %q", got, want)
	}
}

func TestResolve(t *testing.T) {
	anchors := func(page string) (map[string]bool, error) {
		return headingAnchors("# Design contract\n## Planned\n"), nil
	}
	for _, tc := range []struct {
		target string
		ok     bool
	}{
		{"design/contract.md", true},
		{"design/contract.md#planned", true},
		{"design/contract.md#nowhere", false},
		{"design/missing.md", false},
		{"../../outside.md", false},
		{"development", true}, // a directory
	} {
		err := resolve(link{file: "docs/README.md", line: 1, target: tc.target}, anchors)
		if (err == nil) != tc.ok {
			t.Errorf("resolve(%q) = %v, want ok=%v", tc.target, err, tc.ok)
		}
	}
}
