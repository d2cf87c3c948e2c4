// Package keyring is the registry credentials keyring. Which credentials go with which image must
// be exactly what the kubelet would send, or an image we report present could
// have been pulled with credentials the kubelet never uses (or missed with
// credentials it does). The matching below is a port of the kubelet's
// k8s.io/kubernetes pkg/credentialprovider/keyring.go (BasicDockerKeyring.Add
// and Lookup, isDefaultRegistryMatch, ParseSchemelessURL, SplitURL,
// URLsMatch), the parsing of config.go (DockerConfigJSON, DockerConfigEntry's
// UnmarshalJSON, decodeDockerConfigFieldAuth) and of secrets/secrets.go
// (MakeDockerKeyring). k8s.io/kubernetes is not a library, hence the copy.
//
// Where this differs from the kubelet, on purpose:
//   - a malformed entry, or a Secret whose content is the other shape, is an
//     error that names the file or Secret and the entry, never the value
//     (the kubelet fails with "error occurred while trying to unmarshal
//     json", or silently finds no credentials); keys it cannot parse are
//     skipped, as it does;
//   - identitytoken and registrytoken are passed on to the runtime (the
//     kubelet reads only username, password and auth);
//   - identical credentials are returned once, and entries with no
//     credentials at all (docker's credsStore placeholders) not at all: the
//     runtime would pull anonymously with them, which the caller tries last
//     anyway.
package keyring

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/distribution/reference"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// AuthConfig is what CRI PullImage carries; Lookup returns it ready to send.
type AuthConfig = runtimeapi.AuthConfig

// DockerConfig maps a registry key ("https://index.docker.io/v1/",
// "registry.example:5000/team", "*.example.com") to its credentials.
type DockerConfig map[string]DockerConfigEntry

// DockerConfigEntry is one registry's credentials. An `auth` field
// (base64 "user:password") is decoded into Username and Password, and wins
// over explicit ones, as in the kubelet.
//
// It formats (fmt, slog) with every secret redacted; only Username and
// Email show.
type DockerConfigEntry struct {
	Username      string
	Password      string
	Email         string
	IdentityToken string
	RegistryToken string
}

// String names the user and which secrets are set, never their values.
func (e DockerConfigEntry) String() string {
	var set []string
	for _, s := range []struct{ name, v string }{
		{"password", e.Password}, {"identitytoken", e.IdentityToken}, {"registrytoken", e.RegistryToken},
	} {
		if s.v != "" {
			set = append(set, s.name)
		}
	}
	return fmt.Sprintf("DockerConfigEntry{Username: %q, Email: %q, set: [%s] (redacted)}",
		e.Username, e.Email, strings.Join(set, " "))
}

// Format makes every verb, %#v and %+v included, print String.
func (e DockerConfigEntry) Format(f fmt.State, _ rune) { io.WriteString(f, e.String()) }

// LogValue keeps slog's JSON handler from encoding the fields.
func (e DockerConfigEntry) LogValue() slog.Value { return slog.StringValue(e.String()) }

// LogValue logs a DockerConfig as its keys: slog's JSON handler would
// otherwise encode the entries' fields.
func (c DockerConfig) LogValue() slog.Value {
	return slog.StringValue("registries: " + strings.Join(slices.Sorted(maps.Keys(c)), ", "))
}

