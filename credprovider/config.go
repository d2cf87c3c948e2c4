// Package credprovider runs the kubelet's credential provider plugins the
// way the kubelet runs them, so that the preloader sends a registry the
// credentials the node's kubelet would send. It is a port of the kubelet's
// k8s.io/kubernetes pkg/credentialprovider/plugin (config.go, plugin.go,
// plugins.go); k8s.io/kubernetes is not a library, hence the copy. The wire
// and config types are k8s.io/kubelet's.
//
// Where this differs from the kubelet, on purpose:
//   - a configured plugin binary that is missing fails the images its
//     provider matches, when they are looked up; the kubelet refuses to
//     start;
//   - a plugin's failure is an error on the image (the kubelet logs it and
//     pulls without that provider's credentials), and the error says how
//     the plugin failed (exit status, timeout, what was wrong with its
//     answer) but never what it printed: stdout and stderr may hold
//     credentials, so only their sizes are reported;
//   - concurrent lookups of different images that share a cache key run
//     the plugin once: the kubelet collapses only lookups of the same
//     image, since it learns the cache key type from the answer.
package credprovider

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
	kubeletv1 "k8s.io/kubelet/config/v1"
	kubeletv1alpha1 "k8s.io/kubelet/config/v1alpha1"
	sigsjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/kube-preloader/kube-preloader/preload/config"
)

// The config's group, and the versions of it the kubelet reads a
// CredentialProviderConfig in.
const (
	configGroup = "kubelet.config.k8s.io"
	configKind  = "CredentialProviderConfig"
)

var configVersions = []string{configGroup + "/v1", configGroup + "/v1beta1", configGroup + "/v1alpha1"}

// The plugin API's versions, one of which each provider names.
const (
	apiV1       = "credentialprovider.kubelet.k8s.io/v1"
	apiV1beta1  = "credentialprovider.kubelet.k8s.io/v1beta1"
	apiV1alpha1 = "credentialprovider.kubelet.k8s.io/v1alpha1"
)

var apiVersions = []string{apiV1, apiV1alpha1, apiV1beta1} // sorted, as the kubelet lists them

// Config is the providers of one CredentialProviderConfig file or
// directory, in the kubelet's order.
type Config struct {
	Providers []Provider
}

// Provider is one configured plugin.
type Provider struct {
	// Name is the plugin binary's file name in the bin dir.
	Name        string
	MatchImages []string
	// DefaultCacheDuration is how long an answer without its own
	// cacheDuration is cached; 0 means not at all.
	DefaultCacheDuration time.Duration
	// APIVersion is the credentialprovider.kubelet.k8s.io version the
	// plugin speaks.
	APIVersion string
	Args       []string
	// Env is added to the agent's environment (later entries win).
	Env []EnvVar
	// TokenAttributes is set for a provider that wants a service account
	// token (v1 configs only).
	TokenAttributes *TokenAttributes
	// File and Line are where the provider is configured.
	File string
	Line int
}

// EnvVar is one of a provider's env entries. Its value may be a secret:
// nothing here prints it.
type EnvVar struct {
	Name, Value string
}

// TokenAttributes is what a service-account-token provider asks for.
type TokenAttributes struct {
	ServiceAccountTokenAudience          string
	RequireServiceAccount                bool
	RequiredServiceAccountAnnotationKeys []string
	OptionalServiceAccountAnnotationKeys []string
	// CacheType is ServiceAccount or Token.
	CacheType string
}

// ConfigError is every problem found in a CredentialProviderConfig.
type ConfigError struct {
	Problems []config.Problem
}

func (e *ConfigError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return "credential provider config: " + strings.Join(lines, "; ")
}

// maxConfigBytes bounds a config file; real ones are a few hundred bytes.
const maxConfigBytes = 1 << 20

