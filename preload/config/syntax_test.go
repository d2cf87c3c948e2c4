package config_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/preload/config"
)

// TestParseSyntaxErrorLines pins the line of each kind of broken YAML to
// the one a user would point at, as checked against gopkg.in/yaml.v3
// v3.0.1: Parse corrects yaml.v3's lines, which it counts from 1 for its
// scanner's errors and from 0 for its parser's, without knowing which
// messages are whose. A yaml.v3 that words or places its errors otherwise
// fails here, naming the case.
func TestParseSyntaxErrorLines(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		// Errors of yaml.v3's scanner.
		{"tab before a list entry", "images:\n\t- image: a\n", "images.yaml:2: invalid YAML: found character that cannot start any token"},
		{"tab before a key", "images: []\nretry:\n\tmaxDelay: 1s\n", "images.yaml:3: invalid YAML: found character that cannot start any token"},
		{"reserved character", "images: []\nsandboxImage: @pause\n", "images.yaml:2: invalid YAML: found character that cannot start any token"},
		{"unclosed double quote", "images: []\nsandboxImage: \"pause\n", "images.yaml:2: invalid YAML: found unexpected end of stream"},
		{"unclosed single quote, lines after it", "images:\n  - image: 'a\n  - image: b\n", "images.yaml:2: invalid YAML: found unexpected end of stream"},
		{"unclosed quote on the only line", "images: \"a\n", "images.yaml:1: invalid YAML: found unexpected end of stream"},
		{"unknown escape", "images: []\nsandboxImage: \"a\\qb\"\n", "images.yaml:2: invalid YAML: found unknown escape character"},
		{"key indented under a value", "images: []\nconcurrency: 3\n  pin: true\n", "images.yaml:3: invalid YAML: mapping values are not allowed in this context"},
		{"key indented past its siblings", "images: []\nretry:\n  maxDelay: 1s\n    initialDelay: 1s\n", "images.yaml:4: invalid YAML: mapping values are not allowed in this context"},
		{"list entry after a key's colon", "images: []\nretry: - a\n", "images.yaml:2: invalid YAML: block sequence entries are not allowed in this context"},
		{"key without a colon", "images: []\npin\nconcurrency: 2\n", "images.yaml:2: invalid YAML: could not find expected ':'"},
		{"anchor without a name", "images: []\nsandboxImage: &\n", "images.yaml:2: invalid YAML: did not find expected alphabetic or numeric character"},
		{"unclosed quote, CRLF", "images: []\r\nsandboxImage: \"a\r\n", "images.yaml:2: invalid YAML: found unexpected end of stream"},
		{"unclosed quote, CR", "images: []\rsandboxImage: \"a\r", "images.yaml:2: invalid YAML: found unexpected end of stream"},

		// Errors of yaml.v3's parser.
		{"missing ']'", "images: []\npin: [true\n", "images.yaml:2: invalid YAML: did not find expected ',' or ']'"},
		{"missing '}'", "images: []\nretry: {initialDelay: 1s\n", "images.yaml:2: invalid YAML: did not find expected ',' or '}'"},
		{"missing ']', lines after it", "images:\n- image: a\n  pullSecrets: [a, b\n- image: b\n", "images.yaml:3: invalid YAML: did not find expected ',' or ']'"},
		{"missing '}', lines after it", "images:\n  - image: a\n    nodeSelector: {gpu: \"true\"\n  - image: b\n", "images.yaml:3: invalid YAML: did not find expected ',' or '}'"},
		{"missing ']', blank lines after it", "images:\n- image: a\n  pullSecrets: [a, b\n\n\n", "images.yaml:3: invalid YAML: did not find expected ',' or ']'"},
		{"missing ']' on line 1", "images: [{image: a, pullSecrets: [x}]\n", "images.yaml:1: invalid YAML: did not find expected ',' or ']'"},
		{"']' closing a '{'", "images: []\nretry: {maxDelay: 1s]\n", "images.yaml:2: invalid YAML: did not find expected ',' or '}'"},
		{"one ']' too many", "images: []\nsandboxImage: [a, b]]\n", "images.yaml:2: invalid YAML: did not find expected key"},
		{"end of input in a list", "images:\n  - image: a\n  - [\n", "images.yaml:3: invalid YAML: did not find expected node content"},
		{"end of input in a mapping", "images: []\nretry: {\n", "images.yaml:2: invalid YAML: did not find expected node content"},
		{"end of input on line 1, no line break", "images: [", "images.yaml:1: invalid YAML: did not find expected node content"},
		{"value without a key in flow", "images: []\nretry: {: 1s}\n", "images.yaml:2: invalid YAML: did not find expected node content"},
		{"empty entry in flow", "images: []\nretry: {maxDelay: 1s,, initialDelay: 1s}\n", "images.yaml:2: invalid YAML: did not find expected node content"},
		{"two values for a key in flow", "images: []\nretry: {maxDelay: 1s: 2s}\n", "images.yaml:2: invalid YAML: did not find expected ',' or '}'"},
		{"value without a key", "images: []\n: x\n", "images.yaml:2: invalid YAML: did not find expected key"},
		{"text after a quoted value", "images: []\nsandboxImage: \"a\" b\n", "images.yaml:2: invalid YAML: did not find expected key"},
		{"list entry outdented", "images:\n    - image: a\n  - image: b\n", "images.yaml:3: invalid YAML: did not find expected key"},
		{"key outdented", "retry:\n  initialDelay: 1s\n maxDelay: 2s\nimages: []\n", "images.yaml:3: invalid YAML: did not find expected key"},
		{"undefined tag handle", "images: []\npin: !x!y true\n", "images.yaml:2: invalid YAML: found undefined tag handle"},
		{"directive after content", "images: []\n%YAML 1.1\n", "images.yaml:2: invalid YAML: did not find expected <document start>"},
		{"content after the document end", "images: []\npin: true\n...\nimages: []\n", "images.yaml:4: invalid YAML: did not find expected <document start>"},
		{"duplicate %YAML", "%YAML 1.1\n%YAML 1.1\n---\nimages: []\n", "images.yaml:2: invalid YAML: found duplicate %YAML directive"},
		{"YAML 2.0", "%YAML 2.0\n---\nimages: []\n", "images.yaml:1: invalid YAML: found incompatible YAML document"},
		{"missing ']', CRLF", "images: []\r\npin: [true\r\n", "images.yaml:2: invalid YAML: did not find expected ',' or ']'"},
		{"missing ']', CR", "images: []\rpin: [true\r", "images.yaml:2: invalid YAML: did not find expected ',' or ']'"},
		{"missing ']', LS", "images: []\u2028pin: [true\u2028", "images.yaml:2: invalid YAML: did not find expected ',' or ']'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse("images.yaml", []byte(tc.yaml))
			if err == nil || err.Error() != tc.want {
				t.Errorf("Parse(%q):\n got  %v\n want %s (as with gopkg.in/yaml.v3 v3.0.1)", tc.yaml, err, tc.want)
			}
		})
	}
}

