package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

const (
	testUser     = "alice"
	testPassword = "pw-Zq8vX3-never-print-me"
)

// flavors are the runtimes the tests without a kubelet run on: containerd
// 2.x, and 1.6 as legacy coverage (kubelets up to 1.35 still run on it).
var flavors = []harness.Flavor{harness.Containerd2, harness.Containerd16}

type onceResult struct {
	Runtime struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"runtime"`
	Images []struct {
		Image    string `json:"image"`
		Status   string `json:"status"`
		Via      string `json:"via"`
		Reason   string `json:"reason"`
		Error    string `json:"error"`
		Size     uint64 `json:"sizeBytes"`
		Attempts int    `json:"attempts"`
	} `json:"images"`
}

func parseOnce(t *testing.T, r run) onceResult {
	t.Helper()
	var out onceResult
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, r)
	}
	return out
}

func (o onceResult) status(image string) (status, reason string) {
	for _, i := range o.Images {
		if i.Image == image {
			return i.Status, i.Reason
		}
	}
	return "absent from output", ""
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func imagesYAML(sandbox string, refs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "sandboxImage: %s\nretry: {initialDelay: 200ms, maxDelay: 1s}\nimages:\n", sandbox)
	for _, r := range refs {
		fmt.Fprintf(&b, "  - image: %s\n", r)
	}
	return b.String()
}

// assertPresent asks the runtime the way the kubelet does.
func assertPresent(t *testing.T, endpoint string, refs ...string) {
	t.Helper()
	ctx := context.Background()
	c, err := cri.Connect(ctx, endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, ref := range refs {
		img, err := c.ImageStatus(ctx, ref)
		if err != nil || img == nil {
			t.Errorf("CRI ImageStatus(%s) = %v, %v; want present", ref, img, err)
		}
	}
}

// assertRuntime checks that once's output names the runtime at endpoint,
// name, as its CRI Version call does.
func assertRuntime(t *testing.T, out onceResult, endpoint, name string) {
	t.Helper()
	c, err := cri.Connect(context.Background(), endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if out.Runtime.Name != name || out.Runtime.Name != c.RuntimeName || out.Runtime.Version != c.RuntimeVersion {
		t.Errorf("output names runtime %+v, want %s %s as the CRI says", out.Runtime, c.RuntimeName, c.RuntimeVersion)
	}
}

// assertNoSecret fails if anything a process printed holds the password or
// an auth string derived from it.
func assertNoSecret(t *testing.T, texts ...string) {
	t.Helper()
	harness.AssertNoSecret(t, testUser, testPassword, texts...)
}

func TestOnce(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testOnce(t, flavor) })
	}
}

func testOnce(t *testing.T, flavor harness.Flavor) {
	open := harness.StartRegistry(t, harness.RegistryOptions{})
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	secure := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, TLS: true})

	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	pub := harness.PushTestImages(t, open, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
		{Repo: "team/tool", Tag: "2.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
	})
	priv := harness.PushTestImages(t, private, []harness.ImageSpec{{Repo: "corp/secret", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10}})[0]
	tls := harness.PushTestImages(t, secure, []harness.ImageSpec{{Repo: "corp/tls", Tag: "1.0", OwnLayers: 1, LayerSize: 32 << 10}})[0]

	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: flavor, SandboxImage: pause.Ref})
	secure.TrustIn(ctrd)
	// containerd 2.x does not report its sandbox image over the CRI: point
	// the documented fallback at this containerd's config file.
	env := []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}
	dir := t.TempDir()
	var printed []string
	once := func(t *testing.T, timeout time.Duration, args ...string) run {
		t.Helper()
		r := preloader(t, timeout, env, append([]string{"once"}, args...)...)
		printed = append(printed, r.stdout, r.stderr)
		return r
	}
	t.Cleanup(func() { assertNoSecret(t, printed...) })

	t.Run("tag and digest references, sandbox image from the runtime", func(t *testing.T) {
		byDigest := open.Host + "/team/tool@" + pub[1].Digest
		cfg := writeFile(t, dir, "public.yaml", imagesYAML("auto", pub[0].Ref, byDigest))
		r := once(t, 2*time.Minute, "--config", cfg, "-o", "json")
		if r.code != 0 {
			t.Fatalf("want exit 0:\n%s", r)
		}
		out := parseOnce(t, r)
		for _, ref := range []string{pause.Ref, pub[0].Ref, byDigest} {
			if st, reason := out.status(ref); st != "pulled" {
				t.Errorf("%s: %s %s, want pulled\n%s", ref, st, reason, r)
			}
		}
		assertPresent(t, ctrd.Endpoint, pause.Ref, pub[0].Ref, byDigest)
		assertRuntime(t, out, ctrd.Endpoint, "containerd")
		// Built from the module proxy, it says "2.4.2+unknown".
		if want := strings.TrimPrefix(harness.Containerd2Version, "v"); flavor == harness.Containerd2 && !strings.HasPrefix(out.Runtime.Version, want) {
			t.Errorf("runtime version %q, want the harness's containerd %s", out.Runtime.Version, want)
		}

		pullsBefore := pullCount(t, ctrd)
		r = once(t, time.Minute, "--config", cfg)
		if r.code != 0 {
			t.Fatalf("second run: want exit 0:\n%s", r)
		}
		if got := strings.Count(r.stdout, " present "); got != 3 {
			t.Errorf("second run: %d images present in the table, want 3\n%s", got, r)
		}
		if pulls := pullCount(t, ctrd); pulls != pullsBefore {
			t.Errorf("second run made %d PullImage calls, want 0", pulls-pullsBefore)
		}
	})

	t.Run("private image: unauthorized without credentials, pulled with a docker config", func(t *testing.T) {
		cfg := writeFile(t, dir, "private.yaml", imagesYAML("none", priv.Ref))
		r := once(t, time.Minute, "--config", cfg, "-o", "json", "--docker-config", writeFile(t, dir, "empty.json", `{"auths":{}}`))
		if r.code != 1 {
			t.Fatalf("want exit 1:\n%s", r)
		}
		if st, reason := parseOnce(t, r).status(priv.Ref); st != "failed" || reason != "unauthorized" {
			t.Errorf("without credentials: %s %q, want failed unauthorized\n%s", st, reason, r)
		}

		wrong := writeFile(t, dir, "wrong.json", harness.DockerConfigJSON(private.Host, testUser, "not-the-password"))
		right := writeFile(t, dir, "config.json", harness.DockerConfigJSON(private.Host, testUser, testPassword))
		// The wrong credential is tried too and does not stop the right one.
		r = once(t, time.Minute, "--config", cfg, "-o", "json", "--docker-config", wrong, "--docker-config", right)
		if r.code != 0 {
			t.Fatalf("with credentials: want exit 0:\n%s", r)
		}
		assertPresent(t, ctrd.Endpoint, priv.Ref)
	})

	t.Run("legacy .dockercfg and TLS registry with a custom CA", func(t *testing.T) {
		auth := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPassword))
		legacy := writeFile(t, dir, ".dockercfg", fmt.Sprintf(`{"https://%s":{"auth":%q,"email":""}}`, secure.Host, auth))
		cfg := writeFile(t, dir, "tls.yaml", imagesYAML("none", tls.Ref))
		r := once(t, time.Minute, "--config", cfg, "--docker-config", legacy)
		if r.code != 0 {
			t.Fatalf("want exit 0:\n%s", r)
		}
		assertPresent(t, ctrd.Endpoint, tls.Ref)
	})

	t.Run("nonexistent image fails after one attempt", func(t *testing.T) {
		ref := open.Host + "/no/such:image"
		cfg := writeFile(t, dir, "missing.yaml", imagesYAML("none", ref))
		r := once(t, time.Minute, "--config", cfg, "-o", "json")
		if r.code != 1 {
			t.Fatalf("want exit 1:\n%s", r)
		}
		out := parseOnce(t, r)
		if st, reason := out.status(ref); st != "failed" || reason != "not found" {
			t.Errorf("%s %q, want failed \"not found\"\n%s", st, reason, r)
		}
		if out.Images[0].Attempts != 1 {
			t.Errorf("attempts = %d, want 1", out.Images[0].Attempts)
		}
	})

	t.Run("registry down: retries back off, exit 1 at --timeout", func(t *testing.T) {
		down := harness.StartRegistry(t, harness.RegistryOptions{})
		img := harness.PushTestImages(t, down, []harness.ImageSpec{{Repo: "gone/app", Tag: "1", OwnLayers: 1, LayerSize: 4 << 10}})[0]
		down.Stop()
		cfg := writeFile(t, dir, "down.yaml", imagesYAML("none", img.Ref))
		start := time.Now()
		r := once(t, time.Minute, "--config", cfg, "--timeout", "6s", "-o", "json")
		took := time.Since(start)
		if r.code != 1 {
			t.Fatalf("want exit 1:\n%s", r)
		}
		if took < 5*time.Second || took > 15*time.Second {
			t.Errorf("run took %s, want about the 6s timeout", took)
		}
		retries := regexp.MustCompile(`retryIn=(\S+)`).FindAllStringSubmatch(r.stderr, -1)
		if len(retries) < 3 {
			t.Fatalf("%d retries logged, want several\n%s", len(retries), r)
		}
		first, _ := time.ParseDuration(retries[0][1])
		last, _ := time.ParseDuration(retries[len(retries)-1][1])
		if last <= first {
			t.Errorf("retry delays did not grow: first %s, last %s", first, last)
		}
		if st, reason := parseOnce(t, r).status(img.Ref); st != "failed" || reason != "registry unreachable" {
			t.Errorf("%s %q, want failed \"registry unreachable\"\n%s", st, reason, r)
		}
	})

	t.Run("invalid config is exit 2 with file:line", func(t *testing.T) {
		tests := []struct{ name, yaml, want string }{
			{"malformed.yaml", "images:\n  - image: [a\n", "malformed.yaml:2"},
			{"unknown.yaml", "images:\n  - image: a:1\n    pulSecrets: [x]\n", "unknown.yaml:3"},
			{"badref.yaml", "images:\n  - image: a:1\n  - image: corp.example/Team/app:1\n", "badref.yaml:3"},
		}
		for _, tt := range tests {
			r := once(t, time.Minute, "--config", writeFile(t, dir, tt.name, tt.yaml))
			if r.code != 2 || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("%s: want exit 2 naming %s:\n%s", tt.name, tt.want, r)
			}
		}
	})
}

// pullCount counts the PullImage requests containerd logged: proof from
// the runtime's side that a run pulled nothing.
func pullCount(t *testing.T, ctrd *harness.Containerd) int {
	t.Helper()
	log, err := os.ReadFile(ctrd.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(log), "PullImage \"")
}

func TestOnceRuntimeUnreachable(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "images.yaml", "images:\n  - image: a:1\n")
	sock := filepath.Join(dir, "nothing.sock")
	r := preloader(t, time.Minute, nil, "once", "--config", cfg, "--cri-endpoint", "unix://"+sock)
	if r.code != 3 || !strings.Contains(r.stderr, sock) {
		t.Errorf("want exit 3 naming %s:\n%s", sock, r)
	}
}
