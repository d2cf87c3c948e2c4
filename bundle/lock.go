package bundle

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	"gopkg.in/yaml.v3"

	"github.com/kube-preloader/kube-preloader/yamlpos"
)

// LockVersion is the version of the lock format this preloader writes and
// reads.
const LockVersion = 1

// LockEntry is the name of the lock inside a bundle, beside index.json.
const LockEntry = "preloader.lock"

// Lock records what a bundle holds: for each image of the config, the
// digest its reference resolved to and, per platform, the manifest,
// config and layers. A later run reads it to fetch exactly those digests
// (--lock), or to leave out the layers a bundle already carried (--since).
type Lock struct {
	Version int `yaml:"version" json:"version"`
	// Platforms are the platforms asked for: os/arch[/variant], or all.
	Platforms []string `yaml:"platforms" json:"platforms"`
	// Since is the lock of the bundle this one is a delta of.
	Since *LockSince `yaml:"since,omitempty" json:"since,omitempty"`
	// Runtime is the node's runtime the images were read from, for a
	// bundle of what a node holds.
	Runtime *LockRuntime `yaml:"runtime,omitempty" json:"runtime,omitempty"`
	Images  []LockImage  `yaml:"images" json:"images"`
}

// LockRuntime is a node's container runtime as its CRI names it.
type LockRuntime struct {
	Name    string `yaml:"name" json:"name"`
	Version string `yaml:"version" json:"version"`
}

// LockSince names the older bundle's lock by file name and digest.
type LockSince struct {
	File   string        `yaml:"file" json:"file"`
	Digest digest.Digest `yaml:"digest" json:"digest"`
}

// LockImage is one image of the config.
type LockImage struct {
	// Name is the reference pods use.
	Name string `yaml:"name" json:"name"`
	// From is where it was fetched: the registry reference (a mirror's
	// when the entry has one), or runtime.
	From string `yaml:"from" json:"from"`
	// Digest, MediaType and Size describe what the reference resolved
	// to: an index or a manifest.
	Digest    digest.Digest  `yaml:"digest" json:"digest"`
	MediaType string         `yaml:"mediaType" json:"mediaType"`
	Size      int64          `yaml:"size" json:"size"`
	Platforms []LockPlatform `yaml:"platforms" json:"platforms"`
	// Signatures are the cosign tags carried beside the image when the
	// bundle checked signatures (--verify-key): the signature, and the
	// attestations and SBOM where the registry had them.
	Signatures []LockTag `yaml:"signatures,omitempty" json:"signatures,omitempty"`
}

// LockTag is a tag cosign keeps beside an image (sha256-<hex>.sig), with
// the manifest the bundle carries for it.
type LockTag struct {
	Tag    string        `yaml:"tag" json:"tag"`
	Digest digest.Digest `yaml:"digest" json:"digest"`
	Size   int64         `yaml:"size" json:"size"`
}

// LockPlatform is one platform's manifest of an image and what it names.
type LockPlatform struct {
	Platform string     `yaml:"platform" json:"platform"`
	Manifest LockBlob   `yaml:"manifest,flow" json:"manifest"`
	Config   LockBlob   `yaml:"config,flow" json:"config"`
	Layers   []LockBlob `yaml:"layers" json:"layers"`
}

// LockBlob is a blob by digest and size.
type LockBlob struct {
	Digest digest.Digest `yaml:"digest" json:"digest"`
	Size   int64         `yaml:"size" json:"size"`
}

// Marshal is the lock as the YAML file it is written to.
func (l *Lock) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("# Written by preloader bundle: what the bundle holds, by digest.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(flowLayers(l)); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// flowLayers is the lock as a YAML node with one line per layer.
func flowLayers(l *Lock) *yaml.Node {
	var n yaml.Node
	if err := n.Encode(l); err != nil {
		panic(fmt.Sprintf("bundle: lock does not encode: %v", err)) // plain structs always do
	}
	var walk func(*yaml.Node, string)
	walk = func(n *yaml.Node, key string) {
		if (key == "layers" || key == "signatures") && n.Kind == yaml.SequenceNode {
			for _, c := range n.Content {
				c.Style = yaml.FlowStyle
			}
		}
		for i, c := range n.Content {
			k := ""
			if n.Kind == yaml.MappingNode && i%2 == 1 {
				k = n.Content[i-1].Value
			}
			walk(c, k)
		}
	}
	walk(&n, "")
	return &n
}

// Layers is the set of layer digests the lock's images have.
func (l *Lock) Layers() map[digest.Digest]bool {
	set := map[digest.Digest]bool{}
	for _, img := range l.Images {
		for _, p := range img.Platforms {
			for _, b := range p.Layers {
				set[b.Digest] = true
			}
		}
	}
	return set
}

// Image is the lock's entry for name, if it has one.
func (l *Lock) Image(name string) (LockImage, bool) {
	i := slices.IndexFunc(l.Images, func(img LockImage) bool { return img.Name == name })
	if i < 0 {
		return LockImage{}, false
	}
	return l.Images[i], true
}

// Match says which of names the lock lacks, and which of its images names
// lacks: a lock rebuilds exactly the config it was written for.
func (l *Lock) Match(names []string) error {
	var missing, extra []string
	for _, n := range names {
		if _, ok := l.Image(n); !ok {
			missing = append(missing, n)
		}
	}
	for _, img := range l.Images {
		if !slices.Contains(names, img.Name) {
			extra = append(extra, img.Name)
		}
	}
	var errs []error
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("the lock has no entry for %s (write a new lock without --lock to add it)", strings.Join(missing, ", ")))
	}
	if len(extra) > 0 {
		errs = append(errs, fmt.Errorf("the lock has %s, which the config does not list", strings.Join(extra, ", ")))
	}
	return errors.Join(errs...)
}

