package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/credprovider"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// kubeletCredentialOracle builds testdata/credprovider-oracle, the
// kubelet's own RegisterCredentialProviderPlugins, in a copy of the
// module scripts/build-kube.sh builds the kubelet from, with its flags so
// that the build cache it left is used.
func kubeletCredentialOracle(t *testing.T) string {
	t.Helper()
	mod := filepath.Join(harness.CacheDir(), "kube-build-"+harness.KubeVersion)
	if _, err := os.Stat(filepath.Join(mod, "go.sum")); err != nil {
		if harness.Strict() {
			t.Fatalf("integration prerequisite missing: %s (scripts/build-kube.sh kubelet)", mod)
		}
		t.Skipf("integration prerequisite missing: %s (scripts/build-kube.sh kubelet; set CI=true to fail instead of skip)", mod)
	}
	dir := t.TempDir()
	for _, f := range []struct{ from, to string }{
		{filepath.Join(mod, "go.mod"), "go.mod"},
		{filepath.Join(mod, "go.sum"), "go.sum"},
		{filepath.Join("testdata", "credprovider-oracle", "main.go"), "main.go"},
	} {
		data, err := os.ReadFile(f.from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.to), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "oracle")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the kubelet's credential provider oracle: %v\n%s", err, out)
	}
	return bin
}

// TestCredentialProviderConfigOracle: every config the kubelet 1.37.2
// accepts, Load accepts, and every one it refuses, Load refuses.
func TestCredentialProviderConfigOracle(t *testing.T) {
	oracle := kubeletCredentialOracle(t)
	const (
		v1   = "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\n"
		prov = "providers:\n  - name: p\n    matchImages: [\"*.reg.io\", \"reg.io:5000/team\"]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n"
		tok  = "    tokenAttributes:\n      serviceAccountTokenAudience: reg.io\n      requireServiceAccount: true\n      cacheType: ServiceAccount\n"
	)
	one := func(doc string) map[string]string { return map[string]string{"c.yaml": doc} }
	for _, tc := range []struct {
		name  string
		files map[string]string
		dir   bool
	}{
		{name: "v1", files: one(v1 + prov)},
		{name: "v1beta1", files: one(strings.Replace(v1, "/v1\n", "/v1beta1\n", 1) + prov)},
		{name: "v1alpha1 with a v1alpha1 provider", files: one(strings.Replace(v1, "/v1\n", "/v1alpha1\n", 1) + strings.Replace(prov, "/v1\n", "/v1alpha1\n", 1))},
		{name: "unknown config version", files: one(strings.Replace(v1, "/v1\n", "/v2\n", 1) + prov)},
		{name: "no apiVersion", files: one("kind: CredentialProviderConfig\n" + prov)},
		{name: "wrong kind", files: one(strings.Replace(v1, "CredentialProviderConfig", "KubeletConfiguration", 1) + prov)},
		{name: "json", files: map[string]string{"c.json": `{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig","providers":[{"name":"p","matchImages":["reg.io"],"defaultCacheDuration":"1m","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}`}},
		{name: "tokenAttributes in v1", files: one(v1 + prov + tok)},
		{name: "tokenAttributes in v1beta1", files: one(strings.Replace(v1, "/v1\n", "/v1beta1\n", 1) + prov + tok)},
		{name: "tokenAttributes without cacheType", files: one(v1 + prov + strings.Replace(tok, "      cacheType: ServiceAccount\n", "", 1))},
		{name: "tokenAttributes cacheType Token", files: one(v1 + prov + strings.Replace(tok, "ServiceAccount\n", "Token\n", 1))},
		{name: "tokenAttributes required keys without requireServiceAccount", files: one(v1 + prov + strings.Replace(tok, "true", "false", 1) + "      requiredServiceAccountAnnotationKeys: [example.com/role]\n")},
		{name: "tokenAttributes bad annotation key", files: one(v1 + prov + tok + "      optionalServiceAccountAnnotationKeys: [\"-x\"]\n")},
		{name: "tokenAttributes with a v1beta1 provider", files: one(v1 + strings.Replace(prov, "/v1\n", "/v1beta1\n", 1) + tok)},
		{name: "unknown field", files: one(v1 + prov + "    cacheKeyType: Registry\n")},
		{name: "field case", files: one(v1 + strings.Replace(prov, "matchImages", "MatchImages", 1))},
		{name: "duplicate key", files: one(v1 + prov + "    defaultCacheDuration: 2m\n")},
		{name: "no defaultCacheDuration", files: one(v1 + strings.Replace(prov, "    defaultCacheDuration: 1m\n", "", 1))},
		{name: "defaultCacheDuration 0", files: one(v1 + strings.Replace(prov, "1m", "0s", 1))},
		{name: "negative defaultCacheDuration", files: one(v1 + strings.Replace(prov, "1m", "-1m", 1))},
		{name: "defaultCacheDuration a number", files: one(v1 + strings.Replace(prov, "1m", "60", 1))},
		{name: "name with a slash", files: one(v1 + strings.Replace(prov, "name: p", "name: a/p", 1))},
		{name: "name with a space", files: one(v1 + strings.Replace(prov, "name: p", "name: \"a p\"", 1))},
		{name: "no providers", files: one(v1 + "providers: []\n")},
		{name: "no matchImages", files: one(v1 + strings.Replace(prov, `["*.reg.io", "reg.io:5000/team"]`, "[]", 1))},
		{name: "matchImages with a bad port", files: one(v1 + strings.Replace(prov, "reg.io:5000/team", "reg.io:port", 1))},
		{name: "bad provider apiVersion", files: one(v1 + strings.Replace(prov, "credentialprovider.kubelet.k8s.io/v1", "credentialprovider.kubelet.k8s.io/v2", 1))},
		{name: "no provider apiVersion", files: one(v1 + strings.Replace(prov, "    apiVersion: credentialprovider.kubelet.k8s.io/v1\n", "", 1))},
		{name: "args and env", files: one(v1 + prov + "    args: [get-credentials]\n    env: [{name: A, value: b}]\n")},
		{name: "env value a number", files: one(v1 + prov + "    env: [{name: A, value: 12}]\n")},
		{name: "dir", dir: true, files: map[string]string{"10-a.json": `{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig","providers":[{"name":"q","matchImages":["reg.io"],"defaultCacheDuration":"1m","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}`, "20-b.yml": v1 + prov, "notes.txt": "x"}},
		{name: "dir with a name twice", dir: true, files: map[string]string{"a.yaml": v1 + prov, "b.yaml": v1 + prov}},
		{name: "dir without configs", dir: true, files: map[string]string{"notes.txt": "x"}},
		{name: "dir with a bad file", dir: true, files: map[string]string{"a.yaml": v1 + prov, "b.yaml": "kind: x\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, bin := t.TempDir(), t.TempDir()
			for name, content := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// Every name the fixtures use has a binary: the kubelet
			// refuses a config whose binary is missing, Load does not look.
			for _, name := range []string{"p", "q"} {
				if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			path := dir
			if !tc.dir {
				for name := range tc.files {
					path = filepath.Join(dir, name)
				}
			}
			out, err := exec.Command(oracle, path, bin).CombinedOutput()
			kubeletOK := err == nil && strings.TrimSpace(string(out)) == "ok"
			_, loadErr := credprovider.Load(path)
			if kubeletOK != (loadErr == nil) {
				t.Errorf("kubelet: %s\nLoad: %v", strings.TrimSpace(string(out)), loadErr)
			}
		})
	}
}
