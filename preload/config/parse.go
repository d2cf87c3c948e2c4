package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/distribution/reference"
	"gopkg.in/yaml.v3"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Bounds on a config, so that a broken or hostile one (the ConfigMap is
// writable by more people than the node) costs the node little.
const (
	// maxConfigBytes is also what a ConfigMap can hold.
	maxConfigBytes = 1 << 20
	maxImages      = 10000
	// maxExpanded bounds nodes plus scalar bytes once aliases are expanded:
	// an unaliased maximal file stays below it, a "billion laughs" goes far
	// above it before anything walks it.
	maxExpanded = 4 << 20
	// maxProblems bounds the report of a file that is wrong throughout;
	// the rest are only counted.
	maxProblems = 1000
	maxMsgBytes = 1024
)

// Error is an invalid config: every problem found in it.
type Error struct {
	Problems []Problem
}

// Problem is one thing wrong with a config file. Line is 0 when it concerns
// the file as a whole.
type Problem struct {
	File string
	Line int
	Msg  string
}

func (p Problem) String() string {
	if p.Line == 0 {
		return p.File + ": " + p.Msg
	}
	return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
}

// Error is one line per problem, in the order of the file.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Load reads and parses the config file at path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, readError(path, err)
	}
	defer f.Close()
	// One byte past the limit is enough for Parse to refuse the file, and
	// reading no further keeps a mistaken --config /dev/zero harmless.
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, readError(path, err)
	}
	return Parse(path, data)
}

// readError is an *Error so that the commands treat a config they
// cannot read like one they cannot parse: invalid, exit code 2.
func readError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return &Error{Problems: []Problem{{File: path, Msg: "cannot read config: " + err.Error()}}}
}

// Parse parses the content of a config file; file names it in problems.
// The error, if any, is an *Error with every problem found (up to
// 1000, then a count). Input over 1 MiB, more than 10000 images and
// aliases that expand past 4 MiB are refused before anything else.
func Parse(file string, data []byte) (*Config, error) {
	p := &parser{file: file}
	cfg := p.parse(data)
	if err := p.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

type parser struct {
	file     string
	problems []Problem
	omitted  int
	// known, when set, is told the known keys of every mapping that
	// fields walks, by path: how a test reads the keys the parser accepts.
	known func(path string, keys []string)
}

func (p *parser) parse(data []byte) *Config {
	if len(data) > maxConfigBytes {
		p.add(0, fmt.Sprintf("config is larger than the limit of %d bytes (1 MiB)", maxConfigBytes))
		return nil
	}
	root := p.document(data)
	if root == nil {
		return nil
	}
	if expandedSize(root, map[*yaml.Node]int{}) > maxExpanded {
		p.add(root.Line, fmt.Sprintf("config is larger than %d MiB once its aliases are expanded", maxExpanded>>20))
		return nil
	}
	return p.config(root)
}

// document returns the root node of the one YAML document in data. Empty
// documents, such as after a trailing "---", are not counted.
func (p *parser) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root *yaml.Node
	for {
		var doc yaml.Node
		switch err := dec.Decode(&doc); {
		case err == io.EOF:
			if root == nil {
				p.add(0, `config is empty: no images listed ("images: []" for none)`)
			}
			return root
		case err != nil:
			p.syntaxError(err, data)
			return nil
		}
		switch n := doc.Content[0]; {
		case isNull(n):
		case root == nil:
			root = n
		default:
			p.add(n.Line, "a second YAML document; the config is a single document")
			return root
		}
	}
}

// scalar bytes, saturated just above maxExpanded. Anchored nodes are
// measured once, so this is linear in the parsed tree.
func expandedSize(n *yaml.Node, anchored map[*yaml.Node]int) int {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if size, ok := anchored[n]; ok {
		return size
	}
	if n.Anchor != "" {
		// Until measured, an alias to n is inside n: n is infinite.
		anchored[n] = maxExpanded + 1
	}
	size := 1 + len(n.Value)
	for _, c := range n.Content {
		size += expandedSize(c, anchored)
		if size > maxExpanded {
			size = maxExpanded + 1
			break
		}
	}
	if n.Anchor != "" {
		anchored[n] = size
	}
	return size
}

