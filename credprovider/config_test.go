package credprovider

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const ecrV1 = `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages:
      - "*.dkr.ecr.*.amazonaws.com"
      - "*.dkr.ecr.*.amazonaws.com.cn"
    defaultCacheDuration: "12h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials]
    env:
      - name: AWS_PROFILE
        value: node
`

func TestParse(t *testing.T) {
	got, err := Parse("ecr.yaml", []byte(ecrV1))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d providers, want 1", len(got))
	}
	p := got[0]
	if p.Name != "ecr-credential-provider" || len(p.MatchImages) != 2 || p.DefaultCacheDuration != 12*time.Hour ||
		p.APIVersion != apiV1 || strings.Join(p.Args, " ") != "get-credentials" ||
		len(p.Env) != 1 || p.Env[0] != (EnvVar{"AWS_PROFILE", "node"}) || p.File != "ecr.yaml" || p.Line != 4 {
		t.Errorf("got %+v", p)
	}
}

// Each version the kubelet reads; tokenAttributes only in v1.
func TestParseVersions(t *testing.T) {
	const provider = `
providers:
  - name: p
    matchImages: ["reg.io"]
    defaultCacheDuration: 1m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
`
	const token = `    tokenAttributes:
      serviceAccountTokenAudience: reg.io
      requireServiceAccount: true
      cacheType: ServiceAccount
`
	for _, v := range []string{"v1", "v1beta1", "v1alpha1"} {
		t.Run(v, func(t *testing.T) {
			doc := "apiVersion: kubelet.config.k8s.io/" + v + "\nkind: CredentialProviderConfig" + provider
			if _, err := Parse("c.yaml", []byte(doc)); err != nil {
				t.Fatal(err)
			}
			ps, err := Parse("c.yaml", []byte(doc+token))
			if v == "v1" {
				if err != nil || ps[0].TokenAttributes == nil || ps[0].TokenAttributes.ServiceAccountTokenAudience != "reg.io" || !ps[0].TokenAttributes.RequireServiceAccount {
					t.Fatalf("with tokenAttributes: %v, %+v", err, ps)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "c.yaml:8: unknown field providers[0].tokenAttributes") {
				t.Fatalf("with tokenAttributes: err = %v, want the unknown field at its line", err)
			}
		})
	}
}

func TestParseProblems(t *testing.T) {
	const head = "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\n"
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"no apiVersion", "kind: CredentialProviderConfig\nproviders: []\n", []string{"f: apiVersion is missing"}},
		{"unknown version", "apiVersion: kubelet.config.k8s.io/v2\nkind: CredentialProviderConfig\n",
			[]string{`f:1: apiVersion "kubelet.config.k8s.io/v2" is not one the kubelet reads`}},
		{"wrong kind", "apiVersion: kubelet.config.k8s.io/v1\nkind: KubeletConfiguration\n", []string{`f:2: kind "KubeletConfiguration", want CredentialProviderConfig`}},
		{"yaml syntax", head + "providers:\n  - name: [\n", []string{"f: yaml: line"}},
		{"duplicate key", head + "providers: []\nproviders: []\n", []string{`already set in map`}},
		{"field case", head + "Providers: []\n", []string{"f:3: unknown field Providers"}},
		{"no providers", head + "providers: []\n", []string{"f:3: no providers"}},
		{"provider fields", head + `providers:
  - name: a/b
    matchImages: []
    apiVersion: credentialprovider.kubelet.k8s.io/v2
  - name: ok
    matchImages: ["reg.io:port"]
    defaultCacheDuration: -1m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
  - name: ok
    matchImages: ["reg.io"]
    defaultCacheDuration: 1m
    apiVersion: credentialprovider.kubelet.k8s.io/v1beta1
    tokenAttributes:
      cacheType: Forever
      requiredServiceAccountAnnotationKeys: ["-bad", "a.io/ok"]
      optionalServiceAccountAnnotationKeys: ["a.io/ok"]
`, []string{
			`f:4: providers[0].name "a/b": must be a file name`,
			`f:4: providers[0].matchImages: at least 1 item is required`,
			`f:6: providers[0].apiVersion "credentialprovider.kubelet.k8s.io/v2": not one of`,
			`f:4: providers[0].defaultCacheDuration is required`,
			`f:8: providers[1].matchImages[0] "reg.io:port": invalid`,
			`f:9: providers[1].defaultCacheDuration must be 0 or more`,
			`f:11: providers[2].name "ok": duplicate provider name`,
			`f:15: providers[2].tokenAttributes.serviceAccountTokenAudience is required`,
			`f:15: providers[2].tokenAttributes.requireServiceAccount is required`,
			`f:15: providers[2].tokenAttributes: only for apiVersion credentialprovider.kubelet.k8s.io/v1`,
			`f:17: providers[2].tokenAttributes.requiredServiceAccountAnnotationKeys[0] "-bad": must be a qualified name`,
			`f:15: providers[2].tokenAttributes: annotation key "a.io/ok" is both required and optional`,
			`f:16: providers[2].tokenAttributes.cacheType "Forever": not ServiceAccount or Token`,
		}},
		{"json", `{"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
 "providers": [{"name": "p", "matchImages": ["reg.io"], "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
   "defaultCacheDuration": "1m", "extra": 1}]}`, []string{"f:3: unknown field providers[0].extra"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f", []byte(tc.doc))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%s", w, strings.ReplaceAll(err.Error(), "; ", "\n"))
				}
			}
		})
	}
}

// An env value may be a secret: a wrong type names the field, not it.
func TestParseHidesValues(t *testing.T) {
	doc := `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: p
    matchImages: ["reg.io"]
    defaultCacheDuration: 1m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
      - name: AWS_SECRET_ACCESS_KEY
        value: 987654321987654321987654321
`
	_, err := Parse("f", []byte(doc))
	if err == nil || strings.Contains(err.Error(), "987654321") || !strings.Contains(err.Error(), "f:10: providers.env.value: a number, want string") {
		t.Fatalf("err = %v, want the field named and the value left out", err)
	}
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func provider(name string) string {
	return `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ` + name + `
    matchImages: ["reg.io"]
    defaultCacheDuration: 1m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
`
}

func TestLoadDir(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"20-b.yml":   provider("b"),
		"10-a.json":  `{"apiVersion":"kubelet.config.k8s.io/v1beta1","kind":"CredentialProviderConfig","providers":[{"name":"a","matchImages":["reg.io"],"defaultCacheDuration":"0s","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}`,
		"30-c.yaml":  provider("c"),
		"README.md":  "not a config",
		"40-d.yaml~": "not read",
	})
	if err := os.Mkdir(filepath.Join(dir, "50-e.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range cfg.Providers {
		names = append(names, p.Name+"@"+filepath.Base(p.File))
	}
	if got := strings.Join(names, " "); got != "a@10-a.json b@20-b.yml c@30-c.yaml" {
		t.Errorf("providers %s, want a, b, c in file order", got)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"empty dir", map[string]string{"notes.txt": "x"}, "no *.json, *.yaml or *.yml file in directory"},
		{"name twice", map[string]string{"a.yaml": provider("p"), "b.yaml": provider("p")},
			`b.yaml:4: provider name "p" is used twice, first at `},
		{"bad file", map[string]string{"a.yaml": provider("p"), "b.yaml": "kind: x\n"}, "b.yaml: apiVersion is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFiles(t, tc.files))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: err = %v", err)
	}
}
