// Package release tests `make release` (goreleaser with .goreleaser.yaml)
// the way a user meets its output: the krew manifest, the archives it names
// and the kubectl plugin in them.
package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// krewVersion is the krew whose validator and installer check the manifest.
const krewVersion = "v0.4.3"

const version = "v0.0.1-releasetest"

// manifest is the part of krew's Plugin type the release writes. Decoding
// with KnownFields makes any other (misspelt) field an error.
type manifest struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec struct {
		Version          string     `yaml:"version"`
		Homepage         string     `yaml:"homepage"`
		ShortDescription string     `yaml:"shortDescription"`
		Description      string     `yaml:"description"`
		Caveats          string     `yaml:"caveats"`
		Platforms        []platform `yaml:"platforms"`
	} `yaml:"spec"`
}

type platform struct {
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	URI    string `yaml:"uri"`
	Sha256 string `yaml:"sha256"`
	Bin    string `yaml:"bin"`
	Files  []struct {
		From string `yaml:"from"`
		To   string `yaml:"to"`
	} `yaml:"files"`
}

// strict is the repository's rule: under CI a missing tool fails the test.
func strict() bool {
	return os.Getenv("CI") == "true" || os.Getenv("PRELOADER_REQUIRE_INTEGRATION") == "1"
}

func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	if strict() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// platforms are the os/arch pairs a release ships, as krew's selectors
// name them.
var platforms = []string{"darwin/amd64", "darwin/arm64", "linux/amd64", "linux/arm64"}

// release runs `make release` as a person does: every platform, so a
// package that does not build for one of them fails here.
func release(t *testing.T, out string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "make", "-C", "../..", "release", "VERSION="+version, "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, b)
	}
}

func TestRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary: not with -short")
	}
	out := t.TempDir()
	release(t, out)

	raw, err := os.ReadFile(filepath.Join(out, "krew", "preload.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// Nothing left for a person to fill in.
	if m := regexp.MustCompile(`(?i)\$\{?\w|<[a-z_-]+>|TODO|FIXME|placeholder|changeme|REPLACE|x{6}|0{64}`).Find(raw); m != nil {
		t.Errorf("manifest holds placeholder text %q:\n%s", m, raw)
	}
	var m manifest
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("manifest is not the YAML of a krew Plugin: %v\n%s", err, raw)
	}
	if m.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || m.Kind != "Plugin" ||
		m.Metadata.Name != "preload" || m.Spec.Version != version {
		t.Errorf("manifest header: %s %s %s %s", m.APIVersion, m.Kind, m.Metadata.Name, m.Spec.Version)
	}
	if m.Spec.Homepage == "" || m.Spec.ShortDescription == "" || m.Spec.Description == "" {
		t.Errorf("manifest lacks homepage, shortDescription or description:\n%s", raw)
	}

	sums, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	// SHA256SUMS in sha256sum's format, one line per archive, and nothing else.
	listed := map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(string(sums), "\n"), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not sha256sum's\n%s", line, sums)
		}
		listed[name] = sum
	}
	if len(listed) != len(platforms) {
		t.Errorf("SHA256SUMS lists %d files, want the %d archives:\n%s", len(listed), len(platforms), sums)
	}

	var shipped, entries []string
	var archive string
	for _, p := range m.Spec.Platforms {
		l := p.Selector.MatchLabels
		osArch := l["os"] + "/" + l["arch"]
		shipped = append(shipped, osArch)
		name := "kube-preloader_" + version + "_" + l["os"] + "_" + l["arch"] + ".tar.gz"
		if want := "https://github.com/kube-preloader/kube-preloader/releases/download/" + version + "/" + name; p.URI != want {
			t.Errorf("%s: uri %s, want %s", osArch, p.URI, want)
		}
		if len(l) != 2 {
			t.Errorf("%s: selector %v, want os and arch only", osArch, l)
		}
		if p.Bin != "kubectl-preload" {
			t.Errorf("%s: bin %q, want kubectl-preload", osArch, p.Bin)
		}
		file := filepath.Join(out, path.Base(p.URI))
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%s: the archive the manifest names: %v", osArch, err)
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != p.Sha256 {
			t.Errorf("%s: manifest sha256 %s, archive's %s", osArch, p.Sha256, got)
		} else if listed[name] != got {
			t.Errorf("%s: SHA256SUMS has %q for %s, the archive's is %s", osArch, listed[name], name, got)
		}
		// Every archive holds the plugin, root-owned; only this machine's runs here.
		bin := filepath.Join(t.TempDir(), "kubectl-preload")
		names := untar(t, b, "kubectl-preload", bin)
		if osArch == runtime.GOOS+"/"+runtime.GOARCH {
			archive, entries = file, names
			if got := run(t, bin, "version"); got != version {
				t.Errorf("kubectl-preload version printed %q, want %q", got, version)
			}
		}
	}
	sort.Strings(shipped)
	if strings.Join(shipped, " ") != strings.Join(platforms, " ") {
		t.Errorf("manifest platforms %v, want %v", shipped, platforms)
	}
	if archive == "" {
		t.Fatalf("no archive for this machine, %s/%s, to install", runtime.GOOS, runtime.GOARCH)
	}

	// Reproducible: a second run gives the same bytes, so anyone can check the sum.
	again := t.TempDir()
	release(t, again)
	if b, err := os.ReadFile(filepath.Join(again, "SHA256SUMS")); err != nil || !bytes.Equal(b, sums) {
		t.Errorf("second run's SHA256SUMS differ (%v):\n%s\nfirst:\n%s", err, b, sums)
	}

	krew(t, filepath.Join(out, "krew", "preload.yaml"), archive, entries)
}

