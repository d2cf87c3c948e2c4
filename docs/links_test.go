// Package docs holds no code: its test checks that every relative link and
// anchor in the README and the pages under docs/ resolves, as GitHub
// resolves them, so that an operator following a link never lands on a
// missing page or section.
package docs

import (
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// root is the repository, from this package's directory.
const root = ".."

// link is one link target as written, and where.
type link struct {
	file   string // relative to root
	line   int
	target string
}

// TestLinksResolve follows every relative link of README.md and
// docs/**/*.md: the file (or directory) must exist, and an #anchor must be
// a heading of the target page.
func TestLinksResolve(t *testing.T) {
	pages := markdownPages(t)
	if !slices.Contains(pages, "README.md") || len(pages) < 2 {
		t.Fatalf("found pages %v: want README.md and the pages of docs/", pages)
	}
	anchors := map[string]map[string]bool{} // page -> its anchors, read once
	anchorsOf := func(page string) (map[string]bool, error) {
		if a, ok := anchors[page]; ok {
			return a, nil
		}
		data, err := os.ReadFile(filepath.Join(root, page))
		if err != nil {
			return nil, err
		}
		a := headingAnchors(string(data))
		anchors[page] = a
		return a, nil
	}

	checked := 0
	for _, page := range pages {
		data, err := os.ReadFile(filepath.Join(root, page))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range extractLinks(page, string(data)) {
			if external(l.target) {
				continue
			}
			checked++
			if err := resolve(l, anchorsOf); err != nil {
				t.Errorf("%s:%d: link %q: %v", l.file, l.line, l.target, err)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no relative link found: the extractor is broken")
	}
	t.Logf("%d relative links in %d pages", checked, len(pages))
}

// markdownPages is README.md and every .md file under docs/, relative to
// root, with forward slashes.
func markdownPages(t *testing.T) []string {
	t.Helper()
	pages := []string{"README.md"}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), ".md") {
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			pages = append(pages, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pages
}

// external reports whether a target leaves the repository: a URL with a
// scheme (https:, mailto:) or a protocol-relative one.
func external(target string) bool {
	if strings.HasPrefix(target, "//") {
		return true
	}
	u, err := url.Parse(target)
	return err == nil && u.Scheme != ""
}

// resolve checks one relative link.
func resolve(l link, anchorsOf func(page string) (map[string]bool, error)) error {
	path, anchor, _ := strings.Cut(l.target, "#")
	path, err := url.PathUnescape(path)
	if err != nil {
		return err
	}
	page := l.file
	if path != "" {
		if strings.HasPrefix(path, "/") {
			page = strings.TrimPrefix(path, "/")
		} else {
			page = filepath.ToSlash(filepath.Join(filepath.Dir(l.file), path))
		}
		if page == ".." || strings.HasPrefix(page, "../") {
			return fmt.Errorf("leaves the repository")
		}
		if _, err := os.Stat(filepath.Join(root, page)); err != nil {
			return fmt.Errorf("no file %s", page)
		}
	}
	if anchor == "" {
		return nil
	}
	if !strings.HasSuffix(page, ".md") {
		return fmt.Errorf("an anchor into %s, which is not a markdown page", page)
	}
	a, err := anchorsOf(page)
	if err != nil {
		return err
	}
	if !a[anchor] {
		return fmt.Errorf("no heading of %s has the anchor #%s", page, anchor)
	}
	return nil
}

var (
	fence      = regexp.MustCompile("^ {0,3}(`{3,}|~{3,})")
	inlineLink = regexp.MustCompile(`!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)`)
	refDef     = regexp.MustCompile(`^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$`)
	heading    = regexp.MustCompile(`^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$`)
	htmlAnchor = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
	linkText   = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`)
)

// extractLinks returns the link targets of a markdown page: inline links
// and images, and reference definitions, outside fenced code blocks and
// code spans.
func extractLinks(file, text string) []link {
	var links []link
	forEachProseLine(text, func(n int, line string) {
		line = blankCodeSpans(line)
		for _, m := range inlineLink.FindAllStringSubmatch(line, -1) {
			links = append(links, link{file: file, line: n, target: m[1]})
		}
		if m := refDef.FindStringSubmatch(line); m != nil {
			links = append(links, link{file: file, line: n, target: m[1]})
		}
	})
	return links
}

// headingAnchors returns the anchors GitHub gives a page: one per heading
// (a repeated slug gets -1, -2, …), plus explicit <a name|id="…">.
func headingAnchors(text string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	forEachProseLine(text, func(_ int, line string) {
		for _, m := range htmlAnchor.FindAllStringSubmatch(line, -1) {
			anchors[m[1]] = true
		}
		m := heading.FindStringSubmatch(line)
		if m == nil {
			return
		}
		s := slug(m[2])
		if k := seen[s]; k > 0 {
			anchors[fmt.Sprintf("%s-%d", s, k)] = true
		} else {
			anchors[s] = true
		}
		seen[s]++
	})
	return anchors
}

// slug is GitHub's anchor for a heading's text: the rendered text (link
// text kept, code and emphasis marks dropped), lower case, with every
// character but letters, digits, '_', '-' and spaces removed and spaces
// turned into '-'.
func slug(h string) string {
	h = linkText.ReplaceAllString(h, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// forEachProseLine calls f with each line (numbered from 1) outside fenced
// code blocks; a fence closes with a run of the same character at least
// as long as the one that opened it.
func forEachProseLine(text string, f func(n int, line string)) {
	var open string
	for i, line := range strings.Split(text, "\n") {
		if m := fence.FindStringSubmatch(line); m != nil {
			switch {
			case open == "":
				open = m[1]
				continue
			case m[1][0] == open[0] && len(m[1]) >= len(open) && strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(line), m[1][:1])) == "":
				open = ""
				continue
			}
		}
		if open == "" {
			f(i+1, line)
		}
	}
}

// blankCodeSpans replaces the content of each code span by spaces, so that
// brackets and parentheses inside `…` are not read as links; link text
// that holds a code span keeps its brackets.
func blankCodeSpans(line string) string {
	b := []byte(line)
	for i := 0; i < len(b); {
		if b[i] != '`' {
			i++
			continue
		}
		n := 0
		for i+n < len(b) && b[i+n] == '`' {
			n++
		}
		delim := strings.Repeat("`", n)
		end := strings.Index(string(b[i+n:]), delim)
		if end < 0 {
			i += n
			continue
		}
		for j := i + n; j < i+n+end; j++ {
			b[j] = ' '
		}
		i += 2*n + end
	}
	return string(b)
}
