// Package yamlpos finds the line of the input that a yaml.v3 syntax error
// is about, which yaml.v3's own text gets wrong by one for some errors.
package yamlpos

import (
	"bytes"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// yamlError is all that yaml.v3 tells of a syntax error: its text,
// "yaml: line N: msg", or "yaml: msg" when it names no line.
var yamlError = regexp.MustCompile(`(?s)^yaml: (?:line (\d+): )?(.*)$`)

// SyntaxError returns the line of data that yaml.v3's syntax error err is
// on, 0 when none applies, and its message without the "yaml: line N:"
// prefix.
func SyntaxError(err error, data []byte) (line int, msg string) {
	line, msg = splitYAMLError(err)
	return errorLine(data, line, msg), msg
}

// splitYAMLError returns the line that yaml.v3's error names, 0 if none,
// and its message.
func splitYAMLError(err error) (line int, msg string) {
	m := yamlError.FindStringSubmatch(err.Error())
	if m == nil {
		return 0, err.Error()
	}
	line, _ = strconv.Atoi(m[1])
	return line, m[2]
}

// errorLine is the line of data that yaml.v3 means by line in its error
// msg. yaml.v3 counts the lines of its scanner's errors from 1 and those
// of its parser's from 0, leaving out line 0 (parser.fail, in its
// decode.go), and its text does not say which counted. A blank line put
// before line+1 tells: it moves what the error points at only if that
// is on line+1. (A scanner's error on line 1 names none, and goes on to
// name 2: it stays without one.) At the end of the input, that line is
// the one after the last.
func errorLine(data []byte, line int, msg string) int {
	lines := lineCount(data)
	if line >= lines {
		return lines // line and line+1 are both past the end
	}
	if at, _ := skipLines(data, line); movesDown(data, at, line, msg) {
		return line + 1
	}
	return line
}

// movesDown reports whether yaml.v3 names line+1 for the same error msg
// once a blank line is put at offset at of data. It costs one more parse,
// no more than the one that failed.
func movesDown(data []byte, at, line int, msg string) bool {
	blank := "\n"
	if at > 0 && data[at-1] == '\r' {
		blank = "\r" // "\r\n" would be one line break
	}
	r := io.MultiReader(bytes.NewReader(data[:at]), strings.NewReader(blank), bytes.NewReader(data[at:]))
	dec := yaml.NewDecoder(r)
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			l, m := splitYAMLError(err)
			return l == line+1 && m == msg
		}
	}
}

// lineCount is how many lines data has, counted as yaml.v3 counts them.
func lineCount(data []byte) int {
	end, n := skipLines(data, len(data))
	if end < len(data) {
		n++ // the last line has no line break
	}
	return n
}

// skipLines returns the offset just after the first n line breaks of data,
// or after its last if it has fewer, and how many it skipped. Line breaks
// are yaml.v3's: CR, LF, CRLF, NEL, LS and PS.
func skipLines(data []byte, n int) (offset, skipped int) {
	for i := 0; i < len(data) && skipped < n; {
		w := breakWidth(data[i:])
		if w == 0 {
			i++
			continue
		}
		i += w
		offset, skipped = i, skipped+1
	}
	return offset, skipped
}

// breakWidth is the length of the line break that b starts with, 0 if none.
func breakWidth(b []byte) int {
	switch {
	case bytes.HasPrefix(b, []byte("\r\n")):
		return 2
	case b[0] == '\r' || b[0] == '\n':
		return 1
	case bytes.HasPrefix(b, []byte("\u0085")):
		return 2
	case bytes.HasPrefix(b, []byte("\u2028")), bytes.HasPrefix(b, []byte("\u2029")):
		return 3
	}
	return 0
}