func (p *parser) config(root *yaml.Node) *Config {
	cfg := Defaults()
	var images *yaml.Node
	p.fields(root, "", setters{
		"images":       func(v *yaml.Node, _ string) { images = v },
		"sandboxImage": func(v *yaml.Node, path string) { p.sandboxImage(v, path, &cfg.SandboxImage) },
		"archiveDir":   func(v *yaml.Node, path string) { p.archiveDir(v, path, &cfg.ArchiveDir) },
		"concurrency":  func(v *yaml.Node, path string) { p.intIn(v, path, 1, 64, &cfg.Concurrency) },
		"pullVia": func(v *yaml.Node, path string) {
			p.oneOf(v, path, &cfg.PullVia, PullViaAuto, PullViaCRI, PullViaContainerd)
		},
		"maxDownloads": func(v *yaml.Node, path string) { p.intIn(v, path, 1, 64, &cfg.MaxDownloads) },
		"pullTimeout":  func(v *yaml.Node, path string) { p.duration(v, path, 1, &cfg.PullTimeout) },
		"stallTimeout": func(v *yaml.Node, path string) { p.duration(v, path, time.Second, &cfg.StallTimeout) },
		"retry":        func(v *yaml.Node, path string) { p.retry(v, path, &cfg.Retry) },
		"resync":       func(v *yaml.Node, path string) { p.duration(v, path, time.Second, &cfg.Resync) },
		"pin":          func(v *yaml.Node, path string) { p.boolean(v, path, &cfg.Pin) },
		"prune":        func(v *yaml.Node, path string) { p.prune(v, path, &cfg.Prune) },
		"refresh":      func(v *yaml.Node, path string) { p.duration(v, path, 0, &cfg.Refresh) },
		"diskBudget":   func(v *yaml.Node, path string) { p.budget(v, path, &cfg.DiskBudget) },
		"rollout":      func(v *yaml.Node, path string) { p.rollout(v, path, &cfg.Rollout) },
		"workloads":    func(v *yaml.Node, path string) { cfg.Workloads = p.workloads(v, path) },
		"verify":       func(v *yaml.Node, path string) { p.verify(v, path, &cfg.Verify) },
	})
	if images == nil {
		if root.Kind == yaml.MappingNode {
			p.add(root.Line, `no images listed ("images: []" for none)`)
		}
		return nil
	}
	cfg.Images = p.images(images)
	for i := range cfg.Images {
		if !cfg.Images[i].refreshSet {
			cfg.Images[i].Refresh = cfg.Refresh
		}
	}
	return &cfg
}

func (p *parser) images(n *yaml.Node) []Image {
	if n.Kind != yaml.SequenceNode {
		p.typeError(n, "images", "a list")
		return nil
	}
	if len(n.Content) > maxImages {
		p.errorf(n, "images", "%d images, more than the limit of %d", len(n.Content), maxImages)
		return nil
	}
	type entry struct {
		path string
		line int
	}
	seen := make(map[string]entry, len(n.Content))
	images := make([]Image, 0, len(n.Content))
	for i, item := range n.Content {
		path := fmt.Sprintf("images[%d]", i)
		img := p.image(item, path)
		if img.Name == "" {
			continue
		}
		if first, dup := seen[img.Name]; dup {
			p.add(img.Line, fmt.Sprintf("%s.image: duplicate image %s, first listed as %s at line %d", path, img.Name, first.path, first.line))
			continue
		}
		seen[img.Name] = entry{path, img.Line}
		images = append(images, img)
	}
	return images
}