// TestParseSyntaxErrorLineOfLargeConfig: the line of an error at the end
// of a config near the size limit. Finding it costs one more parse, so that
// Parse takes about twice as long as for the same config without the error.
func TestParseSyntaxErrorLineOfLargeConfig(t *testing.T) {
	var b strings.Builder
	b.WriteString("images:\n")
	for i := range 10000 {
		fmt.Fprintf(&b, "- {image: corp.example/team/image-%d:1.0, pullSecrets: [regcred], nodeSelector: {pool: gpu}}\n", i)
	}
	lines := 10001
	start := time.Now()
	if _, err := config.Parse("images.yaml", []byte(b.String())); err != nil {
		t.Fatal(err)
	}
	valid := time.Since(start)
	for _, tc := range []struct{ last, msg string }{
		{"pin: [true\n", "did not find expected ',' or ']'"},
		{"\t- image: x\n", "found character that cannot start any token"},
	} {
		start := time.Now()
		_, err := config.Parse("images.yaml", []byte(b.String()+tc.last))
		want := fmt.Sprintf("images.yaml:%d: invalid YAML: %s", lines+1, tc.msg)
		if err == nil || err.Error() != want {
			t.Errorf("got  %v\nwant %s", err, want)
		}
		if d := time.Since(start); d > 5*valid {
			t.Errorf("%q: took %v, %v without the error", tc.last, d, valid)
		}
	}
}
