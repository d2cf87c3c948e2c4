package keyring

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// secretFields are the entry fields whose values must never be printed.
var secretFields = []string{"password", "auth", "identitytoken", "registrytoken"}

// inputFields is what a docker config's JSON holds, collected leniently:
// values per entry field (lower case), the strings anyone may see (keys,
// usernames, emails), and the secrets (every value under a secret field,
// whatever its type, and the password half of a decoded auth).
type inputFields struct {
	values  map[string]map[string]bool
	public  []string
	secrets []string
}

func collectFields(data []byte) *inputFields {
	in := &inputFields{values: map[string]map[string]bool{}}
	in.walk(json.RawMessage(data), false)
	return in
}

func (in *inputFields) add(field, v string) {
	if in.values[field] == nil {
		in.values[field] = map[string]bool{}
	}
	in.values[field][v] = true
}

func (in *inputFields) walk(raw json.RawMessage, secret bool) {
	if secret {
		in.secrets = append(in.secrets, string(raw))
	}
	var obj map[string]json.RawMessage
	var arr []json.RawMessage
	var s string
	switch {
	case json.Unmarshal(raw, &obj) == nil:
		for k, v := range obj {
			if secret {
				in.secrets = append(in.secrets, k)
			} else {
				in.public = append(in.public, k)
			}
			field := ""
			for _, f := range []string{"username", "password", "email", "auth", "identitytoken", "registrytoken"} {
				if strings.EqualFold(k, f) {
					field = f
				}
			}
			isSecret := secret || slices.Contains(secretFields, field)
			if field != "" && json.Unmarshal(v, &s) == nil {
				in.add(field, s)
				if field == "auth" {
					in.decodedAuth(s)
				}
			}
			in.walk(v, isSecret)
		}
	case json.Unmarshal(raw, &arr) == nil:
		for _, v := range arr {
			in.walk(v, secret)
		}
	case json.Unmarshal(raw, &s) == nil:
		if secret {
			in.secrets = append(in.secrets, s)
		} else {
			in.public = append(in.public, s)
		}
	}
}

func (in *inputFields) decodedAuth(s string) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding} {
		b, err := enc.DecodeString(s)
		if err != nil {
			continue
		}
		u, p, ok := strings.Cut(string(b), ":")
		if !ok {
			in.secrets = append(in.secrets, string(b))
			continue
		}
		in.add("username", u)
		in.add("password", p)
		in.public = append(in.public, u)
		in.secrets = append(in.secrets, p)
	}
}

// messageVocabulary is every fixed text keyring.go prints: a secret that is
// made of it (a password "not a JSON object") is not a leak.
const messageVocabulary = `invalid JSON at byte ; not a JSON object; invalid JSON; ` +
	`auth: not base64 "user:password"; auth: decodes to no ":", want base64 "user:password"; ` +
	`no "auths" object (legacy .dockercfg content?); auths: not a JSON object; ` +
	`has "auths": config.json content, not legacy .dockercfg; ` +
	`: not a JSON string number bool array map struct interface slice ptr; ` +
	`DockerConfigEntry{Username: "", Email: "", set: [password identitytoken registrytoken] (redacted)}; ` +
	`registries: , keyring.Keyring{: [, ]}; docker config : larger than  MiB; ` +
	`secret ns/name: .dockerconfigjson .dockercfg type  but no ; file /fuzz/config.json`

// leak returns a piece (6 bytes or more) of a secret that msg shows, once
// the public strings and the messages' own words are set aside.
func leak(msg string, in *inputFields, more ...string) string {
	const sep = "\uffff"
	public := slices.Clone(in.public)
	for field, vs := range in.values {
		if field == "username" || field == "email" {
			for v := range vs {
				public = append(public, v)
			}
		}
	}
	var forms []string
	for _, p := range public {
		if p != "" {
			forms = append(forms, p, strconv.Quote(p), fmt.Sprintf("%q", p), strings.Trim(strconv.Quote(p), `"`))
		}
	}
	// Longest first, so that a key is removed whole before its pieces.
	slices.SortFunc(forms, func(a, b string) int { return len(b) - len(a) })
	rest := msg
	for _, p := range forms {
		rest = strings.ReplaceAll(rest, p, sep)
	}
	for _, s := range append(slices.Clone(in.secrets), more...) {
		for i := 0; i+6 <= len(s); i++ {
			w := s[i : i+6]
			if strings.Contains(w, sep) || strings.Contains(messageVocabulary, w) {
				continue
			}
			if strings.Contains(rest, w) || strings.Contains(rest, strings.Trim(strconv.Quote(w), `"`)) {
				return w
			}
		}
	}
	return ""
}

