package config

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// configDoc is the config reference an operator reads.
const configDoc = "../../docs/reference/config.md"

// docRow is one key of the reference's tables.
type docRow struct {
	key, typ, def, bounds, applies string
	line                           int
}

// docHeader is the header of every key table: the test reads only these.
var docHeader = []string{"Key", "Type", "Default", "Bounds", "Applies to", "Description"}

// readConfigDoc returns the rows of every key table of the reference.
// Its yaml examples are parsed by the docs package's test.
func readConfigDoc(t *testing.T) (rows []docRow) {
	t.Helper()
	data, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	inTable := false
	for i, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		switch {
		case slices.Equal(cells, docHeader):
			inTable = true
		case !inTable || strings.HasPrefix(cells[0], "---"):
		case len(cells) != len(docHeader):
			t.Errorf("%s:%d: %d cells, want %d (a | inside a cell?)", configDoc, i+1, len(cells), len(docHeader))
		default:
			rows = append(rows, docRow{key: strings.Trim(cells[0], "`"), typ: cells[1], def: cells[2], bounds: cells[3], applies: cells[4], line: i + 1})
		}
	}
	if len(rows) == 0 {
		t.Fatalf("%s: no table with the header %q", configDoc, strings.Join(docHeader, " | "))
	}
	return rows
}

// parserKeys is every key the parser accepts, as the reference writes
// them (retry.maxDelay, images[].mirror), read from the mappings it walks:
// a minimal config shows the top level and an image's keys, and each key
// given a mapping, or a list of one, shows any keys below it.
func parserKeys() []string {
	sections := map[string][]string{}
	walk := func(data string) {
		p := &parser{file: "keys.yaml", known: func(path string, keys []string) {
			sections[docPath(path)] = keys
		}}
		p.parse([]byte(data))
	}
	walk(minimalConfig)
	for tried := map[string]bool{}; ; {
		var next []string
		for path, keys := range sections {
			for _, k := range keys {
				if key := joinKey(path, k); !tried[key] {
					tried[key] = true
					next = append(next, key)
				}
			}
		}
		if len(next) == 0 {
			break
		}
		for _, key := range next {
			for _, v := range []string{"{}", "[{}]"} {
				data, _ := configWith(key, v)
				walk(data)
			}
		}
	}
	var all []string
	for path, keys := range sections {
		for _, k := range keys {
			all = append(all, joinKey(path, k))
		}
	}
	slices.Sort(all)
	return all
}

var listIndex = regexp.MustCompile(`\[\d+\]`)

// docPath is a parser path as the reference writes it: images[0] is images[].
func docPath(path string) string { return listIndex.ReplaceAllString(path, "[]") }

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// minimalConfig is a config with one image and nothing else.
const minimalConfig = "images:\n  - image: registry.example/app:1\n"

// configWith is minimalConfig with keys (as the reference writes them)
// set to values, in pairs, and the line of the last value.
func configWith(kv ...string) (string, int) {
	var b strings.Builder
	b.WriteString(minimalConfig)
	var written []string // the parents already written
	for i := 0; i+1 < len(kv); i += 2 {
		key, value := kv[i], kv[i+1]
		indent := ""
		if rest, ok := strings.CutPrefix(key, "images[]."); ok {
			indent, key = "    ", rest
		}
		if rest, ok := strings.CutPrefix(key, "workloads[]."); ok {
			b.WriteString("workloads:\n  - " + rest + ": " + value + "\n")
			continue
		}
		parts := strings.Split(key, ".")
		for j, part := range parts {
			if j < len(parts)-1 && j < len(written) && written[j] == part {
				continue
			}
			b.WriteString(indent + strings.Repeat("  ", j) + part + ":")
			if j < len(parts)-1 {
				b.WriteString("\n")
			}
		}
		written = parts[:len(parts)-1]
		b.WriteString(" " + value + "\n")
	}
	return b.String(), strings.Count(b.String(), "\n")
}

// TestConfigDocKeys: the reference documents every key the parser
// accepts, and no other, each with a type and where it applies.
func TestConfigDocKeys(t *testing.T) {
	rows := readConfigDoc(t)
	documented := map[string]bool{}
	commands := []string{"once", "agent", "bundle", "allowlist"}
	for _, r := range rows {
		if documented[r.key] {
			t.Errorf("%s:%d: %s documented twice", configDoc, r.line, r.key)
		}
		documented[r.key] = true
		if r.typ == "" || r.def == "" {
			t.Errorf("%s:%d: %s has no type or no default", configDoc, r.line, r.key)
		}
		applies := strings.Split(r.applies, ", ")
		for _, c := range applies {
			if !slices.Contains(commands, c) {
				t.Errorf("%s:%d: %s applies to %q, want commands of %q separated by \", \"", configDoc, r.line, r.key, c, commands)
			}
		}
	}
	accepted := parserKeys()
	if len(accepted) < 20 {
		t.Fatalf("the parser shows only %d keys: %q", len(accepted), accepted)
	}
	for _, k := range accepted {
		if !documented[k] {
			t.Errorf("%s: the parser accepts %s, which the reference does not document", configDoc, k)
		}
	}
	for _, r := range rows {
		if !slices.Contains(accepted, r.key) {
			t.Errorf("%s:%d: %s is documented, but the parser refuses it (it accepts %q)", configDoc, r.line, r.key, accepted)
		}
	}
}