// entryJSON is an entry as written in config.json, .dockercfg and Secrets.
// encoding/json matches these names case-insensitively, as for the kubelet.
type entryJSON struct {
	Username      string `json:"username"`
	Password      string `json:"password"`
	Email         string `json:"email"`
	Auth          string `json:"auth"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// UnmarshalJSON decodes an entry; errors name the field, never its value.
func (e *DockerConfigEntry) UnmarshalJSON(data []byte) error {
	var j entryJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return jsonError(err)
	}
	*e = DockerConfigEntry{
		Username:      j.Username,
		Password:      j.Password,
		Email:         j.Email,
		IdentityToken: j.IdentityToken,
		RegistryToken: j.RegistryToken,
	}
	if j.Auth == "" {
		return nil
	}
	// decodeDockerConfigFieldAuth: padded input is decoded as such, unpadded
	// input raw, so that both forms docker writes work.
	enc := base64.RawStdEncoding
	if strings.HasSuffix(strings.TrimSpace(j.Auth), "=") {
		enc = base64.StdEncoding
	}
	decoded, err := enc.DecodeString(j.Auth)
	if err != nil {
		return errors.New(`auth: not base64 "user:password"`)
	}
	user, pass, ok := strings.Cut(string(decoded), ":")
	if !ok {
		return errors.New(`auth: decodes to no ":", want base64 "user:password"`)
	}
	e.Username, e.Password = user, pass
	return nil
}

// jsonError describes a JSON error without quoting the input: encoding/json
// messages can carry a character of it, or a whole number ("cannot
// unmarshal number 12345"), which may be a password.
func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("invalid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ) && typ.Field != "":
		return fmt.Errorf("%s: not a JSON %s", typ.Field, typ.Type.Kind())
	case errors.As(err, &typ):
		return errors.New("not a JSON object")
	}
	return errors.New("invalid JSON")
}

// ParseDockerConfig reads either shape, telling them apart by content: a
// top-level "auths" means config.json (also a kubernetes.io/dockerconfigjson
// Secret's value); else keys that look like registries ("." or ":" or
// "localhost", as docker tells a registry from a Hub user) mean the legacy
// .dockercfg; else it is a config.json with no inline credentials (say
// only credsStore or credHelpers, which the kubelet does not use either) and
// the result is empty. Every bad entry is reported, by key, not by value.
func ParseDockerConfig(data []byte) (DockerConfig, error) {
	top, err := jsonObject(data)
	if err != nil {
		return nil, err
	}
	if _, ok := top["auths"]; ok {
		return parseConfigJSON(top)
	}
	for key := range top {
		if strings.ContainsAny(key, ".:") || key == "localhost" {
			return parseEntries("", top)
		}
	}
	return DockerConfig{}, nil
}

// LoadDockerConfigFile reads a config.json or .dockercfg file. A missing file
// is an error that errors.Is(err, os.ErrNotExist).
func LoadDockerConfigFile(path string) (DockerConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("docker config: %w", err)
	}
	defer f.Close()
	// The kubelet reads at most 10 MiB of a remote config (ReadURL); the same
	// bound keeps a mistaken --docker-config /dev/zero harmless.
	const maxBytes = 10 << 20
	data, err := io.ReadAll(io.LimitReader(f, maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("docker config: %w", err)
	}
	if len(data) > maxBytes {
		return nil, fmt.Errorf("docker config %s: larger than %d MiB", path, maxBytes>>20)
	}
	cfg, err := ParseDockerConfig(data)
	if err != nil {
		return nil, fmt.Errorf("docker config %s: %w", path, err)
	}
	return cfg, nil
}

func jsonObject(data []byte) (map[string]json.RawMessage, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, jsonError(err)
	}
	if top == nil { // "null"
		return nil, errors.New("not a JSON object")
	}
	return top, nil
}

// parseConfigJSON takes the config.json shape, {"auths": {...}}.
func parseConfigJSON(top map[string]json.RawMessage) (DockerConfig, error) {
	raw, ok := top["auths"]
	if !ok {
		return nil, errors.New(`no "auths" object (legacy .dockercfg content?)`)
	}
	var auths map[string]json.RawMessage
	if err := json.Unmarshal(raw, &auths); err != nil || auths == nil {
		return nil, errors.New("auths: not a JSON object")
	}
	return parseEntries("auths", auths)
}

// parseDockercfg takes the legacy shape, {"host": {...}}. The kubelet would
// read config.json content as one registry named "auths" with no
// credentials; say so instead.
func parseDockercfg(top map[string]json.RawMessage) (DockerConfig, error) {
	if _, ok := top["auths"]; ok {
		return nil, errors.New(`has "auths": config.json content, not legacy .dockercfg`)
	}
	return parseEntries("", top)
}

// parseEntries decodes each entry, in key order so that errors and Add are
// deterministic, and reports all bad ones.
func parseEntries(prefix string, raw map[string]json.RawMessage) (DockerConfig, error) {
	cfg := DockerConfig{}
	var problems []string
	for _, key := range slices.Sorted(maps.Keys(raw)) {
		var e DockerConfigEntry
		if err := json.Unmarshal(raw[key], &e); err != nil {
			problems = append(problems, fmt.Sprintf("%s[%q]: %v", prefix, key, err))
			continue
		}
		cfg[key] = e
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "; "))
	}
	return cfg, nil
}

// Keyring holds registry credentials and finds those for an image the way
// the kubelet's BasicDockerKeyring does. The zero value is an empty keyring.
// Add must not run concurrently with other calls; Lookup may.
//
// One Keyring is one kubelet keyring: the kubelet keeps a Pod's pull Secrets
// in one and the node's config files in another and tries the first's
// matches before the second's. Formatting a Keyring shows keys and sources
// only.
type Keyring struct {
	index []string // distinct keys, reverse lexical order: most specific first
	creds map[string][]credential
}

type credential struct {
	entry  DockerConfigEntry
	source string
}

// Add adds every entry of cfg; source ("file /path", "secret ns/name") is
// kept for messages. Keys the kubelet cannot parse are skipped, as it does.
func (k *Keyring) Add(source string, cfg DockerConfig) {
	if k.creds == nil {
		k.creds = map[string][]credential{}
	}
	for _, loc := range slices.Sorted(maps.Keys(cfg)) {
		key, ok := keyringKey(loc)
		if !ok {
			continue
		}
		if _, seen := k.creds[key]; !seen {
			k.index = append(k.index, key)
		}
		k.creds[key] = append(k.creds[key], credential{cfg[loc], source})
	}
	// "quay.io/coreos" sorts before "quay.io", so the more specific path's
	// credentials come first (kubelet's comment and order).
	sort.Sort(sort.Reverse(sort.StringSlice(k.index)))
}

// keyringKey is BasicDockerKeyring.Add's key: the scheme dropped, a leading
// /v1/ or /v2/ path (docker's ResolveAuthConfig) taken as the bare host.
func keyringKey(loc string) (string, bool) {
	value := loc
	if !strings.HasPrefix(value, "https://") && !strings.HasPrefix(value, "http://") {
		value = "https://" + value
	}
	parsed, err := url.Parse(value)
	if err != nil {
		return "", false
	}
	path := parsed.Path
	if strings.HasPrefix(path, "/v2/") || strings.HasPrefix(path, "/v1/") {
		path = path[3:]
	}
	if path != "" && path != "/" {
		return parsed.Host + path, true
	}
	return parsed.Host, true
}

// AddFromSecret adds a Secret of type kubernetes.io/dockerconfigjson (key
// .dockerconfigjson, config.json shape) or kubernetes.io/dockercfg (key
// .dockercfg, legacy shape), each read in its own shape as the kubelet does.
// source ("secret ns/name") starts every error.
func (k *Keyring) AddFromSecret(secretType string, data map[string][]byte, source string) error {
	var key string
	var parse func(map[string]json.RawMessage) (DockerConfig, error)
	switch corev1.SecretType(secretType) {
	case corev1.SecretTypeDockerConfigJson:
		key, parse = corev1.DockerConfigJsonKey, parseConfigJSON
	case corev1.SecretTypeDockercfg:
		key, parse = corev1.DockerConfigKey, parseDockercfg
	default:
		return fmt.Errorf("%s: type %q holds no registry credentials (want %s or %s)",
			source, secretType, corev1.SecretTypeDockerConfigJson, corev1.SecretTypeDockercfg)
	}
	raw := data[key]
	if len(raw) == 0 {
		return fmt.Errorf("%s: type %s but no %s", source, secretType, key)
	}
	top, err := jsonObject(raw)
	if err == nil {
		var cfg DockerConfig
		if cfg, err = parse(top); err == nil {
			k.Add(source, cfg)
			return nil
		}
	}
	return fmt.Errorf("%s: %s: %w", source, key, err)
}

// Lookup returns the credentials for image (any reference: "nginx",
// "reg.io:5000/team/app:1.0@sha256:…"), most specific first, every match,
// nil if none. Each call returns new values.
func (k *Keyring) Lookup(image string) []*AuthConfig {
	var out []*AuthConfig
	for _, m := range k.lookup(image) {
		out = append(out, m.auth)
	}
	return out
}

type match struct {
	auth    *AuthConfig
	sources []string
}

type authKey struct{ user, pass, identity, registry string }

func keyOf(a *AuthConfig) authKey {
	return authKey{a.Username, a.Password, a.IdentityToken, a.RegistryToken}
}

// The kubelet's Docker Hub key: "https://index.docker.io/v1/" after Add.
const defaultRegistryHost = "index.docker.io"

func (k *Keyring) lookup(image string) []match {
	if k == nil || len(k.index) == 0 {
		return nil
	}
	// The kubelet looks up the repository name as parsers.ParseImageName
	// gives it: normalized, without tag or digest ("docker.io/library/nginx").
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return nil
	}
	target := named.Name()
	var found []credential
	for _, key := range k.index {
		if ok, _ := urlsMatchStr(key, target); ok {
			found = append(found, k.creds[key]...)
		}
	}
	// Only when nothing matched, Docker Hub images get the Hub credentials.
	if len(found) == 0 && isDefaultRegistryMatch(target) {
		found = k.creds[defaultRegistryHost]
	}

	var out []match
	at := map[authKey]int{}
	for _, c := range found {
		a := &AuthConfig{
			// The kubelet sends no ServerAddress (containerd would drop the
			// credentials for a mirror host that differs) and no Auth: it is
			// decoded into Username and Password.
			Username:      c.entry.Username,
			Password:      c.entry.Password,
			IdentityToken: c.entry.IdentityToken,
			RegistryToken: c.entry.RegistryToken,
		}
		key := keyOf(a)
		if key == (authKey{}) {
			continue
		}
		if i, ok := at[key]; ok {
			if !slices.Contains(out[i].sources, c.source) {
				out[i].sources = append(out[i].sources, c.source)
			}
			continue
		}
		at[key] = len(out)
		out = append(out, match{a, []string{c.source}})
	}
	return out
}

// isDefaultRegistryMatch is the kubelet's: does image pull from Docker Hub?
func isDefaultRegistryMatch(image string) bool {
	parts := strings.SplitN(image, "/", 2)
	if len(parts[0]) == 0 {
		return false
	}
	if len(parts) == 1 {
		return true // e.g. library/ubuntu
	}
	if parts[0] == "docker.io" || parts[0] == "index.docker.io" {
		return true
	}
	// Docker takes a first component with "." or ":" for a registry.
	return !strings.ContainsAny(parts[0], ".:")
}

// parseSchemelessURL is the kubelet's ParseSchemelessURL: url.Parse needs a
// scheme, keys and images have none.
func parseSchemelessURL(schemeless string) (*url.URL, error) {
	parsed, err := url.Parse("https://" + schemeless)
	if err != nil {
		return nil, err
	}
	parsed.Scheme = ""
	return parsed, nil
}

// splitURL is the kubelet's SplitURL: host labels and port.
func splitURL(u *url.URL) (parts []string, port string) {
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		host, port = u.Host, ""
	}
	return strings.Split(host, "."), port
}

// URLsMatch says whether glob (a keyring key, or a credential provider's
// matchImages entry) matches target, an image's repository, by the rules
// below.
func URLsMatch(glob, target string) (bool, error) { return urlsMatchStr(glob, target) }

// urlsMatchStr is the kubelet's URLsMatchStr/URLsMatch: the port must be
// equal, the number of host labels equal, each label match as a
// filepath.Match glob ("*.example.com"), and the key's path be a string
// prefix of the image's ("reg.io/team" matches "reg.io/teamster/app" too).
func urlsMatchStr(glob, target string) (bool, error) {
	globURL, err := parseSchemelessURL(glob)
	if err != nil {
		return false, err
	}
	targetURL, err := parseSchemelessURL(target)
	if err != nil {
		return false, err
	}
	globParts, globPort := splitURL(globURL)
	targetParts, targetPort := splitURL(targetURL)
	if globPort != targetPort || len(globParts) != len(targetParts) {
		return false, nil
	}
	if !strings.HasPrefix(targetURL.Path, globURL.Path) {
		return false, nil
	}
	for i, g := range globParts {
		matched, err := filepath.Match(g, targetParts[i])
		if err != nil || !matched {
			return false, err
		}
	}
	return true, nil
}

// Format prints keys and sources, never credentials: the fields are
// unexported, but fmt would still print them.
func (k Keyring) Format(f fmt.State, _ rune) {
	io.WriteString(f, "keyring.Keyring{")
	for i, key := range k.index {
		if i > 0 {
			io.WriteString(f, ", ")
		}
		var srcs []string
		for _, c := range k.creds[key] {
			srcs = append(srcs, c.source)
		}
		fmt.Fprintf(f, "%s: [%s]", key, strings.Join(srcs, ", "))
	}
	io.WriteString(f, "}")
}