// checkAuths checks what Lookup returned: credentials from the input, in
// the fields they were in, each once, never empty, no Auth or
// ServerAddress.
func checkAuths(t *testing.T, image string, auths []*AuthConfig, in *inputFields, cfg DockerConfig) {
	t.Helper()
	seen := map[authKey]bool{}
	for _, a := range auths {
		key := keyOf(a)
		if key == (authKey{}) || seen[key] || a.Auth != "" || a.ServerAddress != "" {
			t.Fatalf("Lookup(%q): empty, repeated or with Auth/ServerAddress: %v", image, auths)
		}
		seen[key] = true
		for field, v := range map[string]string{"username": a.Username, "password": a.Password,
			"identitytoken": a.IdentityToken, "registrytoken": a.RegistryToken} {
			if v != "" && !in.values[field][v] {
				t.Fatalf("Lookup(%q): %s %q is not a %s of the input", image, field, v, field)
			}
		}
		if cfg == nil {
			continue
		}
		found := false
		for _, e := range cfg {
			if e.Username == a.Username && e.Password == a.Password &&
				e.IdentityToken == a.IdentityToken && e.RegistryToken == a.RegistryToken {
				found = true
			}
		}
		if !found {
			t.Fatalf("Lookup(%q) returned credentials of no parsed entry", image)
		}
	}
}

// lookupImages are images the keys of cfg would match, and image.
func lookupImages(cfg DockerConfig, image string) []string {
	images := []string{image, "nginx", "docker.io/library/nginx:1"}
	for key := range cfg {
		k := strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
		k = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(k, "/"), "v1/"), "/")
		images = append(images, k, k+"/team/app:1.0", strings.ReplaceAll(k, "*", "a")+"/app")
	}
	return images
}

// templated puts secret where a config would hold credentials, as values of
// every type and as an auth that does not decode, in both shapes.
func templated(secret string) [][]byte {
	q, _ := json.Marshal(secret)
	rawOrString := q
	if json.Valid([]byte(secret)) {
		rawOrString = []byte(secret)
	}
	entries := fmt.Sprintf(`"reg.example":{"username":"u","password":%s,"identitytoken":%s},`+
		`"b64.example":{"auth":%q},"bad.example":{"password":%s},"auth.example":{"auth":%s},`+
		`"tok.example:5000/team":{"registrytoken":%s,"email":"e@x"}`,
		q, q, base64.StdEncoding.EncodeToString([]byte("user:"+secret)), rawOrString, q, rawOrString)
	return [][]byte{
		[]byte(`{"auths":{` + entries + `}}`),
		[]byte(`{` + entries + `}`),
	}
}