// image decodes one entry of images; its Name is empty when its image is
// missing or invalid.
func (p *parser) image(item *yaml.Node, path string) Image {
	// The line of the entry itself, even when it is an alias.
	img := Image{Line: item.Line}
	var image *yaml.Node
	ok := p.fields(deref(item), path, setters{
		"image":          func(v *yaml.Node, _ string) { image = v },
		"pullSecrets":    func(v *yaml.Node, path string) { img.PullSecrets = p.secretNames(v, path) },
		"serviceAccount": func(v *yaml.Node, path string) { p.objectName(v, path, "ServiceAccount", &img.ServiceAccount) },
		"nodeSelector":   func(v *yaml.Node, path string) { img.NodeSelector = p.nodeSelector(v, path) },
		"archive":        func(v *yaml.Node, path string) { p.archive(v, path, &img.Archive) },
		"mirror":         func(v *yaml.Node, path string) { p.mirror(v, path, &img.Mirror) },
		"refresh": func(v *yaml.Node, path string) {
			p.duration(v, path, 0, &img.Refresh)
			img.refreshSet = true
		},
		"prune": func(v *yaml.Node, path string) {
			prune := true
			p.boolean(v, path, &prune)
			img.NoPrune = !prune
		},
	})
	if !ok {
		return img
	}
	if img.Archive != "" && img.Mirror != "" {
		p.errorf(item, path, "has both archive and mirror; an image comes from one place")
	}
	if image == nil {
		p.errorf(item, path, "image is required")
		return img
	}
	if s, ok := p.str(image, path+".image"); ok {
		name, err := NormalizeRef(s)
		if err != nil {
			p.errorf(image, path+".image", "invalid reference %s: %v", quote(s), err)
			return img
		}
		img.Ref, img.Name = s, name
	}
	return img
}

func (p *parser) sandboxImage(n *yaml.Node, path string, dst *string) {
	s, ok := p.str(n, path)
	if !ok {
		return
	}
	if s == SandboxAuto || s == SandboxNone {
		*dst = s
		return
	}
	name, err := NormalizeRef(s)
	if err != nil {
		p.errorf(n, path, "must be auto, none or an image reference; invalid reference %s: %v", quote(s), err)
		return
	}
	*dst = name
}

func (p *parser) archiveDir(n *yaml.Node, path string, dst *string) {
	s, ok := p.str(n, path)
	if !ok {
		return
	}
	if !filepath.IsAbs(s) {
		p.errorf(n, path, "must be an absolute path, got %s", quote(s))
		return
	}
	*dst = filepath.Clean(s)
}

func (p *parser) archive(n *yaml.Node, path string, dst *string) {
	s, ok := p.str(n, path)
	if !ok {
		return
	}
	var why string
	switch {
	case filepath.IsAbs(s):
		why = "must be relative to archiveDir"
	case slices.Contains(strings.Split(s, "/"), ".."):
		why = `must not contain ".."`
	case filepath.Clean(s) == ".":
		why = "must name a file in archiveDir"
	default:
		*dst = s
		return
	}
	p.errorf(n, path, "%s, got %s", why, quote(s))
}

// mirror checks a registry host[:port] with an optional path prefix, the
// place an image's repository is pulled from instead of its own registry.
func (p *parser) mirror(n *yaml.Node, path string, dst *string) {
	s, ok := p.str(n, path)
	if !ok {
		return
	}
	// The engine pulls the mirror followed by the image's repository, so
	// the mirror must read as the start of a reference, and runtimes must
	// read its first component as a registry: "mirror/image" is on Docker Hub.
	named, err := reference.ParseNormalizedNamed(s + "/image")
	if err != nil {
		p.errorf(n, path, "must be a registry host[:port] with an optional path, got %s: %v", quote(s), err)
		return
	}
	if host, _, _ := strings.Cut(s, "/"); reference.Domain(named) != host {
		p.errorf(n, path, "must start with a registry host, got %s, which runtimes read as a Docker Hub namespace; "+
			"a host has a dot or a port, as in mirror.corp or mirror:5000, or is localhost", quote(s))
		return
	}
	*dst = s
}

