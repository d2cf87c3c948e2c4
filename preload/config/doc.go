// Package config is the preloader's config contract: the images.yaml users
// write, in the agent's ConfigMap (key images.yaml) or the file given to
// `preloader once`, and what it means.
//
// [Parse] and [Load] read one YAML document into a [Config] with every key
// the file leaves out at its default ([Defaults]). A config they refuse is
// an [*Error] that lists every problem found, in the order of the file, each
// as "file:line: message", so that a user fixes them all in one edit;
// yaml.v3's own syntax errors are brought to the same form (yamlline.go).
// Bounds on size, images and alias expansion keep a broken or hostile
// config cheap for the node.
//
// Image references are normalized the way the kubelet passes them to the
// runtime ([NormalizeRef]), so that what the preloader makes present is what
// a pod's image names; [MirrorRef] is where an entry with a mirror is pulled
// from. [Hash] identifies a config's bytes, so that a node's status can say
// which config it describes.
//
// docs/reference/config.md documents every key; configdoc_test.go holds it
// equal to the parser's keys, defaults and bounds.
package config