func FuzzParseDockerConfig(f *testing.F) {
	for _, seed := range []struct{ data, secret, image string }{
		{`{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpodW50ZXIy"}}}`, "hunter2-secret", "nginx"},
		{`{"reg.example:5000":{"username":"bob","password":"s3cr3t-pass","email":"b@x"}}`, "s3cr3t-pass", "reg.example:5000/a/b:1"},
		{`{"auths":{"*.example.com":{"identitytoken":"tok-123456789"},"quay.io/coreos":{"registrytoken":"rtok-abcdef"}}}`, "tok-123456789", "x.example.com/app"},
		{`{"auths":{"reg.example":{"password":123456789}}}`, "123456789", "reg.example/a"},
		{`{"auths":{"reg.example":{"auth":"not-base64!!"}}}`, "not-base64!!", "reg.example/a"},
		{`{"auths":{"reg.example":{"auth":"bm9jb2xvbg=="}}}`, "nocolon", "reg.example/a"},
		{`{"credsStore":"desktop","credHelpers":{"gcr.io":"gcloud"}}`, "desktop", "gcr.io/p/i"},
		{`{"auths":null}`, "", ""},
		{`null`, "", ""},
		{`{"auths":{"reg.example":"passw0rd-str"}}`, "passw0rd-str", "reg.example/x"},
		{`{"auths":{"reg.example":{"Password":"CaseFold-pw","USERNAME":"U"}}}`, "CaseFold-pw", "reg.example/x"},
		{`{"auths":{"http://[::1]:5000/v2/":{"username":"a","password":"ipv6-password"}}}`, "ipv6-password", "[::1]:5000/x"},
		{`{"auths":{"localhost":{"username":"a","password":"local-password"}}}`, "local-password", "localhost/x"},
		{`{"auths":{"reg.example":{"password":"x"}}`, "truncated-secret", ""},
	} {
		f.Add([]byte(seed.data), seed.secret, seed.image)
	}
	dir := f.TempDir()
	file := filepath.Join(dir, "config.json")
	f.Fuzz(func(t *testing.T, data []byte, secret, image string) {
		docs := append([][]byte{data}, templated(secret)...)
		for _, doc := range docs {
			in := collectFields(doc)
			more := []string{}
			if !bytes.Equal(doc, data) {
				more = append(more, secret) // put in a secret field
			}
			cfg, err := ParseDockerConfig(doc)
			if err != nil {
				if cfg != nil {
					t.Fatalf("ParseDockerConfig: a config with error %v", err)
				}
				if w := leak(err.Error(), in, more...); w != "" {
					t.Fatalf("ParseDockerConfig error shows %q of a secret: %v", w, err)
				}
			} else {
				// Formatting and logging show no secret either.
				var logged bytes.Buffer
				slog.New(slog.NewJSONHandler(&logged, nil)).Info("cfg", "cfg", cfg)
				for key, e := range cfg {
					slog.New(slog.NewJSONHandler(&logged, nil)).Info("entry", "e", e)
					fmt.Fprintf(&logged, "%s %v %+v %#v %s %q\n", key, e, e, e, e, e)
				}
				var k Keyring
				k.Add("file /fuzz/config.json", cfg)
				fmt.Fprintf(&logged, "%v %+v %#v\n", k, k, cfg)
				if w := leak(logged.String(), in, more...); w != "" {
					t.Fatalf("formatting shows %q of a secret: %s", w, logged.String())
				}
				for _, img := range lookupImages(cfg, image) {
					auths := k.Lookup(img)
					checkAuths(t, img, auths, in, cfg)
					if n := len(k.sources(img)); n != len(auths) {
						t.Fatalf("Lookup(%q): %d credentials, %d sources", img, len(auths), n)
					}
				}
			}

			// The same content as the file the node has, and as both
			// Secret types.
			if err := os.WriteFile(file, doc, 0o600); err != nil {
				t.Fatal(err)
			}
			fcfg, ferr := LoadDockerConfigFile(file)
			if (ferr == nil) != (err == nil) || len(fcfg) != len(cfg) {
				t.Fatalf("LoadDockerConfigFile: %v, ParseDockerConfig: %v", ferr, err)
			}
			if ferr != nil {
				msg := strings.ReplaceAll(ferr.Error(), file, "/fuzz/config.json")
				if w := leak(msg, in, more...); w != "" {
					t.Fatalf("LoadDockerConfigFile error shows %q of a secret: %v", w, ferr)
				}
			}
			for _, typ := range []string{"kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg"} {
				var k Keyring
				err := k.AddFromSecret(typ, map[string][]byte{".dockerconfigjson": doc, ".dockercfg": doc}, "secret ns/name")
				if err != nil {
					if !strings.HasPrefix(err.Error(), "secret ns/name: ") {
						t.Fatalf("AddFromSecret error names no Secret: %v", err)
					}
					if w := leak(err.Error(), in, more...); w != "" {
						t.Fatalf("AddFromSecret error shows %q of a secret: %v", w, err)
					}
					continue
				}
				for _, img := range lookupImages(cfg, image) {
					checkAuths(t, img, k.Lookup(img), in, nil)
				}
			}
		}
	})
}