func (p *parser) secretNames(n *yaml.Node, path string) []string {
	if n.Kind != yaml.SequenceNode {
		p.typeError(n, path, "a list of Secret names")
		return nil
	}
	names := make([]string, 0, len(n.Content))
	for i, item := range n.Content {
		var name string
		p.objectName(deref(item), fmt.Sprintf("%s[%d]", path, i), "Secret", &name)
		if name != "" {
			names = append(names, name)
		}
	}
	return names
}

// objectName checks the name of a Kubernetes object as the API server would.
func (p *parser) objectName(n *yaml.Node, path, kind string, dst *string) {
	s, ok := p.str(n, path)
	if !ok {
		return
	}
	if errs := validation.IsDNS1123Subdomain(s); len(errs) > 0 {
		p.errorf(n, path, "invalid %s name %s: %s", kind, quote(s), strings.Join(errs, "; "))
		return
	}
	*dst = s
}

// nodeSelector checks labels as the API server checks a pod's nodeSelector.
func (p *parser) nodeSelector(n *yaml.Node, path string) map[string]string {
	selector := make(map[string]string)
	p.pairs(n, path, func(key string, _, v *yaml.Node) {
		path := child(path, key)
		if errs := validation.IsQualifiedName(key); len(errs) > 0 {
			p.errorf(v, path, "invalid label key %s: %s", quote(key), strings.Join(errs, "; "))
			return
		}
		s, ok := p.str(v, path)
		if !ok {
			return
		}
		if errs := validation.IsValidLabelValue(s); len(errs) > 0 {
			p.errorf(v, path, "invalid label value %s: %s", quote(s), strings.Join(errs, "; "))
			return
		}
		selector[key] = s
	})
	return selector
}

func (p *parser) retry(n *yaml.Node, path string, dst *Retry) {
	before := p.count()
	r := *dst
	p.fields(n, path, setters{
		"initialDelay": func(v *yaml.Node, path string) { p.duration(v, path, 1, &r.InitialDelay) },
		"maxDelay":     func(v *yaml.Node, path string) { p.duration(v, path, 1, &r.MaxDelay) },
	})
	if p.count() > before {
		return // the comparison below means nothing with an invalid delay
	}
	if r.InitialDelay > r.MaxDelay {
		p.errorf(n, path, "initialDelay %s is longer than maxDelay %s", r.InitialDelay, r.MaxDelay)
		return
	}
	*dst = r
}

func (p *parser) oneOf(n *yaml.Node, path string, dst *string, allowed ...string) {
	s, ok := p.str(n, path)
	if !ok {
		return
	}
	if !slices.Contains(allowed, s) {
		last := len(allowed) - 1
		p.errorf(n, path, "must be %s, got %s", strings.Join(allowed[:last], ", ")+" or "+allowed[last], quote(s))
		return
	}
	*dst = s
}

func (p *parser) intIn(n *yaml.Node, path string, lo, hi int, dst *int) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		p.typeError(n, path, "an integer")
		return
	}
	var v int64
	if n.Decode(&v) != nil || v < int64(lo) || v > int64(hi) {
		p.errorf(n, path, "must be between %d and %d, got %s", lo, hi, show(n.Value))
		return
	}
	*dst = int(v)
}

// duration accepts any scalar that time.ParseDuration takes, so that
// "resync: 300" is told it lacks a unit rather than that it is a number.
func (p *parser) duration(n *yaml.Node, path string, least time.Duration, dst *time.Duration) {
	if n.Kind != yaml.ScalarNode {
		p.typeError(n, path, "a duration such as 90s or 5m")
		return
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		p.errorf(n, path, "must be a duration such as 90s or 5m, got %s", describe(n))
		return
	}
	if d < least {
		if least == 1 { // "at least 1ns" would be an odd way to say it
			p.errorf(n, path, "must be more than 0, got %s", n.Value)
		} else {
			p.errorf(n, path, "must be at least %s, got %s", least, n.Value)
		}
		return
	}
	*dst = d
}

