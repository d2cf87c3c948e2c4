package keyring

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// user is a credential whose password is derived from its name, so that a
// test names it once and a result reads back as the user alone.
func user(name string) DockerConfigEntry {
	return DockerConfigEntry{Username: name, Password: "pw-" + name}
}

func users(auths []*AuthConfig) []string {
	var out []string
	for _, a := range auths {
		if a.Password != "pw-"+a.Username {
			out = append(out, "WRONG PASSWORD FOR "+a.Username)
			continue
		}
		out = append(out, a.Username)
	}
	return out
}

// raw shows every field: DockerConfigEntry's own formatting redacts.
func raw(e DockerConfigEntry) []string {
	return []string{e.Username, e.Password, e.Email, e.IdentityToken, e.RegistryToken}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// From the kubelet's TestUrlsMatch.
func TestURLsMatch(t *testing.T) {
	for _, tc := range []struct {
		glob, target string
		want         bool
	}{
		// no path component
		{"*.kubernetes.io", "prefix.kubernetes.io", true},
		{"prefix.*.io", "prefix.kubernetes.io", true},
		{"prefix.kubernetes.*", "prefix.kubernetes.io", true},
		{"*-good.kubernetes.io", "prefix-good.kubernetes.io", true},
		// path components
		{"*.kubernetes.io/blah", "prefix.kubernetes.io/blah", true},
		{"prefix.*.io/foo", "prefix.kubernetes.io/foo/bar", true},
		// path components and ports
		{"*.kubernetes.io:1111/blah", "prefix.kubernetes.io:1111/blah", true},
		{"prefix.*.io:1111/foo", "prefix.kubernetes.io:1111/foo/bar", true},
		// number of labels differs
		{"*.kubernetes.io", "kubernetes.io", false},
		{"*.*.kubernetes.io", "prefix.kubernetes.io", false},
		{"*.*.kubernetes.io", "kubernetes.io", false},
		// some label differs
		{"kubernetes.io", "kubernetes.com", false},
		{"k*.io", "quay.io", false},
		// port differs, or only one side has one
		{"*.kubernetes.io:1234/blah", "prefix.kubernetes.io:1111/blah", false},
		{"prefix.*.io/foo", "prefix.kubernetes.io:1111/foo/bar", false},
		{"localhost", "localhost:5000/app", false},
		{"localhost:5000", "localhost:5000/app", true},
		// the path is a string prefix, not a path-segment prefix
		{"reg.io/team", "reg.io/teamster/app", true},
		{"reg.io/team/", "reg.io/teamster/app", false},
		// a bad glob matches nothing
		{"[.io", "a.io", false},
	} {
		if got, _ := urlsMatchStr(tc.glob, tc.target); got != tc.want {
			t.Errorf("urlsMatchStr(%q, %q) = %v, want %v", tc.glob, tc.target, got, tc.want)
		}
	}
}

// From the kubelet's TestDockerKeyringForGlob and TestKeyringMiss, with the
// targets as real image references (the kubelet's cases with a port after a
// path are not references at all).
func TestLookupOneKey(t *testing.T) {
	for _, tc := range []struct {
		key, image string
		want       bool
	}{
		{"https://hello.kubernetes.io", "hello.kubernetes.io/foo/bar", true},
		{"https://*.docker.io", "prefix.docker.io/foo/bar", true},
		{"https://prefix.*.io", "prefix.docker.io/foo/bar", true},
		{"https://prefix.docker.*", "prefix.docker.io/foo/bar", true},
		{"https://*.docker.io/path", "prefix.docker.io/path/foo/bar", true},
		{"https://prefix.*.io/path", "prefix.docker.io/path/subpath/foo/bar", true},
		{"https://prefix.docker.*/path", "prefix.docker.io/path/foo/bar", true},
		{"https://*.docker.io:8888", "prefix.docker.io:8888/foo/bar", true},
		{"https://prefix.*.io:8888", "prefix.docker.io:8888/foo/bar", true},
		{"https://prefix.docker.*:8888", "prefix.docker.io:8888/foo/bar", true},
		{"https://*.docker.io/v1/", "prefix.docker.io/path/foo/bar", true},
		{"https://*.docker.io/v2/", "prefix.docker.io/path/foo/bar", true},
		{"prefix.docker.io:1111", "prefix.docker.io:1111/path/foo/bar", true},
		{"*.docker.io:1111", "prefix.docker.io:1111/path/foo/bar", true},
		{"http://registry.example:5000/team", "registry.example:5000/team/app:1.0", true},
		{"registry.example:5000/team", "registry.example:5000/team/app@sha256:" + strings.Repeat("a", 64), true},
		{"https://quay.io/v1/", "quay.io/foo", true}, // kubelet TestIssue3797
		{"https://quay.io/v1/", "quay.io/foo/bar", true},
		{"https://quay.io/v2/coreos", "quay.io/coreos/etcd", true},
		// misses
		{"https://hello.kubernetes.io", "world.mesos.org/foo/bar", false},
		{"https://*.docker.com", "prefix.docker.io/foo/bar", false},
		{"https://suffix.*.io", "prefix.docker.io/foo/bar", false},
		{"https://prefix.docker.c*", "prefix.docker.io/foo/bar", false},
		{"suffix.*.io", "prefix.docker.io/foo/bar", false},
		{"*.example.com", "example.com/app", false},
		{"registry.example:5000", "registry.example/app", false},
		{"registry.example", "registry.example:5000/app", false},
		{"registry.example:5000/team", "registry.example:5000/other/app", false},
		{"https://index.docker.io/v1/", "world.mesos.org/foo/bar", false}, // TestKeyringMissWithDockerHubCredentials
		{"registry-1.docker.io", "nginx", false},                          // not a key the kubelet knows for the Hub
		{"bad key with spaces", "nginx", false},                           // skipped by Add, as by the kubelet
	} {
		var k Keyring
		k.Add("test", DockerConfig{tc.key: user("u")})
		got := users(k.Lookup(tc.image))
		if want := map[bool][]string{true: {"u"}}[tc.want]; !slices.Equal(got, want) {
			t.Errorf("key %q, Lookup(%q) = %q, want %q", tc.key, tc.image, got, want)
		}
	}
}

// Every spelling of Docker Hub in a key, every spelling of a Hub image.
func TestLookupDockerHub(t *testing.T) {
	hubImages := []string{
		"nginx", "library/nginx", "docker.io/library/nginx", "index.docker.io/library/nginx",
		"nginx:1.27", "team/app", "docker.io/team/app:1@sha256:" + strings.Repeat("b", 64),
	}
	other := []string{"registry.example/nginx", "localhost:5000/nginx", "docker.io.example/nginx"}
	for _, key := range []string{
		"https://index.docker.io/v1/", "index.docker.io", "https://index.docker.io/v2/",
		"http://index.docker.io/v1/", "docker.io", "https://docker.io",
	} {
		var k Keyring
		k.Add("test", DockerConfig{key: user("hub")})
		for _, img := range hubImages {
			if got := users(k.Lookup(img)); !slices.Equal(got, []string{"hub"}) {
				t.Errorf("key %q, Lookup(%q) = %q, want [hub]", key, img, got)
			}
		}
		for _, img := range other {
			if got := k.Lookup(img); got != nil {
				t.Errorf("key %q, Lookup(%q) = %q, want none", key, img, users(got))
			}
		}
	}
}

func TestLookupOrder(t *testing.T) {
	for _, tc := range []struct {
		name  string
		adds  []DockerConfig // each added with source "src<i>"
		image string
		want  []string
	}{
		// kubelet TestDockerKeyringLookup
		{"deeper path first", []DockerConfig{{"bar.example.com/pong": user("grace"), "bar.example.com": user("ada")}},
			"bar.example.com/pong", []string{"grace", "ada"}},
		{"other path", []DockerConfig{{"bar.example.com/pong": user("grace"), "bar.example.com": user("ada")}},
			"bar.example.com/ping", []string{"ada"}},
		{"path prefix of a path label", []DockerConfig{{"bar.example.com/pong": user("grace"), "bar.example.com": user("ada")}},
			"bar.example.com/pongz", []string{"grace", "ada"}},
		{"sub-path", []DockerConfig{{"bar.example.com/pong": user("grace"), "bar.example.com": user("ada")}},
			"bar.example.com/pong/pang", []string{"grace", "ada"}},
		{"no host match", []DockerConfig{{"bar.example.com/pong": user("grace"), "bar.example.com": user("ada")}},
			"foo.example.com/pong", nil},
		// reverse lexical order of the keys, as the kubelet sorts its index:
		// "bar." > "*.", so the exact host comes before the glob
		{"exact before glob", []DockerConfig{{"*.example.com": user("glob"), "bar.example.com": user("exact")}},
			"bar.example.com/app", []string{"exact", "glob"}},
		{"across Adds, by key", []DockerConfig{{"reg.io": user("host")}, {"reg.io/team": user("team")}},
			"reg.io/team/app", []string{"team", "host"}},
		{"same key, in Add order", []DockerConfig{{"reg.io": user("first")}, {"https://reg.io/v2/": user("second")}},
			"reg.io/app", []string{"first", "second"}},
		{"same key spelled three ways, in key order", []DockerConfig{{
			"reg.io": user("c"), "https://reg.io/v1/": user("b"), "http://reg.io": user("a")}},
			"reg.io/app", []string{"a", "b", "c"}},
		{"identical credentials once, at the first place", []DockerConfig{{"reg.io/team": user("same"), "reg.io": user("host")}, {"reg.io": user("same")}},
			"reg.io/team/app", []string{"same", "host"}},
		// the Hub key is a fallback only: docker.io/team matching hides it
		{"hub fallback only when nothing matched", []DockerConfig{{"https://index.docker.io/v1/": user("hub"), "docker.io/team": user("team")}},
			"team/app", []string{"team"}},
		{"hub fallback", []DockerConfig{{"https://index.docker.io/v1/": user("hub"), "docker.io/team": user("team")}},
			"other/app", []string{"hub"}},
		{"docker.io is an ordinary key", []DockerConfig{{"https://index.docker.io/v1/": user("hub"), "docker.io": user("dockerio")}},
			"nginx", []string{"dockerio"}},
		{"empty entry dropped", []DockerConfig{{"reg.io/team": {}, "reg.io": user("host")}},
			"reg.io/team/app", []string{"host"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var k Keyring
			for i, cfg := range tc.adds {
				k.Add(fmt.Sprintf("src%d", i), cfg)
			}
			if got := users(k.Lookup(tc.image)); !slices.Equal(got, tc.want) {
				t.Errorf("Lookup(%q) = %q, want %q", tc.image, got, tc.want)
			}
		})
	}
}

func TestLookupValues(t *testing.T) {
	var k Keyring
	if got := k.Lookup("nginx"); got != nil {
		t.Errorf("zero Keyring: %v", got)
	}
	if got := (*Keyring)(nil).Lookup("nginx"); got != nil {
		t.Errorf("nil Keyring: %v", got)
	}
	k.Add("file /a", DockerConfig{
		"reg.io/team": {IdentityToken: "idtok", Email: "e@x"},
		"reg.io":      {Username: "u", Password: "p", RegistryToken: "regtok"},
	})
	k.Add("secret ns/b", DockerConfig{"reg.io": {IdentityToken: "idtok"}})
	got := k.Lookup("reg.io/team/app:1")
	if len(got) != 2 {
		t.Fatalf("got %d credentials, want 2", len(got))
	}
	if a := got[0]; a.IdentityToken != "idtok" || a.Username != "" || a.Auth != "" || a.ServerAddress != "" {
		t.Errorf("first = %+v, want the identity token alone", a)
	}
	if a := got[1]; a.Username != "u" || a.Password != "p" || a.RegistryToken != "regtok" {
		t.Errorf("second = %+v", a)
	}
	if srcs := k.sources("reg.io/team/app:1"); !slices.Equal(srcs, []string{"file /a, secret ns/b", "file /a"}) {
		t.Errorf("sources = %q", srcs)
	}
	got[0].IdentityToken = "changed"
	if k.Lookup("reg.io/team/app")[0].IdentityToken != "idtok" {
		t.Error("Lookup results share memory with the keyring")
	}
	if got := k.Lookup("Not A Reference"); got != nil {
		t.Errorf("invalid reference: %v", got)
	}
}

// A Docker Hub key is only a fallback: a more specific key of the same
// keyring wins over it.
func TestLookupHubFallback(t *testing.T) {
	var merged Keyring
	merged.Add("a", DockerConfig{"docker.io/team": user("team")})
	merged.Add("b", DockerConfig{"https://index.docker.io/v1/": user("hub")})
	if got := users(merged.Lookup("team/app")); !slices.Equal(got, []string{"team"}) {
		t.Errorf("one keyring = %q, want [team]: the Hub key is only a fallback", got)
	}
}

func TestParseDockerConfig(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		want       DockerConfig
	}{
		{"config.json", `{"auths": {"reg.io": {"auth": "` + b64("u:p") + `"}}, "credsStore": "desktop", "HttpHeaders": {"X": "y"}}`,
			DockerConfig{"reg.io": {Username: "u", Password: "p"}}},
		{"legacy .dockercfg", `{"https://index.docker.io/v1/": {"auth": "` + b64("u:p") + `", "email": "e@x"}}`,
			DockerConfig{"https://index.docker.io/v1/": {Username: "u", Password: "p", Email: "e@x"}}},
		{"legacy localhost", `{"localhost": {"username": "u", "password": "p"}}`,
			DockerConfig{"localhost": {Username: "u", Password: "p"}}},
		{"username and password", `{"auths": {"reg.io": {"username": "u", "password": "p:q"}}}`,
			DockerConfig{"reg.io": {Username: "u", Password: "p:q"}}},
		{"auth wins over username and password", `{"auths": {"reg.io": {"username": "x", "password": "y", "auth": "` + b64("u:p") + `"}}}`,
			DockerConfig{"reg.io": {Username: "u", Password: "p"}}},
		{"unpadded auth", `{"auths": {"reg.io": {"auth": "` + strings.TrimRight(b64("u:pw"), "=") + `"}}}`,
			DockerConfig{"reg.io": {Username: "u", Password: "pw"}}},
		{"password with colons", `{"auths": {"reg.io": {"auth": "` + b64("u:a:b") + `"}}}`,
			DockerConfig{"reg.io": {Username: "u", Password: "a:b"}}},
		{"identity token", `{"auths": {"reg.io": {"auth": "` + b64("00000000-0000-0000-0000-000000000000:") + `", "identitytoken": "tok"}}}`,
			DockerConfig{"reg.io": {Username: "00000000-0000-0000-0000-000000000000", IdentityToken: "tok"}}},
		{"registry token", `{"auths": {"reg.io": {"registrytoken": "tok"}}}`,
			DockerConfig{"reg.io": {RegistryToken: "tok"}}},
		{"field names any case", `{"auths": {"reg.io": {"Username": "u", "PASSWORD": "p", "IdentityToken": "t"}}}`,
			DockerConfig{"reg.io": {Username: "u", Password: "p", IdentityToken: "t"}}},
		{"credsStore only", `{"credsStore": "desktop", "credHelpers": {"gcr.io": "gcloud"}}`, DockerConfig{}},
		{"empty auths", `{"auths": {}}`, DockerConfig{}},
		{"empty object", `{}`, DockerConfig{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseDockerConfig([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d entries, want %d", len(got), len(tc.want))
			}
			for key, want := range tc.want {
				if got[key] != want {
					t.Errorf("[%q] = %q, want %q", key, raw(got[key]), raw(want))
				}
			}
		})
	}
}

// secret is in every malformed input below and must be in no error.
const secret = "hunter2-S3CRET"

func TestErrorsNameThePlaceNeverTheSecret(t *testing.T) {
	badB64 := "!!" + secret + "!!"
	noColon := b64(secret)
	for _, tc := range []struct {
		name, json, want string
	}{
		{"bad JSON", `{"auths": {"reg.io": {"password": "` + secret + `"` + "\x01" + `}}}`, "invalid JSON at byte"},
		{"bad JSON token", `{"auths": {"reg.io": {"password": ` + secret + `}}}`, "invalid JSON at byte"},
		{"truncated", `{"auths": {"reg.io": {"password": "` + secret, "invalid JSON"},
		{"not an object", `["` + secret + `"]`, "not a JSON object"},
		{"null", `null`, "not a JSON object"},
		{"auths not an object", `{"auths": ["` + secret + `"]}`, "auths: not a JSON object"},
		{"entry not an object", `{"auths": {"reg.io": "` + secret + `"}}`, `auths["reg.io"]: not a JSON object`},
		{"number password", `{"auths": {"reg.io": {"password": 1234567890}}}`, `auths["reg.io"]: password: not a JSON string`},
		{"object password", `{"auths": {"reg.io": {"password": {"v": "` + secret + `"}}}}`, `auths["reg.io"]: password: not a JSON string`},
		{"bad base64", `{"auths": {"reg.io": {"auth": "` + badB64 + `"}}}`, `auths["reg.io"]: auth: not base64 "user:password"`},
		{"bad padded base64", `{"auths": {"reg.io": {"auth": "` + secret + `=="}}}`, `auths["reg.io"]: auth: not base64 "user:password"`},
		{"missing colon", `{"auths": {"reg.io": {"auth": "` + noColon + `"}}}`, `auths["reg.io"]: auth: decodes to no ":"`},
		{"legacy missing colon", `{"reg.io": {"auth": "` + noColon + `"}}`, `["reg.io"]: auth: decodes to no ":"`},
		{"every bad entry", `{"auths": {"a.io": {"auth": "` + noColon + `"}, "b.io": {"auth": "` + badB64 + `"}, "c.io": {"password": "` + secret + `"}}}`,
			`auths["a.io"]: auth: decodes to no ":", want base64 "user:password"; auths["b.io"]: auth: not base64`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := func(err error, where string) {
				t.Helper()
				switch {
				case err == nil:
					t.Fatalf("no error")
				case strings.Contains(err.Error(), secret), strings.Contains(err.Error(), "1234567890"),
					strings.Contains(err.Error(), badB64), strings.Contains(err.Error(), noColon):
					t.Errorf("error leaks the secret: %v", err)
				case !strings.Contains(err.Error(), tc.want), !strings.HasPrefix(err.Error(), where):
					t.Errorf("error %q, want it to start with %q and contain %q", err, where, tc.want)
				}
			}
			_, err := ParseDockerConfig([]byte(tc.json))
			check(err, "")

			path := filepath.Join(t.TempDir(), "config.json")
			if err := os.WriteFile(path, []byte(tc.json), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = LoadDockerConfigFile(path)
			check(err, "docker config "+path+": ")

			if strings.Contains(tc.json, `"auths"`) {
				var k Keyring
				err = k.AddFromSecret("kubernetes.io/dockerconfigjson", map[string][]byte{".dockerconfigjson": []byte(tc.json)}, "secret ns/regcred")
				check(err, "secret ns/regcred: .dockerconfigjson: ")
				if k.Lookup("reg.io/app") != nil {
					t.Error("a failed AddFromSecret added credentials")
				}
			}
		})
	}
}

func TestLoadDockerConfigFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadDockerConfigFile(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want os.ErrNotExist", err)
	}
	path := filepath.Join(dir, ".dockercfg")
	if err := os.WriteFile(path, []byte(`{"reg.io:5000": {"auth": "`+b64("u:pw-u")+`"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadDockerConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var k Keyring
	k.Add("file "+path, cfg)
	if got := users(k.Lookup("reg.io:5000/app")); !slices.Equal(got, []string{"u"}) {
		t.Errorf("Lookup = %q", got)
	}
}

func TestAddFromSecret(t *testing.T) {
	configJSON := []byte(`{"auths": {"reg.io": {"auth": "` + b64("json:pw-json") + `"}}}`)
	dockercfg := []byte(`{"reg.io": {"auth": "` + b64("cfg:pw-cfg") + `"}}`)
	for _, tc := range []struct {
		name, typ string
		data      map[string][]byte
		want      []string
		err       string
	}{
		{"dockerconfigjson", "kubernetes.io/dockerconfigjson", map[string][]byte{".dockerconfigjson": configJSON}, []string{"json"}, ""},
		{"dockercfg", "kubernetes.io/dockercfg", map[string][]byte{".dockercfg": dockercfg}, []string{"cfg"}, ""},
		{"opaque", "Opaque", map[string][]byte{".dockerconfigjson": configJSON}, nil,
			`secret ns/s: type "Opaque" holds no registry credentials`},
		{"no type", "", map[string][]byte{".dockerconfigjson": configJSON}, nil, `secret ns/s: type ""`},
		{"missing key", "kubernetes.io/dockerconfigjson", map[string][]byte{".dockercfg": dockercfg}, nil,
			"secret ns/s: type kubernetes.io/dockerconfigjson but no .dockerconfigjson"},
		// the kubelet reads each type in its own shape only
		{"legacy content in dockerconfigjson", "kubernetes.io/dockerconfigjson", map[string][]byte{".dockerconfigjson": dockercfg}, nil,
			`secret ns/s: .dockerconfigjson: no "auths" object`},
		{"config.json content in dockercfg", "kubernetes.io/dockercfg", map[string][]byte{".dockercfg": configJSON}, nil,
			`secret ns/s: .dockercfg: has "auths": config.json content`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var k Keyring
			err := k.AddFromSecret(tc.typ, tc.data, "secret ns/s")
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
			if got := users(k.Lookup("reg.io/app")); !slices.Equal(got, tc.want) {
				t.Errorf("Lookup = %q, want %q", got, tc.want)
			}
			if tc.want != nil && !slices.Equal(k.sources("reg.io/app"), []string{"secret ns/s"}) {
				t.Errorf("sources = %q", k.sources("reg.io/app"))
			}
		})
	}
}

func TestFormattingRedacts(t *testing.T) {
	entry := DockerConfigEntry{Username: "bob", Password: secret, Email: "bob@x", IdentityToken: secret + "-id", RegistryToken: secret + "-reg"}
	cfg := DockerConfig{"reg.io": entry}
	var k Keyring
	k.Add("secret ns/regcred", cfg)

	var out bytes.Buffer
	for _, v := range []any{entry, &entry, cfg, k, &k, []DockerConfigEntry{entry}, struct{ E DockerConfigEntry }{entry}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			fmt.Fprintf(&out, verb+"\n", v)
		}
		fmt.Fprintln(&out, v)
	}
	log := slog.New(slog.NewJSONHandler(&out, nil))
	log.Info("x", "entry", entry, "cfg", cfg)
	slog.New(slog.NewTextHandler(&out, nil)).Info("x", "entry", entry, "cfg", cfg, "keyring", &k)

	if strings.Contains(out.String(), secret) {
		t.Errorf("a secret was formatted:\n%s", out.String())
	}
	for _, want := range []string{`Username: "bob"`, "set: [password identitytoken registrytoken] (redacted)", "reg.io: [secret ns/regcred]", "registries: reg.io"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	// A keyring prints as its type, then each key with where its
	// credentials came from.
	const wantKeyring = "keyring.Keyring{reg.io: [secret ns/regcred]}"
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		for _, v := range []any{k, &k} {
			if got := fmt.Sprintf(verb, v); got != wantKeyring {
				t.Errorf("Sprintf(%q, %T) = %q, want %q", verb, v, got, wantKeyring)
			}
		}
	}
}

// sources returns, in Lookup's order, where each of Lookup's credentials
// came from ("secret ns/a", or "file /x, secret ns/b" for one found twice).
func (k *Keyring) sources(image string) []string {
	var out []string
	for _, m := range k.lookup(image) {
		out = append(out, strings.Join(m.sources, ", "))
	}
	return out
}