// untar checks each entry is owned by root with a fixed mode, writes the one
// named bin to dst and returns the sorted entry names.
func untar(t *testing.T, data []byte, bin, dst string) []string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || h.Typeflag != tar.TypeReg {
			t.Errorf("%s: uid %d gid %d type %c, want a root-owned file", h.Name, h.Uid, h.Gid, h.Typeflag)
		}
		if h.Name != bin {
			continue
		}
		if h.Mode != 0o755 {
			t.Errorf("%s: mode %o, want 755", h.Name, h.Mode)
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, os.FileMode(h.Mode))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, tr); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(dst); err != nil {
		t.Fatalf("archive has no %s: %v (entries %v)", bin, err, names)
	}
	sort.Strings(names)
	return names
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, b, stderr.Bytes())
	}
	return strings.TrimSpace(string(b))
}

// krew checks the manifest with krew's own tools: validate-krew-manifest's
// structural checks (its install step downloads the uri, which does not
// exist before the release is published), then `krew install --archive`,
// which verifies the archive's sha256, extracts it, moves the files the
// manifest names (all of them when it names none) and links the plugin the
// way a user's `kubectl krew install preload` does; kubectl then runs it.
func krew(t *testing.T, manifest, archive string, entries []string) {
	gobin := t.TempDir()
	for _, tool := range []string{"validate-krew-manifest", "krew"} {
		cmd := exec.CommandContext(t.Context(), "go", "install", "sigs.k8s.io/krew/cmd/"+tool+"@"+krewVersion)
		cmd.Dir = gobin // outside this module: pkg@version ignores go.mod anyway
		cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=")
		if b, err := cmd.CombinedOutput(); err != nil {
			missing(t, "go install krew %s tools (module proxy): %v\n%s", krewVersion, err, b)
		}
	}
	cmd := exec.CommandContext(t.Context(), filepath.Join(gobin, "validate-krew-manifest"), "-manifest", manifest, "-skip-install")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("validate-krew-manifest: %v\n%s", err, b)
	}

	root := t.TempDir()
	cmd = exec.CommandContext(t.Context(), filepath.Join(gobin, "krew"), "install", "--manifest", manifest, "--archive", archive)
	cmd.Env = append(os.Environ(), "KREW_ROOT="+root, "KREW_OS="+runtime.GOOS, "KREW_ARCH="+runtime.GOARCH, "KREW_NO_UPGRADE_CHECK=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("krew install: %v\n%s", err, b)
	}
	if got := run(t, filepath.Join(root, "bin", "kubectl-preload"), "version"); got != version {
		t.Errorf("krew-installed kubectl-preload version printed %q, want %q", got, version)
	}
	installed, err := os.ReadDir(filepath.Join(root, "store", "preload", version))
	if err != nil {
		t.Fatalf("krew's install directory: %v", err)
	}
	var names []string
	for _, e := range installed {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != strings.Join(entries, " ") {
		t.Errorf("krew installed %v, the archive holds %v", names, entries)
	}

	kubectl := kubectlBinary()
	if kubectl == "" {
		missing(t, "no kubectl (make deps builds one) to run `kubectl preload version`")
	}
	cmd = exec.CommandContext(t.Context(), kubectl, "preload", "version")
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(root, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	b, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(b)) != version {
		t.Errorf("kubectl preload version: %v, printed %q, want %q", err, b, version)
	}
}

// kubectlBinary is the one scripts/build-kube.sh built, else kubectl on PATH.
func kubectlBinary() string {
	cache := os.Getenv("PRELOADER_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "kube-preloader")
	}
	if v := os.Getenv("KUBE_VERSION"); v != "" {
		if p := filepath.Join(cache, "bin", "kubectl-"+v); isExec(p) {
			return p
		}
	}
	if m, _ := filepath.Glob(filepath.Join(cache, "bin", "kubectl-v*")); len(m) > 0 && isExec(m[len(m)-1]) {
		return m[len(m)-1]
	}
	p, _ := exec.LookPath("kubectl")
	return p
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