// Load reads a CredentialProviderConfig file, or a directory of them as
// the kubelet does: its *.json, *.yaml and *.yml files in lexical order,
// at least one, their providers appended, a provider name used twice an
// error.
func Load(path string) (*Config, error) {
	if path == "" {
		return nil, errors.New("credential provider config: path is empty")
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("credential provider config: %w", err)
	}
	files := []string{path}
	if info.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("credential provider config: %w", err)
		}
		files = files[:0]
		for _, e := range entries {
			switch filepath.Ext(e.Name()) {
			case ".json", ".yaml", ".yml":
				if !e.IsDir() {
					files = append(files, filepath.Join(path, e.Name()))
				}
			}
		}
		slices.Sort(files)
		if len(files) == 0 {
			return nil, fmt.Errorf("credential provider config: no *.json, *.yaml or *.yml file in directory %s", path)
		}
	}
	cfg := &Config{}
	var problems []config.Problem
	first := map[string]Provider{}
	for _, f := range files {
		data, err := readBounded(f)
		if err != nil {
			return nil, fmt.Errorf("credential provider config: %w", err)
		}
		providers, err := Parse(f, data)
		var ce *ConfigError
		switch {
		case errors.As(err, &ce):
			problems = append(problems, ce.Problems...)
			continue
		case err != nil:
			return nil, err
		}
		for _, p := range providers {
			if prev, dup := first[p.Name]; dup {
				problems = append(problems, config.Problem{File: p.File, Line: p.Line,
					Msg: fmt.Sprintf("provider name %q is used twice, first at %s:%d", p.Name, prev.File, prev.Line)})
				continue
			}
			first[p.Name] = p
			cfg.Providers = append(cfg.Providers, p)
		}
	}
	if len(problems) > 0 {
		return nil, &ConfigError{problems}
	}
	return cfg, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("%s: larger than %d MiB", path, maxConfigBytes>>20)
	}
	return data, nil
}

// Parse reads one CredentialProviderConfig document (YAML or JSON) and
// validates it as the kubelet does: strictly (unknown and duplicate
// fields are errors, field names match case-sensitively), then the
// kubelet's rules for each provider. file names the source in problems.
func Parse(file string, data []byte) ([]Provider, error) {
	p := &parser{file: file}
	var root yaml.Node
	if yaml.Unmarshal(data, &root) == nil {
		p.root = &root // only for line numbers; a failure here shows below
	}
	providers := p.parse(data)
	if len(p.problems) > 0 {
		return nil, &ConfigError{p.problems}
	}
	return providers, nil
}

type parser struct {
	file     string
	root     *yaml.Node
	problems []config.Problem
}

