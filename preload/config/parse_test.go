package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/preload/config"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// designExample is the config of docs/design/contract.md, as users copy it.
const designExample = `images:
  - image: registry.k8s.io/pause:3.10   # as pods write it; tag and/or @sha256 digest
  - image: corp.example/team/app:1.4
    pullSecrets: [regcred]               # agent: dockerconfigjson Secrets in the agent's namespace
    serviceAccount: builder              # agent: use this ServiceAccount's imagePullSecrets
    nodeSelector: {gpu: "true"}          # only on nodes whose labels match
  - image: corp.example/team/tool:2.0
    archive: tool.tar.zst                # import from archiveDir/tool.tar.zst, no registry
  - image: registry.k8s.io/coredns/coredns:v1.12.0
    mirror: artifactrepo.corp.example/k8s   # pull from the mirror, record under ` + "`image`" + `
sandboxImage: auto        # auto (ask the runtime) | none | a reference
archiveDir: /var/lib/preloader/archives   # every archive here is imported too
concurrency: 3            # pulls at once on one node
pullVia: auto             # auto (decided by measurement) | cri (the runtime's own pull) | containerd (containerd client)
maxDownloads: 8           # pullVia containerd: layer downloads at once on the node
pullTimeout: 15m          # one pull attempt
retry: {initialDelay: 2s, maxDelay: 5m}
resync: 5m                # agent: re-check presence (kubelet GC, manual rmi)
pin: true                 # protect preloaded images from kubelet image GC
rollout: {maxNodesPulling: 100%, firstNodes: 0}   # agent: cluster-wide pull waves (Leases)
`

func TestParseDesignExample(t *testing.T) {
	cfg, err := config.Parse("images.yaml", []byte(designExample))
	if err != nil {
		t.Fatal(err)
	}
	want := config.Defaults()
	// The example writes the CRI path's concurrency; left out, the path
	// decides it (Config.PullConcurrency).
	want.Concurrency = 3
	want.Images = []config.Image{
		{Ref: "registry.k8s.io/pause:3.10", Name: "registry.k8s.io/pause:3.10", Line: 2},
		{
			Ref: "corp.example/team/app:1.4", Name: "corp.example/team/app:1.4", Line: 3,
			PullSecrets: []string{"regcred"}, ServiceAccount: "builder",
			NodeSelector: map[string]string{"gpu": "true"},
		},
		{Ref: "corp.example/team/tool:2.0", Name: "corp.example/team/tool:2.0", Archive: "tool.tar.zst", Line: 7},
		{
			Ref: "registry.k8s.io/coredns/coredns:v1.12.0", Name: "registry.k8s.io/coredns/coredns:v1.12.0",
			Mirror: "artifactrepo.corp.example/k8s", Line: 9,
		},
	}
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("got  %+v\nwant %+v", *cfg, want)
	}
}

func TestParseDefaults(t *testing.T) {
	cfg, err := config.Parse("images.yaml", []byte("images: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Images) != 0 {
		t.Errorf("images: %v", cfg.Images)
	}
	cfg.Images = nil
	want := config.Defaults()
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("got  %+v\nwant %+v", *cfg, want)
	}
	if want.SandboxImage != "auto" || want.ArchiveDir != "/var/lib/preloader/archives" ||
		want.Concurrency != 0 || want.PullConcurrency("cri") != 3 || want.PullConcurrency("containerd") != 8 || want.PullVia != "auto" || want.MaxDownloads != 8 ||
		want.PullTimeout != 15*time.Minute || want.Retry != (config.Retry{InitialDelay: 2 * time.Second, MaxDelay: 5 * time.Minute}) ||
		want.Resync != 5*time.Minute || !want.Pin {
		t.Errorf("defaults differ from docs/design/contract.md: %+v", want)
	}
}

