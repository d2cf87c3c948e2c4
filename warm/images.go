// Package warm adds an image to the agent's ConfigMap and waits until the
// nodes that run the agent report it present: `preloader warm`.
package warm

import (
	"bytes"
	"fmt"

	"gopkg.in/yaml.v3"

	"github.com/kube-preloader/kube-preloader/preload/config"
)

// ConfigKey is the ConfigMap key the agent reads its config from.
const ConfigKey = "images.yaml"

// Image is the image to add: Ref as the user wrote it, which is what goes
// into images.yaml, and Norm, how entries are compared, so that nginx:1
// and docker.io/library/nginx:1 are one image.
type Image struct {
	Ref, Norm string
}

// ParseImage checks and normalizes an image reference.
func ParseImage(ref string) (Image, error) {
	norm, err := config.NormalizeRef(ref)
	if err != nil {
		return Image{}, err
	}
	return Image{Ref: ref, Norm: norm}, nil
}

// AddImage returns images.yaml with an entry {image: img.Ref} appended to
// the images list, or changed=false when an entry already names the image
// (compared normalized). It edits the YAML node tree, so comments, key
// order, flow/quote styles and every other entry stay as they were; the
// re-encoding indents by two spaces and drops blank lines.
func AddImage(data string, img Image) (string, bool, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(data), &doc); err != nil {
		return "", false, err
	}
	images, err := imagesList(&doc)
	if err != nil {
		return "", false, err
	}
	for _, item := range images.Content {
		if entryNames(item, img.Norm) {
			return data, false, nil
		}
	}
	entry := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: images.Style & yaml.FlowStyle, Content: []*yaml.Node{
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: "image"},
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: img.Ref},
	}}
	images.Content = append(images.Content, entry)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return "", false, err
	}
	if err := enc.Close(); err != nil {
		return "", false, err
	}
	return buf.String(), true, nil
}

// imagesList is the document's images sequence, made where the document,
// its mapping or the list is empty or missing.
func imagesList(doc *yaml.Node) (*yaml.Node, error) {
	if doc.Kind == 0 {
		*doc = yaml.Node{Kind: yaml.DocumentNode, HeadComment: doc.HeadComment}
	}
	if doc.Kind != yaml.DocumentNode {
		return nil, fmt.Errorf("not a YAML document")
	}
	if len(doc.Content) == 0 {
		doc.Content = []*yaml.Node{{Kind: yaml.MappingNode, Tag: "!!map"}}
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		*root = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", HeadComment: root.HeadComment, LineComment: root.LineComment, FootComment: root.FootComment}
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the config must be a mapping with an images list", root.Line)
	}
	var images *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "images" {
			images = root.Content[i+1]
			break
		}
	}
	if images == nil {
		images = &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		key := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "images"}
		root.Content = append([]*yaml.Node{key, images}, root.Content...)
	}
	if images.Kind == yaml.ScalarNode && images.Tag == "!!null" {
		*images = yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", LineComment: images.LineComment}
	}
	if images.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("line %d: images must be a list", images.Line)
	}
	return images, nil
}

// entryNames reports whether an images entry is the image norm.
func entryNames(item *yaml.Node, norm string) bool {
	var v string
	switch item.Kind {
	case yaml.ScalarNode:
		v = item.Value
	case yaml.MappingNode:
		for i := 0; i+1 < len(item.Content); i += 2 {
			if item.Content[i].Value == "image" {
				v = item.Content[i+1].Value
			}
		}
	}
	if v == "" {
		return false
	}
	n, err := config.NormalizeRef(v)
	return err == nil && n == norm
}

// Lists reports whether images.yaml has an entry for the image.
func Lists(data string, img Image) bool {
	var doc struct {
		Images []yaml.Node `yaml:"images"`
	}
	if err := yaml.Unmarshal([]byte(data), &doc); err != nil {
		return false
	}
	for i := range doc.Images {
		if entryNames(&doc.Images[i], img.Norm) {
			return true
		}
	}
	return false
}

// sameImage reports whether s, as a node's status names an image, is the
// image norm.
func sameImage(s, norm string) bool {
	if s == norm {
		return true
	}
	n, err := config.NormalizeRef(s)
	return err == nil && n == norm
}