// LoadLock reads a lock file and its digest. Errors name the file and,
// where the YAML says, the line.
func LoadLock(path string) (*Lock, digest.Digest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	l, err := ParseLock(data)
	if err != nil {
		return nil, "", fmt.Errorf("%s:%w", path, err)
	}
	return l, digest.FromBytes(data), nil
}

var (
	yamlLine     = regexp.MustCompile(`^\s*line (\d+): `)
	unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)
)

// ParseLock reads a lock. An error starts with the line it is on and a
// colon ("12: ..."), or a colon alone when no line applies.
func ParseLock(data []byte) (*Lock, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := yamlpos.SyntaxError(err, data)
		if line == 0 {
			return nil, fmt.Errorf(" %s", msg)
		}
		return nil, fmt.Errorf("%d: %s", line, msg)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var l Lock
	if err := dec.Decode(&l); err != nil {
		// Type errors, one a line: "line N: msg".
		msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n")
		// yaml.v3 names Go types ("field x not found in type bundle.LockImage"): say it in the lock's words.
		msg = unknownField.ReplaceAllString(msg, "unknown field $1")
		if m := yamlLine.FindStringSubmatchIndex(msg); m != nil {
			return nil, fmt.Errorf("%s: %s", msg[m[2]:m[3]], strings.TrimSpace(msg[m[1]:]))
		}
		return nil, fmt.Errorf(" %s", msg)
	}
	if err := l.validate(lines(&doc)); err != nil {
		return nil, err
	}
	return &l, nil
}

// lockLines are the lines of a lock's parts, for messages.
type lockLines struct {
	top    int
	fields map[string]int // top-level key -> line
	images []int
}

func lines(doc *yaml.Node) lockLines {
	ll := lockLines{top: 1, fields: map[string]int{}}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return ll
	}
	m := doc.Content[0]
	ll.top = m.Line
	for i := 0; i+1 < len(m.Content); i += 2 {
		ll.fields[m.Content[i].Value] = m.Content[i].Line
		if m.Content[i].Value == "images" {
			for _, img := range m.Content[i+1].Content {
				ll.images = append(ll.images, img.Line)
			}
		}
	}
	return ll
}

func (l *Lock) validate(ll lockLines) error {
	at := func(line int, format string, args ...any) error {
		return fmt.Errorf("%d: %s", line, fmt.Sprintf(format, args...))
	}
	field := func(name string) int {
		if n, ok := ll.fields[name]; ok {
			return n
		}
		return ll.top
	}
	if l.Version != LockVersion {
		return at(field("version"), "version %d: this preloader reads lock version %d", l.Version, LockVersion)
	}
	if len(l.Platforms) == 0 {
		return at(field("platforms"), "platforms: none listed")
	}
	if l.Since != nil {
		if err := l.Since.Digest.Validate(); err != nil {
			return at(field("since"), "since.digest: %v", err)
		}
	}
	seen := map[string]bool{}
	for i, img := range l.Images {
		line := ll.top
		if i < len(ll.images) {
			line = ll.images[i]
		}
		switch {
		case img.Name == "":
			return at(line, "image %d has no name", i+1)
		case seen[img.Name]:
			return at(line, "%s is listed twice", img.Name)
		case img.MediaType == "":
			return at(line, "%s: no mediaType", img.Name)
		case len(img.Platforms) == 0:
			return at(line, "%s: no platforms", img.Name)
		}
		seen[img.Name] = true
		if err := img.Digest.Validate(); err != nil {
			return at(line, "%s: digest %q: %v", img.Name, img.Digest, err)
		}
		for _, p := range img.Platforms {
			blobs := append([]LockBlob{p.Manifest, p.Config}, p.Layers...)
			for _, b := range blobs {
				if err := b.Digest.Validate(); err != nil {
					return at(line, "%s: %s: digest %q: %v", img.Name, p.Platform, b.Digest, err)
				}
			}
		}
		for _, t := range img.Signatures {
			if err := t.Digest.Validate(); err != nil {
				return at(line, "%s: signature %s: digest %q: %v", img.Name, t.Tag, t.Digest, err)
			}
		}
	}
	return nil
}