// defaultValue is the YAML value of a Default cell that starts with one,
// in backquotes; other cells (required, "see retry.*", derived values)
// name no value a config could write.
var defaultValue = regexp.MustCompile("^`([^`]+)`")

// TestConfigDocDefaults: each documented default, written out, gives the
// config that leaving the key out gives.
func TestConfigDocDefaults(t *testing.T) {
	rows := readConfigDoc(t)
	want, err := Parse("minimal.yaml", []byte(minimalConfig))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, r := range rows {
		m := defaultValue.FindStringSubmatch(r.def)
		if m == nil {
			t.Logf("%s: default %q is not a value; not compared", r.key, r.def)
			continue
		}
		t.Run(r.key, func(t *testing.T) {
			data, _ := configWith(r.key, m[1])
			got, err := Parse("default.yaml", []byte(data))
			if err != nil {
				t.Fatalf("%s:%d: the documented default %s: %v\n%s", configDoc, r.line, m[1], err, data)
			}
			want := want
			if strings.HasPrefix(r.key, "workloads[].") {
				// A selection's key left out is a selection without it.
				if want, err = Parse("empty.yaml", []byte(minimalConfig+"workloads:\n  - {}\n")); err != nil {
					t.Fatal(err)
				}
			}
			if g, w := comparable(got), comparable(want); !reflect.DeepEqual(g, w) {
				t.Errorf("%s:%d: %s: %s differs from the key left out:\n%+v\nwant\n%+v", configDoc, r.line, r.key, m[1], g, w)
			}
		})
		checked++
	}
	if checked < 15 {
		t.Errorf("only %d defaults compared", checked)
	}
}

// comparable is cfg without what says a value was written rather than
// left out, and with empty lists and maps as nil.
func comparable(cfg *Config) Config {
	c := *cfg
	c.DiskBudget.setHigh, c.DiskBudget.setAvailable = false, false
	c.Images = slices.Clone(c.Images)
	for i := range c.Images {
		img := &c.Images[i]
		img.refreshSet = false
		if len(img.PullSecrets) == 0 {
			img.PullSecrets = nil
		}
		if len(img.NodeSelector) == 0 {
			img.NodeSelector = nil
		}
	}
	return c
}

// bound is one documented bound: values just inside and just outside it.
type bound struct {
	inside, outside []string
	// atLeast is another key this one must not be less than; the values
	// above are tried with it set to the same.
	atLeast string
}

var (
	intRange      = regexp.MustCompile(`^(-?\d+)\.\.(-?\d+)( entries)?$`)
	percentRange  = regexp.MustCompile(`^(\d+)%\.\.(\d+)%$`)
	durationBound = regexp.MustCompile(`^(>=?) (\S+)$`)
	keyBound      = regexp.MustCompile(`^>= ([a-z][A-Za-z.\[\]]*[a-z])$`)
	codeSpan      = regexp.MustCompile("`([^`]+)`")
)

// parseBounds reads a Bounds cell: code spans of ranges (1..64, 1%..100%,
// 0..10000 entries), duration bounds (> 0s, >= 1s) or, after "one of",
// the values allowed.
func parseBounds(cell string) (b bound, err error) {
	if cell == "" {
		return b, nil
	}
	if rest, ok := strings.CutPrefix(cell, "one of "); ok {
		for _, m := range codeSpan.FindAllStringSubmatch(rest, -1) {
			b.inside = append(b.inside, m[1])
		}
		if len(b.inside) == 0 {
			return b, fmt.Errorf("one of nothing")
		}
		b.outside = []string{"not-one-of-them"}
		return b, nil
	}
	for _, part := range strings.Split(cell, ", ") {
		s := strings.Trim(part, "`")
		if strings.HasSuffix(part, " entries") {
			s = strings.Trim(strings.TrimSuffix(part, " entries"), "`") + " entries"
		}
		switch {
		case keyBound.MatchString(s):
			b.atLeast = keyBound.FindStringSubmatch(s)[1]
		case intRange.MatchString(s):
			m := intRange.FindStringSubmatch(s)
			lo, _ := strconv.Atoi(m[1])
			hi, _ := strconv.Atoi(m[2])
			count := func(n int) string { return strconv.Itoa(n) }
			if m[3] != "" {
				count = func(n int) string { return "#" + strconv.Itoa(n) } // a list of n entries
			}
			b.inside = append(b.inside, count(lo), count(hi))
			if m[3] == "" || lo > 0 {
				b.outside = append(b.outside, count(lo-1))
			}
			b.outside = append(b.outside, count(hi+1))
		case percentRange.MatchString(s):
			m := percentRange.FindStringSubmatch(s)
			lo, _ := strconv.Atoi(m[1])
			hi, _ := strconv.Atoi(m[2])
			p := func(n int) string { return strconv.Itoa(n) + "%" }
			b.inside = append(b.inside, p(lo), p(hi))
			b.outside = append(b.outside, p(lo-1), p(hi+1))
		case durationBound.MatchString(s):
			m := durationBound.FindStringSubmatch(s)
			d, err := time.ParseDuration(m[2])
			if err != nil {
				return b, err
			}
			if m[1] == ">" {
				b.inside, b.outside = append(b.inside, (d+1).String()), append(b.outside, d.String())
			} else {
				b.inside, b.outside = append(b.inside, d.String()), append(b.outside, (d-1).String())
			}
		default:
			return b, fmt.Errorf("%q is no bound this test reads: write A..B, A%%..B%%, A..B entries, > D, >= D, >= KEY or one of `X`, `Y` in code spans, and conditions in the description", part)
		}
	}
	return b, nil
}