// boolean takes true and false only: YAML 1.1's yes, no, on and off are
// strings to yaml.v3, and meaning them silently would be a guess.
// budget reads diskBudget: {imageGCHighThresholdPercent, imagefsAvailable},
// or none.
func (p *parser) budget(n *yaml.Node, path string, dst *Budget) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" && n.Value == "none" {
		dst.Off = true
		return
	}
	p.fields(n, path, setters{
		"imageGCHighThresholdPercent": func(v *yaml.Node, path string) {
			p.intIn(v, path, 1, 100, &dst.ImageGCHighThresholdPercent)
			dst.setHigh = true
		},
		"imagefsAvailable": func(v *yaml.Node, path string) {
			s, ok := p.str(v, path)
			if !ok {
				return
			}
			if _, err := parseAvailable(s); err != nil {
				p.errorf(v, path, "%v", err)
				return
			}
			dst.ImagefsAvailable, dst.setAvailable = s, true
		},
	})
}

// verify reads verify: {keys: [FILE...]}: at least one key file, each an
// absolute path, as the agent's are files of a mounted ConfigMap and a
// relative path would depend on the directory a command runs in.
func (p *parser) verify(n *yaml.Node, path string, dst *Verify) {
	var keys *yaml.Node
	before := p.count()
	if !p.fields(n, path, setters{"keys": func(v *yaml.Node, _ string) { keys = v }}) {
		return
	}
	path = child(path, "keys")
	if keys == nil && p.count() == before { // not for a misspelt key: that problem says it
		p.errorf(n, path, "required: the public key files (cosign.pub) whose signatures images must have")
	}
	if keys == nil {
		return
	}
	if keys.Kind != yaml.SequenceNode {
		p.typeError(keys, path, "a list of public key files")
		return
	}
	if len(keys.Content) == 0 {
		p.errorf(keys, path, "lists no key: every image would be refused; leave verify out to check no signatures")
		return
	}
	var files []string
	for i, item := range keys.Content {
		item, path := deref(item), fmt.Sprintf("%s[%d]", path, i)
		s, ok := p.str(item, path)
		if !ok {
			continue
		}
		if !filepath.IsAbs(s) {
			p.errorf(item, path, "must be an absolute path, got %s", quote(s))
			continue
		}
		files = append(files, filepath.Clean(s))
	}
	dst.Keys = files
}

// prune reads true, false or dryRun.
func (p *parser) prune(n *yaml.Node, path string, dst *string) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" && n.Value == PruneDryRun {
		*dst = PruneDryRun
		return
	}
	var b bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
		p.typeError(n, path, "true, false or dryRun")
		return
	}
	*dst = PruneOff
	if b {
		*dst = PruneOn
	}
}

func (p *parser) boolean(n *yaml.Node, path string, dst *bool) {
	var b bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
		p.typeError(n, path, "true or false")
		return
	}
	*dst = b
}

// str returns the value of a string scalar. Other scalars are not
// converted: `gpu: true` in a nodeSelector is a bool, and Kubernetes would
// refuse it too.
func (p *parser) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		p.typeError(n, path, "a string")
		return "", false
	}
	return n.Value, true
}

// setters decode the values of a mapping's known keys, by key.
type setters map[string]func(v *yaml.Node, path string)

// fields walks a mapping whose keys are known: set has a function for each,
// and any other key is a problem. A null value is taken as the key left
// out, as Kubernetes takes it. It reports whether n is a mapping.
func (p *parser) fields(n *yaml.Node, path string, set setters) bool {
	if p.known != nil {
		p.known(path, slices.Sorted(maps.Keys(set)))
	}
	return p.pairs(n, path, func(key string, k, v *yaml.Node) {
		f, ok := set[key]
		if !ok {
			p.errorf(k, child(path, key), "unknown key%s", suggest(key, set))
			return
		}
		if !isNull(v) {
			f(v, child(path, key))
		}
	})
}