func TestParseValues(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		check      func(*config.Config) bool
	}{
		{"every key set", `
images: [{image: nginx}]
sandboxImage: registry.k8s.io/pause:3.10
archiveDir: /srv/archives/
concurrency: 64
pullVia: containerd
maxDownloads: 1
pullTimeout: 90s
retry: {initialDelay: 1s, maxDelay: 1s}
resync: 1s
pin: false
verify: {keys: [/etc/preloader/keys/team.pub, /etc/preloader/keys//other.pub]}
`, func(c *config.Config) bool {
			return c.SandboxImage == "registry.k8s.io/pause:3.10" && c.ArchiveDir == "/srv/archives" &&
				slices.Equal(c.Verify.Keys, []string{"/etc/preloader/keys/team.pub", "/etc/preloader/keys/other.pub"}) && c.Verify.On() &&
				c.Concurrency == 64 && c.PullVia == "containerd" && c.MaxDownloads == 1 &&
				c.PullTimeout == 90*time.Second && c.Retry == (config.Retry{InitialDelay: time.Second, MaxDelay: time.Second}) &&
				c.Resync == time.Second && !c.Pin
		}},
		{"through containerd: images at once to fill the download slots", "images: []\npullVia: containerd\nmaxDownloads: 12\n", func(c *config.Config) bool {
			return c.PullConcurrency("containerd") == 12
		}},
		{"an explicit concurrency stays on either path", "images: []\npullVia: containerd\nconcurrency: 2\n", func(c *config.Config) bool {
			return c.PullConcurrency("containerd") == 2 && c.PullConcurrency("cri") == 2 && c.MaxDownloads == 8
		}},
		{"through containerd: never fewer images than the default", "images: []\npullVia: containerd\nmaxDownloads: 1\n", func(c *config.Config) bool {
			return c.PullConcurrency("containerd") == 3
		}},
		{"through the CRI: the default", "images: []\nmaxDownloads: 12\n", func(c *config.Config) bool {
			return c.PullConcurrency("cri") == 3 && c.PullVia == "auto"
		}},
		{"sandbox image normalized", "images: []\nsandboxImage: pause\n", func(c *config.Config) bool {
			return c.SandboxImage == "docker.io/library/pause:latest"
		}},
		{"sandbox none", "images: []\nsandboxImage: none\n", func(c *config.Config) bool { return c.SandboxImage == "none" }},
		{"null is left out", "images: []\nconcurrency:\nretry: ~\nsandboxImage: null\n", func(c *config.Config) bool {
			d := config.Defaults()
			return c.Concurrency == d.Concurrency && c.Retry == d.Retry && c.SandboxImage == d.SandboxImage
		}},
		{"one retry delay", "images: []\nretry: {maxDelay: 1m}\n", func(c *config.Config) bool {
			return c.Retry == config.Retry{InitialDelay: 2 * time.Second, MaxDelay: time.Minute}
		}},
		{"trailing document marker", "images: []\n---\n", func(c *config.Config) bool { return true }},
		{"block style image", "images:\n  -\n    serviceAccount: sa\n    image: nginx\n", func(c *config.Config) bool {
			return c.Images[0].Line == 3 && c.Images[0].Name == "docker.io/library/nginx:latest" && c.Images[0].ServiceAccount == "sa"
		}},
		{"aliases share a selector", `
images:
  - image: a
    nodeSelector: &gpu {gpu: "true", kubernetes.io/arch: amd64}
  - image: b
    nodeSelector: *gpu
`, func(c *config.Config) bool {
			return reflect.DeepEqual(c.Images[0].NodeSelector, c.Images[1].NodeSelector) &&
				c.Images[1].NodeSelector["kubernetes.io/arch"] == "amd64" && c.Images[1].Line == 5
		}},
		{"same repository, tag and digest differ", "images: [{image: nginx}, {image: 'nginx@" + digest + "'}, {image: 'nginx:1@" + digest + "'}]\n",
			func(c *config.Config) bool { return len(c.Images) == 3 }},
		{"mirrors", `
images:
  - {image: a, mirror: mirror.corp}
  - {image: b, mirror: "localhost:5000"}
  - {image: c, mirror: "[::1]:5000/a/b"}
  - {image: d, mirror: localhost}
`, func(c *config.Config) bool { return c.Images[2].Mirror == "[::1]:5000/a/b" }},
		{"archive in a subdirectory", "images: [{image: a, archive: team/a.tar}]\n", func(c *config.Config) bool {
			return c.Images[0].Archive == "team/a.tar"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse("images.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(cfg) {
				t.Errorf("unexpected config: %+v", *cfg)
			}
		})
	}
}

// problems parses and returns the lines a user sees.
func problems(t *testing.T, yaml string) []string {
	t.Helper()
	cfg, err := config.Parse("images.yaml", []byte(yaml))
	if err == nil {
		t.Fatalf("no error; config %+v", *cfg)
	}
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("%T is not a *ConfigError: %v", err, err)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(ce.Problems) {
		t.Fatalf("%d lines for %d problems:\n%v", len(lines), len(ce.Problems), err)
	}
	return lines
}