func (p *parser) add(path, format string, args ...any) {
	p.problems = append(p.problems, config.Problem{File: p.file, Line: p.line(path), Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) parse(data []byte) []Provider {
	js, err := sigsyaml.YAMLToJSONStrict(data)
	if err != nil {
		// yaml's messages carry a line and what was expected, not values.
		p.add("", "%s", strings.TrimPrefix(err.Error(), "error converting YAML to JSON: "))
		return nil
	}
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &meta); err != nil {
		p.add("", "not a CredentialProviderConfig object")
		return nil
	}
	switch {
	case meta.APIVersion == "":
		p.add("", "apiVersion is missing (want one of %s)", strings.Join(configVersions, ", "))
		return nil
	case !slices.Contains(configVersions, meta.APIVersion):
		p.add("apiVersion", "apiVersion %q is not one the kubelet reads (%s)", meta.APIVersion, strings.Join(configVersions, ", "))
		return nil
	case meta.Kind != configKind:
		p.add("kind", "kind %q, want %s", meta.Kind, configKind)
		return nil
	}
	// v1beta1 and v1alpha1 have the same fields, without tokenAttributes;
	// k8s.io/kubelet/config/v1beta1 is not used as its package links the
	// kubelet's whole KubeletConfiguration and component-base.
	var cps []kubeletv1.CredentialProvider
	if meta.APIVersion == configGroup+"/v1" {
		var c kubeletv1.CredentialProviderConfig
		if !p.decode(js, &c) {
			return nil
		}
		cps = c.Providers
	} else {
		var c kubeletv1alpha1.CredentialProviderConfig
		if !p.decode(js, &c) {
			return nil
		}
		for _, cp := range c.Providers {
			cps = append(cps, kubeletv1.CredentialProvider{
				Name: cp.Name, MatchImages: cp.MatchImages, DefaultCacheDuration: cp.DefaultCacheDuration,
				APIVersion: cp.APIVersion, Args: cp.Args, Env: envV1(cp.Env),
			})
		}
	}
	p.validate(cps)
	providers := make([]Provider, len(cps))
	for i, cp := range cps {
		providers[i] = fromV1(cp)
		providers[i].File = p.file
		providers[i].Line = p.line(fmt.Sprintf("providers[%d]", i))
	}
	return providers
}

func envV1(env []kubeletv1alpha1.ExecEnvVar) []kubeletv1.ExecEnvVar {
	var out []kubeletv1.ExecEnvVar
	for _, e := range env {
		out = append(out, kubeletv1.ExecEnvVar{Name: e.Name, Value: e.Value})
	}
	return out
}

func fromV1(cp kubeletv1.CredentialProvider) Provider {
	out := Provider{
		Name:        cp.Name,
		MatchImages: cp.MatchImages,
		APIVersion:  cp.APIVersion,
		Args:        cp.Args,
	}
	if cp.DefaultCacheDuration != nil {
		out.DefaultCacheDuration = cp.DefaultCacheDuration.Duration
	}
	for _, e := range cp.Env {
		out.Env = append(out.Env, EnvVar{e.Name, e.Value})
	}
	if t := cp.TokenAttributes; t != nil {
		out.TokenAttributes = &TokenAttributes{
			ServiceAccountTokenAudience:          t.ServiceAccountTokenAudience,
			RequireServiceAccount:                t.RequireServiceAccount != nil && *t.RequireServiceAccount,
			RequiredServiceAccountAnnotationKeys: t.RequiredServiceAccountAnnotationKeys,
			OptionalServiceAccountAnnotationKeys: t.OptionalServiceAccountAnnotationKeys,
			CacheType:                            string(t.CacheType),
		}
	}
	return out
}

// typeError is encoding/json's type mismatch. Its value part ("number
// 12345") is left out: an env value may be a secret.
var typeError = regexp.MustCompile(`cannot unmarshal (\w+).* into Go struct field [^ .]+\.(\S+) of type (\S+)`)

// decode is the kubelet's strict decoding; problems name fields, never
// values.
func (p *parser) decode(js []byte, into any) bool {
	strict, err := sigsjson.UnmarshalStrict(js, into)
	if err != nil {
		if m := typeError.FindStringSubmatch(err.Error()); m != nil {
			p.problems = append(p.problems, config.Problem{File: p.file, Line: p.mismatchLine(m[2], m[3]), Msg: fmt.Sprintf("%s: a %s, want %s", m[2], m[1], m[3])})
		} else {
			p.add("", "not a CredentialProviderConfig object")
		}
		return false
	}
	for _, e := range strict {
		var fe sigsjson.FieldError
		if errors.As(e, &fe) {
			kind, _, _ := strings.Cut(e.Error(), " \"")
			p.add(fe.FieldPath(), "%s %s", kind, fe.FieldPath())
			continue
		}
		p.add("", "%v", e)
	}
	return len(strict) == 0
}

// validate is the kubelet's validateCredentialProviderConfig, with the
// service-account-token feature on (its default since 1.34).
func (p *parser) validate(providers []kubeletv1.CredentialProvider) {
	if len(providers) == 0 {
		p.add("providers", "no providers (at least 1 is required)")
	}
	seen := map[string]bool{}
	for i, pr := range providers {
		at := fmt.Sprintf("providers[%d]", i)
		switch {
		case pr.Name == "":
			p.add(at, "%s.name is required", at)
		case strings.Contains(pr.Name, "/"), strings.Contains(pr.Name, " "), pr.Name == ".", pr.Name == "..":
			p.add(at+".name", "%s.name %q: must be a file name (no '/', no spaces, not . or ..)", at, pr.Name)
		case seen[pr.Name]:
			p.add(at+".name", "%s.name %q: duplicate provider name", at, pr.Name)
		}
		seen[pr.Name] = true
		switch {
		case pr.APIVersion == "":
			p.add(at, "%s.apiVersion is required (one of %s)", at, strings.Join(apiVersions, ", "))
		case !slices.Contains(apiVersions, pr.APIVersion):
			p.add(at+".apiVersion", "%s.apiVersion %q: not one of %s", at, pr.APIVersion, strings.Join(apiVersions, ", "))
		}
		if len(pr.MatchImages) == 0 {
			p.add(at, "%s.matchImages: at least 1 item is required", at)
		}
		for j, m := range pr.MatchImages {
			if _, err := url.Parse("https://" + m); err != nil {
				p.add(fmt.Sprintf("%s.matchImages[%d]", at, j), "%s.matchImages[%d] %q: invalid", at, j, m)
			}
		}
		switch {
		case pr.DefaultCacheDuration == nil:
			p.add(at, "%s.defaultCacheDuration is required", at)
		case pr.DefaultCacheDuration.Duration < 0:
			p.add(at+".defaultCacheDuration", "%s.defaultCacheDuration must be 0 or more", at)
		}
		if pr.TokenAttributes != nil {
			p.validateToken(at+".tokenAttributes", pr.APIVersion, pr.TokenAttributes)
		}
	}
}

func (p *parser) validateToken(at, apiVersion string, t *kubeletv1.ServiceAccountTokenAttributes) {
	if t.ServiceAccountTokenAudience == "" {
		p.add(at, "%s.serviceAccountTokenAudience is required", at)
	}
	if t.RequireServiceAccount == nil {
		p.add(at, "%s.requireServiceAccount is required", at)
	}
	if apiVersion != apiV1 {
		p.add(at, "%s: only for apiVersion %s", at, apiV1)
	}
	if t.RequireServiceAccount != nil && !*t.RequireServiceAccount && len(t.RequiredServiceAccountAnnotationKeys) > 0 {
		p.add(at, "%s.requiredServiceAccountAnnotationKeys: requireServiceAccount cannot be false when they are set", at)
	}
	for _, list := range []struct {
		name string
		keys []string
	}{{"requiredServiceAccountAnnotationKeys", t.RequiredServiceAccountAnnotationKeys}, {"optionalServiceAccountAnnotationKeys", t.OptionalServiceAccountAnnotationKeys}} {
		seen := map[string]bool{}
		for j, k := range list.keys {
			path := fmt.Sprintf("%s.%s[%d]", at, list.name, j)
			if msg := qualifiedName(strings.ToLower(k)); msg != "" {
				p.add(path, "%s %q: %s", path, k, msg)
			}
			if seen[k] {
				p.add(path, "%s %q: duplicate", path, k)
			}
			seen[k] = true
		}
	}
	for _, k := range t.RequiredServiceAccountAnnotationKeys {
		if slices.Contains(t.OptionalServiceAccountAnnotationKeys, k) {
			p.add(at, "%s: annotation key %q is both required and optional", at, k)
		}
	}
	switch t.CacheType {
	case "":
		p.add(at, "%s.cacheType is required (ServiceAccount or Token)", at)
	case kubeletv1.ServiceAccountServiceAccountTokenCacheType, kubeletv1.TokenServiceAccountTokenCacheType:
	default:
		p.add(at+".cacheType", "%s.cacheType %q: not ServiceAccount or Token", at, t.CacheType)
	}
}

var (
	qualifiedNamePart = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
	dnsSubdomain      = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// qualifiedName is apimachinery's IsQualifiedName ("example.com/name" or
// "name"), the rule for annotation keys; "" when k is one.
func qualifiedName(k string) string {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	} else if prefix == "" || len(prefix) > 253 || !dnsSubdomain.MatchString(prefix) {
		return "prefix must be a DNS subdomain"
	}
	if name == "" || len(name) > 63 || !qualifiedNamePart.MatchString(name) {
		return "must be a qualified name (alphanumerics, '-', '_' or '.', at most 63, alphanumeric at both ends, optionally prefixed by a DNS subdomain and '/')"
	}
	return ""
}

// line is where path ("providers[1].matchImages[0]") is in the document,
// found in the YAML tree (JSON is YAML); the line of the nearest node that
// exists, 0 without a tree.
func (p *parser) line(path string) int {
	if path == "" || p.root == nil || len(p.root.Content) == 0 {
		return 0
	}
	n := p.root.Content[0]
	line := n.Line
	for _, seg := range splitPath(path) {
		next, keyLine := child(n, seg)
		if next == nil {
			if keyLine > 0 {
				return keyLine
			}
			return line
		}
		n, line = next, keyLine
	}
	return line
}

func splitPath(path string) []string {
	var out []string
	for _, part := range strings.Split(path, ".") {
		if part == "" {
			continue
		}
		name, rest, _ := strings.Cut(part, "[")
		if name != "" {
			out = append(out, name)
		}
		for rest != "" {
			idx, after, _ := strings.Cut(rest, "]")
			out = append(out, "["+idx+"]")
			_, rest, _ = strings.Cut(after, "[")
		}
	}
	return out
}

// mismatchLine is the line of the first value at path (encoding/json's,
// without sequence indices: "providers.env.value") that is not of type
// want, 0 if none is found.
func (p *parser) mismatchLine(path, want string) int {
	if p.root == nil || len(p.root.Content) == 0 {
		return 0
	}
	var find func(n *yaml.Node, segs []string) int
	find = func(n *yaml.Node, segs []string) int {
		for n.Kind == yaml.AliasNode {
			n = n.Alias
		}
		if n.Kind == yaml.SequenceNode && (len(segs) > 0 || !strings.HasPrefix(want, "[]")) {
			for _, item := range n.Content {
				if l := find(item, segs); l > 0 {
					return l
				}
			}
			return 0
		}
		if len(segs) == 0 {
			ok := false
			switch {
			case strings.HasPrefix(want, "[]"):
				ok = n.Kind == yaml.SequenceNode
			case want == "string":
				ok = n.Kind == yaml.ScalarNode && n.Tag == "!!str"
			case strings.HasPrefix(want, "map"), strings.HasPrefix(want, "v1."):
				ok = n.Kind == yaml.MappingNode
			}
			if ok {
				return 0
			}
			return n.Line
		}
		next, _ := child(n, segs[0])
		if next == nil {
			return 0
		}
		return find(next, segs[1:])
	}
	return find(p.root.Content[0], strings.Split(path, "."))
}

// child is n's value at seg (a key, or "[i]") and the line of its key or
// item.
func child(n *yaml.Node, seg string) (*yaml.Node, int) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if idx, ok := strings.CutPrefix(seg, "["); ok {
		i, err := strconv.Atoi(strings.TrimSuffix(idx, "]"))
		if n.Kind != yaml.SequenceNode || err != nil || i < 0 || i >= len(n.Content) {
			return nil, 0
		}
		return n.Content[i], n.Content[i].Line
	}
	if n.Kind != yaml.MappingNode {
		return nil, 0
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == seg {
			return n.Content[i+1], n.Content[i].Line
		}
	}
	return nil, 0
}