// pairs calls f for each key and value of the mapping n, with aliases
// resolved; keys that are not scalars or are repeated are problems, not
// passed to f. It reports whether n is a mapping.
func (p *parser) pairs(n *yaml.Node, path string, f func(key string, k, v *yaml.Node)) bool {
	if n.Kind != yaml.MappingNode {
		p.typeError(n, path, "a mapping")
		return false
	}
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		key := deref(k)
		if key.Kind != yaml.ScalarNode {
			p.errorf(k, path, "keys must be strings, got %s", describe(key))
			continue
		}
		if first, dup := seen[key.Value]; dup {
			p.errorf(k, child(path, key.Value), "duplicate key, first at line %d", first)
			continue
		}
		seen[key.Value] = k.Line
		f(key.Value, k, v)
	}
	return true
}

func deref(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode {
		return n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

var plainKey = regexp.MustCompile(`^[A-Za-z0-9][-A-Za-z0-9_./]{0,62}$`)

// child is the path of key in the mapping at path, like Kubernetes field
// paths; keys that would be hard to read there are quoted.
func child(path, key string) string {
	if !plainKey.MatchString(key) {
		return path + "[" + quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// suggest names the known key that a misspelled one most likely means.
func suggest(key string, known setters) string {
	if len(key) > 32 {
		return "" // not a typo; and distance is quadratic
	}
	best, bestDist := "", 3
	for k := range known {
		d := distance(strings.ToLower(key), strings.ToLower(k))
		if d < bestDist || d == bestDist && k < best {
			best, bestDist = k, d
		}
	}
	if best == "" {
		return ""
	}
	return "; did you mean " + best + "?"
}

// distance is the Levenshtein distance between a and b, in bytes.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (p *parser) typeError(n *yaml.Node, path, want string) {
	p.errorf(n, path, "must be %s, got %s", want, describe(n))
}

// describe names what a node is, for "must be X, got Y".
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	switch tag := n.ShortTag(); tag {
	case "!!null":
		return "null"
	case "!!str":
		return "string " + quote(n.Value)
	case "!!bool":
		return "boolean " + show(n.Value)
	case "!!int":
		return "integer " + show(n.Value)
	case "!!float":
		return "number " + show(n.Value)
	default:
		return tag + " " + quote(n.Value)
	}
}

var plainValue = regexp.MustCompile(`^[-+._A-Za-z0-9]{1,32}$`)

// show is a value as written when that is clear enough, else quoted.
func show(s string) string {
	if plainValue.MatchString(s) {
		return s
	}
	return quote(s)
}

// quote quotes a value for a message, shortened: the value may be long.
func quote(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "..."
}

func (p *parser) errorf(n *yaml.Node, path, format string, args ...any) {
	if path == "" {
		path = "top level"
	}
	p.add(n.Line, path+": "+fmt.Sprintf(format, args...))
}

var oneLine = strings.NewReplacer("\n", `\n`, "\r", `\r`)

func (p *parser) add(line int, msg string) {
	if len(p.problems) == maxProblems {
		p.omitted++
		return
	}
	// Messages quote values, but a library's error may echo a whole one.
	if len(msg) > maxMsgBytes {
		msg = strings.ToValidUTF8(msg[:maxMsgBytes], "") + "..."
	}
	p.problems = append(p.problems, Problem{File: p.file, Line: line, Msg: oneLine.Replace(msg)})
}

func (p *parser) count() int { return len(p.problems) + p.omitted }

func (p *parser) err() error {
	if len(p.problems) == 0 {
		return nil
	}
	problems := slices.Clone(p.problems)
	slices.SortStableFunc(problems, func(a, b Problem) int { return a.Line - b.Line })
	if p.omitted > 0 {
		problems = append(problems, Problem{File: p.file, Msg: fmt.Sprintf("and %d more problems", p.omitted)})
	}
	return &Error{Problems: problems}
}