// configFor is a config with key set to v (and the key it must not be
// less than, if any, too) and the line of the error v must get: #N stands
// for a list of N images.
func configFor(key, v string, b bound) (string, int) {
	if n, ok := strings.CutPrefix(v, "#"); ok && key == "images" {
		count, _ := strconv.Atoi(n)
		if count == 0 {
			return "images: []\n", 1
		}
		var sb strings.Builder
		sb.WriteString("images:\n")
		for i := range count {
			fmt.Fprintf(&sb, "  - image: registry.example/app-%d:1\n", i)
		}
		return sb.String(), 2 // the list starts on line 2
	}
	if n, ok := strings.CutPrefix(v, "#"); ok && key == "workloads" {
		count, _ := strconv.Atoi(n)
		return minimalConfig + "workloads:" + strings.Repeat("\n  - {}", count) + "\n", 4 // the list starts on line 4
	}
	if b.atLeast != "" {
		return configWith(b.atLeast, v, key, v)
	}
	return configWith(key, v)
}

// TestConfigDocBounds: a value just outside each documented bound is an
// error naming the file, the line and the key; just inside is accepted.
func TestConfigDocBounds(t *testing.T) {
	rows := readConfigDoc(t)
	defaults := map[string]string{}
	for _, r := range rows {
		if m := defaultValue.FindStringSubmatch(r.def); m != nil {
			defaults[r.key] = m[1]
		}
	}
	checked := 0
	accept := func(r docRow, data string) {
		t.Helper()
		if _, err := Parse("bounds.yaml", []byte(data)); err != nil {
			t.Errorf("%s:%d: %s: inside %s, but: %v\n%s", configDoc, r.line, r.key, r.bounds, err, data)
		}
		checked++
	}
	refuse := func(r docRow, data, prefix string) {
		t.Helper()
		_, err := Parse("bounds.yaml", []byte(data))
		if err == nil || !slices.ContainsFunc(strings.Split(err.Error(), "\n"), func(l string) bool { return strings.HasPrefix(l, prefix) }) {
			t.Errorf("%s:%d: %s: outside %s: want an error starting %q, got %v\n%s", configDoc, r.line, r.key, r.bounds, prefix, err, data)
		}
		checked++
	}
	for _, r := range rows {
		b, err := parseBounds(r.bounds)
		if err != nil {
			t.Errorf("%s:%d: %s: bounds %q: %v", configDoc, r.line, r.key, r.bounds, err)
			continue
		}
		path := strings.ReplaceAll(r.key, "[]", "[0]")
		for _, v := range b.inside {
			data, _ := configFor(r.key, v, b)
			accept(r, data)
		}
		for _, v := range b.outside {
			data, line := configFor(r.key, v, b)
			refuse(r, data, fmt.Sprintf("bounds.yaml:%d: %s: ", line, path))
		}
		if b.atLeast == "" {
			continue
		}
		// Against the other key's default: equal is fine, a nanosecond
		// less is an error of the mapping both are in.
		d, err := time.ParseDuration(defaults[b.atLeast])
		if err != nil {
			t.Errorf("%s:%d: %s: >= %s, whose default is no duration: %v", configDoc, r.line, r.key, b.atLeast, err)
			continue
		}
		data, _ := configWith(b.atLeast, d.String(), r.key, d.String())
		accept(r, data)
		data, last := configWith(b.atLeast, d.String(), r.key, (d - 1).String())
		parent := path[:strings.LastIndex(path, ".")]
		refuse(r, data, fmt.Sprintf("bounds.yaml:%d: %s: ", last-1, parent))
	}
	if checked < 30 {
		t.Errorf("only %d values at the bounds tried", checked)
	}
}