// checkProblems wants one problem per want, each line containing its want
// (which starts with the file:line).
func checkProblems(t *testing.T, got, want []string) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = strings.Contains(got[i], want[i]) && strings.HasPrefix(got[i], want[i][:strings.Index(want[i], ": ")])
	}
	if !ok {
		t.Errorf("got problems:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"empty file", "", []string{`images.yaml: config is empty: no images listed`}},
		{"only comments", "# nothing yet\n", []string{`images.yaml: config is empty`}},
		{"empty document", "---\n", []string{`images.yaml: config is empty`}},
		{"no images key", "concurrency: 2\n", []string{`images.yaml:1: no images listed ("images: []" for none)`}},
		{"null images", "images:\n", []string{`images.yaml:1: no images listed`}},
		// yaml.v3 names the line where the construct it could not finish starts.
		{"unfinished list", "images:\n  - image: a\n  bad: [\n", []string{`images.yaml:2: invalid YAML: did not find expected '-' indicator`}},
		{"unclosed bracket", "images: []\npin: [true\n", []string{`images.yaml:2: invalid YAML: did not find expected ',' or ']'`}},
		{"unclosed bracket on line 1", "images: [", []string{`images.yaml:1: invalid YAML: did not find expected node content`}},
		{"unclosed bracket at the end", "images: [\n", []string{`images.yaml:1: invalid YAML: did not find expected node content`}},
		{"missing key", "images: []\n: x\n", []string{`images.yaml:2: invalid YAML: did not find expected key`}},
		{"bad indentation", "images: []\nconcurrency: 3\n  pin: true\n", []string{`images.yaml:3: invalid YAML: mapping values are not allowed in this context`}},
		{"unterminated quote", "images:\n  - image: \"a\n", []string{`images.yaml:2: invalid YAML: found unexpected end of stream`}},
		{"tab indent", "images:\n\t- image: a\n", []string{`images.yaml:2: invalid YAML: found character that cannot start any token`}},
		{"unknown anchor", "images: *nope\n", []string{`images.yaml: invalid YAML: unknown anchor 'nope' referenced`}},
		{"two documents", "images: []\n---\nimages: []\n", []string{`images.yaml:3: a second YAML document`}},
		{"not a mapping", "- image: nginx\n", []string{`images.yaml:1: top level: must be a mapping, got a list`}},
		{"images not a list", "images: nginx\n", []string{`images.yaml:1: images: must be a list, got string "nginx"`}},
		{"entry not a mapping", "images:\n  - nginx\n  -\n", []string{
			`images.yaml:2: images[0]: must be a mapping, got string "nginx"`,
			`images.yaml:3: images[1]: must be a mapping, got null`,
		}},
		{"workloads not a list", "images: []\nworkloads: {namespaces: [shop]}\n", []string{`images.yaml:2: workloads: must be a list, got a mapping`}},
		{"bad workload namespace", "images: []\nworkloads:\n  - namespaces: [Shop]\n", []string{`images.yaml:3: workloads[0].namespaces[0]: invalid namespace name "Shop": `}},
		{"bad workload selector", "images: []\nworkloads:\n  - selector: \"app in (a\"\n", []string{`images.yaml:3: workloads[0].selector: invalid label selector "app in (a": `}},
		{"unknown workload key", "images: []\nworkloads:\n  - namespace: [shop]\n", []string{`images.yaml:3: workloads[0].namespace: unknown key; did you mean namespaces?`}},
		{"workload pull secrets not a bool", "images: []\nworkloads:\n  - usePullSecrets: yes\n", []string{`images.yaml:3: workloads[0].usePullSecrets: must be true or false, got string "yes"`}},
		{"unknown top key", "images: []\nconcurency: 2\n", []string{`images.yaml:2: concurency: unknown key; did you mean concurrency?`}},
		{"unknown key in image", "images:\n  - image: a\n    pullsecrets: [x]\n", []string{`images.yaml:3: images[0].pullsecrets: unknown key; did you mean pullSecrets?`}},
		{"unknown key, no suggestion", "images:\n  - image: a\n    platform: linux/arm64\n", []string{`images.yaml:3: images[0].platform: unknown key`}},
		{"unknown key in retry", "images: []\nretry: {initial: 1s}\n", []string{`images.yaml:2: retry.initial: unknown key`}},
		{"odd key quoted", "images: []\n\"a b\": 1\n", []string{`images.yaml:2: ["a b"]: unknown key`}},
		{"non-string key", "images: []\n[a]: 1\n", []string{`images.yaml:2: top level: keys must be strings, got a list`}},
		{"duplicate top key", "images: []\npin: true\npin: false\n", []string{`images.yaml:3: pin: duplicate key, first at line 2`}},
		{"duplicate key in image", "images:\n  - image: a\n    image: b\n", []string{`images.yaml:3: images[0].image: duplicate key, first at line 2`}},
		{"duplicate selector key", "images:\n  - image: a\n    nodeSelector:\n      gpu: \"1\"\n      gpu: \"2\"\n", []string{
			`images.yaml:5: images[0].nodeSelector.gpu: duplicate key, first at line 4`,
		}},
		{"duplicate image", "images:\n  - image: nginx\n  - image: busybox\n  - image: docker.io/library/nginx:latest\n", []string{
			`images.yaml:4: images[2].image: duplicate image docker.io/library/nginx:latest, first listed as images[0] at line 2`,
		}},
		{"duplicate through an alias", "images:\n  - &n {image: nginx}\n  - *n\n", []string{
			`images.yaml:3: images[1].image: duplicate image docker.io/library/nginx:latest, first listed as images[0] at line 2`,
		}},
		{"image missing", "images:\n  - pullSecrets: [a]\n", []string{`images.yaml:2: images[0]: image is required`}},
		{"image null", "images:\n  - image:\n", []string{`images.yaml:2: images[0]: image is required`}},
		{"image not a string", "images:\n  - image: 3\n", []string{`images.yaml:2: images[0].image: must be a string, got integer 3`}},
		{"uppercase reference", "images:\n  - image: a\n  - image: b\n  - image: Foo:bar\n", []string{
			`images.yaml:4: images[2].image: invalid reference "Foo:bar": invalid reference format: repository name (library/Foo) must be lowercase`,
		}},
		{"empty reference", "images:\n  - image: ''\n", []string{`images.yaml:2: images[0].image: invalid reference "": invalid reference format`}},
		{"short digest", "images:\n  - image: nginx@sha256:abc\n", []string{`images.yaml:2: images[0].image: invalid reference "nginx@sha256:abc"`}},
		{"bad digest algorithm", "images:\n  - image: nginx@md5:0123456789abcdef0123456789abcdef\n", []string{`images.yaml:2: images[0].image: invalid reference "nginx@md5:`}},
		{"bad tag", "images:\n  - image: nginx:-x\n", []string{`images.yaml:2: images[0].image: invalid reference "nginx:-x"`}},
		{"scheme in reference", "images:\n  - image: https://corp.example/a\n", []string{`images.yaml:2: images[0].image: invalid reference "https://corp.example/a"`}},
		{"pullSecrets not a list", "images:\n  - image: a\n    pullSecrets: regcred\n", []string{
			`images.yaml:3: images[0].pullSecrets: must be a list of Secret names, got string "regcred"`,
		}},
		{"bad Secret name", "images:\n  - image: a\n    pullSecrets:\n      - ok\n      - Reg_Cred\n      - 7\n", []string{
			`images.yaml:5: images[0].pullSecrets[1]: invalid Secret name "Reg_Cred": a lowercase RFC 1123 subdomain`,
			`images.yaml:6: images[0].pullSecrets[2]: must be a string, got integer 7`,
		}},
		{"bad ServiceAccount name", "images:\n  - image: a\n    serviceAccount: -builder\n", []string{
			`images.yaml:3: images[0].serviceAccount: invalid ServiceAccount name "-builder"`,
		}},
		{"selector not a mapping", "images:\n  - image: a\n    nodeSelector: [gpu]\n", []string{
			`images.yaml:3: images[0].nodeSelector: must be a mapping, got a list`,
		}},
		{"selector value not a string", "images:\n  - image: a\n    nodeSelector:\n      gpu: true\n      count: 2\n", []string{
			`images.yaml:4: images[0].nodeSelector.gpu: must be a string, got boolean true`,
			`images.yaml:5: images[0].nodeSelector.count: must be a string, got integer 2`,
		}},
		{"bad label key and value", "images:\n  - image: a\n    nodeSelector: {\"-x\": a, y: \"a b\"}\n", []string{
			`images.yaml:3: images[0].nodeSelector["-x"]: invalid label key "-x": name part must consist of alphanumeric characters`,
			`images.yaml:3: images[0].nodeSelector.y: invalid label value "a b": a valid label must be an empty string or consist of`,
		}},
		{"absolute archive", "images:\n  - image: a\n    archive: /tmp/a.tar\n", []string{`images.yaml:3: images[0].archive: must be relative to archiveDir, got "/tmp/a.tar"`}},
		{"archive escapes", "images:\n  - image: a\n    archive: ../a.tar\n", []string{`images.yaml:3: images[0].archive: must not contain "..", got "../a.tar"`}},
		{"archive has ..", "images:\n  - image: a\n    archive: a/../b.tar\n", []string{`images.yaml:3: images[0].archive: must not contain ".."`}},
		{"archive is the directory", "images:\n  - image: a\n    archive: .\n", []string{`images.yaml:3: images[0].archive: must name a file in archiveDir, got "."`}},
		{"empty archive", "images:\n  - image: a\n    archive: ''\n", []string{`images.yaml:3: images[0].archive: must name a file in archiveDir, got ""`}},
		{"archive and mirror", "images:\n  - image: a\n    archive: a.tar\n    mirror: m.corp\n", []string{
			`images.yaml:2: images[0]: has both archive and mirror; an image comes from one place`,
		}},
		{"mirror with scheme", "images:\n  - image: a\n    mirror: https://m.corp\n", []string{
			`images.yaml:3: images[0].mirror: must be a registry host[:port] with an optional path, got "https://m.corp"`,
		}},
		{"mirror without a dot or port", "images:\n  - image: a\n    mirror: registry/k8s\n", []string{
			`images.yaml:3: images[0].mirror: must start with a registry host, got "registry/k8s", which runtimes read as a Docker Hub namespace`,
		}},
		{"mirror with tag", "images:\n  - image: a\n    mirror: m.corp/k8s:v1\n", []string{`images.yaml:3: images[0].mirror: must be a registry host[:port]`}},
		{"mirror with digest", "images:\n  - image: a\n    mirror: m.corp/k8s@" + digest + "\n", []string{`images.yaml:3: images[0].mirror: must be a registry host[:port]`}},
		{"mirror uppercase path", "images:\n  - image: a\n    mirror: m.corp/K8s\n", []string{`images.yaml:3: images[0].mirror: must be a registry host[:port] with an optional path, got "m.corp/K8s": invalid reference format: repository name (K8s/image) must be lowercase`}},
		{"mirror trailing slash", "images:\n  - image: a\n    mirror: m.corp/\n", []string{`images.yaml:3: images[0].mirror: must be a registry host[:port]`}},
		{"sandbox image", "images: []\nsandboxImage: Auto\n", []string{`images.yaml:2: sandboxImage: must be auto, none or an image reference; invalid reference "Auto"`}},
		{"relative archiveDir", "images: []\narchiveDir: archives\n", []string{`images.yaml:2: archiveDir: must be an absolute path, got "archives"`}},
		{"concurrency 0", "images: []\nconcurrency: 0\n", []string{`images.yaml:2: concurrency: must be between 1 and 64, got 0`}},
		{"concurrency 65", "images: []\nconcurrency: 65\n", []string{`images.yaml:2: concurrency: must be between 1 and 64, got 65`}},
		{"concurrency huge", "images: []\nconcurrency: 99999999999999999999\n", []string{`images.yaml:2: concurrency: must be an integer, got number 99999999999999999999`}},
		{"concurrency string", "images: []\nconcurrency: \"3\"\n", []string{`images.yaml:2: concurrency: must be an integer, got string "3"`}},
		{"maxDownloads float", "images: []\nmaxDownloads: 2.5\n", []string{`images.yaml:2: maxDownloads: must be an integer, got number 2.5`}},
		{"maxDownloads negative", "images: []\nmaxDownloads: -1\n", []string{`images.yaml:2: maxDownloads: must be between 1 and 64, got -1`}},
		{"pullVia", "images: []\npullVia: docker\n", []string{`images.yaml:2: pullVia: must be auto, cri or containerd, got "docker"`}},
		{"pullTimeout zero", "images: []\npullTimeout: 0s\n", []string{`images.yaml:2: pullTimeout: must be more than 0, got 0s`}},
		{"pullTimeout negative", "images: []\npullTimeout: -1m\n", []string{`images.yaml:2: pullTimeout: must be more than 0, got -1m`}},
		{"duration without unit", "images: []\nresync: 300\n", []string{`images.yaml:2: resync: must be a duration such as 90s or 5m, got integer 300`}},
		{"duration garbage", "images: []\npullTimeout: soon\n", []string{`images.yaml:2: pullTimeout: must be a duration such as 90s or 5m, got string "soon"`}},
		{"resync too short", "images: []\nresync: 500ms\n", []string{`images.yaml:2: resync: must be at least 1s, got 500ms`}},
		{"retry not a mapping", "images: []\nretry: 2s\n", []string{`images.yaml:2: retry: must be a mapping, got string "2s"`}},
		{"retry zero", "images: []\nretry: {initialDelay: 0s}\n", []string{`images.yaml:2: retry.initialDelay: must be more than 0, got 0s`}},
		{"retry inverted", "images: []\nretry:\n  initialDelay: 1m\n  maxDelay: 10s\n", []string{
			`images.yaml:3: retry: initialDelay 1m0s is longer than maxDelay 10s`,
		}},
		{"retry against a default", "images: []\nretry: {maxDelay: 1s}\n", []string{`images.yaml:2: retry: initialDelay 2s is longer than maxDelay 1s`}},
		{"pin yes", "images: []\npin: yes\n", []string{`images.yaml:2: pin: must be true or false, got string "yes"`}},
		{"pin quoted", "images: []\npin: \"true\"\n", []string{`images.yaml:2: pin: must be true or false, got string "true"`}},
		{"custom tag", "images: []\nsandboxImage: !ref pause\n", []string{`images.yaml:2: sandboxImage: must be a string, got !ref "pause"`}},
		{"verify not a mapping", "images: []\nverify: /etc/keys/cosign.pub\n", []string{`images.yaml:2: verify: must be a mapping, got string "/etc/keys/cosign.pub"`}},
		{"verify without keys", "images: []\nverify: {}\n", []string{`images.yaml:2: verify.keys: required: the public key files`}},
		{"verify keys a string", "images: []\nverify:\n  keys: /etc/keys/cosign.pub\n", []string{`images.yaml:3: verify.keys: must be a list of public key files, got string "/etc/keys/cosign.pub"`}},
		{"verify keys empty", "images: []\nverify:\n  keys: []\n", []string{`images.yaml:3: verify.keys: lists no key: every image would be refused`}},
		{"verify relative key", "images: []\nverify:\n  keys:\n    - /etc/keys/a.pub\n    - cosign.pub\n", []string{`images.yaml:5: verify.keys[1]: must be an absolute path, got "cosign.pub"`}},
		{"verify key not a string", "images: []\nverify:\n  keys: [1]\n", []string{`images.yaml:3: verify.keys[0]: must be a string, got integer 1`}},
		{"verify typo", "images: []\nverify:\n  key: [/k.pub]\n", []string{`images.yaml:3: verify.key: unknown key; did you mean keys?`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkProblems(t, problems(t, tc.yaml), tc.want)
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	const config = `images:
  - image: registry.k8s.io/pause:3.10
  - image: corp.example/Team/app:1.4
    pullSecrets: [regcred, Bad_Secret]
  - image: nginx
    nodeSelector: {gpu: true}
    archive: /abs.tar
  - image: registry.k8s.io/pause:3.10
  - imag: typo
concurrency: 100
pullVia: podman
retry: {initialDelay: 2s, maxDelay: forever}
pin: on
`
	checkProblems(t, problems(t, config), []string{
		`images.yaml:3: images[1].image: invalid reference "corp.example/Team/app:1.4": invalid reference format: repository name (Team/app) must be lowercase`,
		`images.yaml:4: images[1].pullSecrets[1]: invalid Secret name "Bad_Secret"`,
		`images.yaml:6: images[2].nodeSelector.gpu: must be a string, got boolean true`,
		`images.yaml:7: images[2].archive: must be relative to archiveDir, got "/abs.tar"`,
		`images.yaml:8: images[3].image: duplicate image registry.k8s.io/pause:3.10, first listed as images[0] at line 2`,
		`images.yaml:9: images[4].imag: unknown key; did you mean image?`,
		`images.yaml:9: images[4]: image is required`,
		`images.yaml:10: concurrency: must be between 1 and 64, got 100`,
		`images.yaml:11: pullVia: must be auto, cri or containerd, got "podman"`,
		`images.yaml:12: retry.maxDelay: must be a duration such as 90s or 5m, got string "forever"`,
		`images.yaml:13: pin: must be true or false, got string "on"`,
	})
}

func TestNormalizeRef(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "nginx", want: "docker.io/library/nginx:latest"},
		{in: "library/nginx", want: "docker.io/library/nginx:latest"},
		{in: "docker.io/nginx", want: "docker.io/library/nginx:latest"},
		{in: "docker.io/library/nginx:1.27", want: "docker.io/library/nginx:1.27"},
		{in: "index.docker.io/nginx", want: "docker.io/library/nginx:latest"},
		{in: "bitnami/redis:7", want: "docker.io/bitnami/redis:7"},
		{in: "registry.k8s.io/pause:3.10", want: "registry.k8s.io/pause:3.10"},
		{in: "localhost/x", want: "localhost/x:latest"},
		{in: "localhost:5000/x", want: "localhost:5000/x:latest"},
		{in: "127.0.0.1:5000/a/b:tag", want: "127.0.0.1:5000/a/b:tag"},
		{in: "[::1]:5000/a", want: "[::1]:5000/a:latest"},
		{in: "nginx@" + digest, want: "docker.io/library/nginx@" + digest},
		{in: "nginx:1.2@" + digest, want: "docker.io/library/nginx:1.2@" + digest},
		{in: "Nginx", err: "must be lowercase"},
		{in: "corp.example/Team/app", err: "must be lowercase"},
		{in: "", err: "invalid reference format"},
		{in: "nginx@sha256:abc", err: "invalid"},
		{in: "nginx@" + strings.ToUpper(digest), err: "invalid"},
		{in: "nginx:", err: "invalid reference format"},
		{in: " nginx", err: "invalid reference format"},
		{in: strings.TrimPrefix(digest, "sha256:"), err: "cannot specify 64-byte hexadecimal strings"},
	} {
		got, err := config.NormalizeRef(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("NormalizeRef(%q) = %q, %v; want error with %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("NormalizeRef(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if image, err2 := config.Parse("images.yaml", []byte(fmt.Sprintf("images: [{image: %q}]\n", tc.in))); err == nil && (err2 != nil || image.Images[0].Name != got || image.Images[0].Ref != tc.in) {
			t.Errorf("Parse of %q: %+v, %v", tc.in, image, err2)
		}
	}
}

func TestParseLimits(t *testing.T) {
	t.Run("file too large", func(t *testing.T) {
		big := "images: []\n" + strings.Repeat("# padding\n", 110000)
		checkProblems(t, problems(t, big), []string{`images.yaml: config is larger than the limit of 1048576 bytes (1 MiB)`})
	})
	t.Run("too many images", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("images:\n")
		for i := range 10001 {
			fmt.Fprintf(&b, "- image: i%d\n", i)
		}
		checkProblems(t, problems(t, b.String()), []string{`images.yaml:2: images: 10001 images, more than the limit of 10000`})
	})
	t.Run("10000 images", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("images:\n")
		for i := range 10000 {
			fmt.Fprintf(&b, "- {image: corp.example/team/image-%d:1.0, pullSecrets: [regcred], nodeSelector: {pool: gpu}}\n", i)
		}
		cfg, err := config.Parse("images.yaml", []byte(b.String()))
		if err != nil || len(cfg.Images) != 10000 {
			t.Fatalf("%d bytes: %v", b.Len(), err)
		}
	})
	t.Run("billion laughs", func(t *testing.T) {
		bomb := `a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
images: [{image: nginx, pullSecrets: *i}]
`
		start := time.Now()
		checkProblems(t, problems(t, bomb), []string{`images.yaml:1: config is larger than 4 MiB once its aliases are expanded`})
		if d := time.Since(start); d > time.Second {
			t.Errorf("took %v", d)
		}
	})
	t.Run("wide alias bomb through images", func(t *testing.T) {
		// Every entry is small to parse but repeats a 100 KB value.
		value := strings.Repeat("x", 100<<10)
		bomb := "x: &x {image: " + value + "}\nimages: [" + strings.Repeat("*x,", 5000) + "]\n"
		start := time.Now()
		checkProblems(t, problems(t, bomb), []string{`images.yaml:1: config is larger than 4 MiB once its aliases are expanded`})
		if d := time.Since(start); d > time.Second {
			t.Errorf("took %v", d)
		}
	})
	t.Run("alias inside its own anchor", func(t *testing.T) {
		checkProblems(t, problems(t, "a: &a [*a]\nimages: []\n"), []string{`images.yaml:1: config is larger than 4 MiB once its aliases are expanded`})
	})
	t.Run("deep nesting", func(t *testing.T) {
		deep := "images: " + strings.Repeat("[", 20000) + "\n"
		checkProblems(t, problems(t, deep), []string{`images.yaml: invalid YAML: exceeded max depth of 10000`})
	})
	t.Run("long values are shortened", func(t *testing.T) {
		got := problems(t, "images: []\npullVia: "+strings.Repeat("y", 100000)+"\n")
		checkProblems(t, got, []string{`images.yaml:2: pullVia: must be auto, cri or containerd, got "yyyy`})
		if len(got[0]) > 200 {
			t.Errorf("%d bytes: %s", len(got[0]), got[0])
		}
	})
	t.Run("problems are capped", func(t *testing.T) {
		got := problems(t, "images:\n"+strings.Repeat("- image: X\n", 1500))
		if len(got) != 1001 || got[1000] != "images.yaml: and 500 more problems" {
			t.Errorf("%d problems, last %q", len(got), got[len(got)-1])
		}
	})
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	big := filepath.Join(dir, "big.yaml")
	for name, data := range map[string]string{
		good: designExample,
		bad:  "images:\n  - image: Foo\n",
		big:  strings.Repeat("#", 2<<20),
	} {
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	cfg, err := config.Load(good)
	if err != nil || len(cfg.Images) != 4 {
		t.Fatalf("Load(good): %v", err)
	}
	for path, want := range map[string]string{
		bad:                                bad + `:2: images[0].image: invalid reference "Foo"`,
		big:                                big + `: config is larger than the limit`,
		filepath.Join(dir, "missing.yaml"): filepath.Join(dir, "missing.yaml") + ": cannot read config: no such file or directory",
		dir:                                dir + ": cannot read config: is a directory",
	} {
		_, err := config.Load(path)
		var ce *config.Error
		if !errors.As(err, &ce) || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Load(%s) = %v; want a *ConfigError starting %q", path, err, want)
		}
	}
}

// FuzzParse checks that Parse never panics, always explains a refusal
// with one line per problem, and that what it accepts is within bounds.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Parse("f.yaml", data)
		if err != nil {
			var ce *config.Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 || len(ce.Problems) > 1001 {
				t.Fatalf("error %T with %d problems: %v", err, len(ce.Problems), err)
			}
			lines := 1
			for _, lf := range []string{"\n", "\r", "\u0085", "\u2028", "\u2029"} {
				lines += strings.Count(string(data), lf)
			}
			for _, p := range ce.Problems {
				if p.File != "f.yaml" || p.Line < 0 || p.Line > lines || p.Msg == "" || strings.ContainsAny(p.Msg, "\r\n") || len(p.Msg) > 1100 {
					t.Fatalf("bad problem %+v", p)
				}
			}
			return
		}
		if len(cfg.Images) > 10000 {
			t.Fatalf("%d images", len(cfg.Images))
		}
		seen := map[string]bool{}
		for _, img := range cfg.Images {
			if n, err := config.NormalizeRef(img.Name); err != nil || n != img.Name {
				t.Fatalf("name %q normalizes to %q, %v", img.Name, n, err)
			}
			if n, _ := config.NormalizeRef(img.Ref); n != img.Name {
				t.Fatalf("ref %q is %q, name %q", img.Ref, n, img.Name)
			}
			if seen[img.Name] {
				t.Fatalf("duplicate %q", img.Name)
			}
			seen[img.Name] = true
			if img.Line < 1 || img.Archive != "" && (img.Mirror != "" || filepath.IsAbs(img.Archive) || strings.Contains(img.Archive, "..")) {
				t.Fatalf("bad image %+v", img)
			}
			if img.Mirror != "" {
				// The mirror stays the registry of what is pulled from it.
				if n, err := config.NormalizeRef(img.Mirror + "/a"); err != nil || !strings.HasPrefix(n, img.Mirror+"/") {
					t.Fatalf("mirror %q: %q, %v", img.Mirror, n, err)
				}
			}
		}
		if s := cfg.SandboxImage; s != "auto" && s != "none" {
			if n, err := config.NormalizeRef(s); err != nil || n != s {
				t.Fatalf("sandbox image %q normalizes to %q, %v", s, n, err)
			}
		}
		if cfg.Concurrency < 0 || cfg.Concurrency > 64 || cfg.MaxDownloads < 1 || cfg.MaxDownloads > 64 ||
			cfg.PullTimeout <= 0 || cfg.Retry.InitialDelay <= 0 || cfg.Retry.InitialDelay > cfg.Retry.MaxDelay ||
			cfg.Resync < time.Second || !filepath.IsAbs(cfg.ArchiveDir) ||
			(cfg.PullVia != config.PullViaAuto && cfg.PullVia != config.PullViaCRI && cfg.PullVia != config.PullViaContainerd) {
			t.Fatalf("out of bounds: %+v", *cfg)
		}
	})
}

// The one retry schedule: each wait in [d/2, d) for d doubling from
// initialDelay, and never above maxDelay however long it runs.
func TestRetryBackoff(t *testing.T) {
	r := config.Retry{InitialDelay: 2 * time.Second, MaxDelay: 20 * time.Second}
	b := r.Backoff()
	for i, d := range []time.Duration{2, 4, 8, 16, 20, 20, 20} {
		d *= time.Second
		if got := b.Step(); got < d/2 || got >= d {
			t.Errorf("wait %d = %v, want in [%v, %v)", i, got, d/2, d)
		}
	}
	for range 1000 {
		if got := b.Step(); got >= r.MaxDelay {
			t.Fatalf("wait %v at the cap, want below maxDelay %v", got, r.MaxDelay)
		}
	}
}
