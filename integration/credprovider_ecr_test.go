package integration

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

const (
	// ecrPassword is what the ECR stub hands out, base64("AWS:"+it) as
	// ECR does; the registry behind the ECR names accepts it for user AWS.
	ecrPassword = "ecr-token-Hq4vX9-never-print-me"
	// ecrDeniedDetail is in the stub's AccessDenied answer, which the
	// plugin prints to its stderr: it must reach no output either.
	ecrDeniedDetail = "denied-detail-Wm2kP7-from-stderr"
)

// ecrStub is ECR's GetAuthorizationToken (AWS JSON 1.1) on 127.0.0.1:
// accounts in us-east-1 get a token, eu-west-1 is denied. It counts the
// calls of each region, taken from the request's SigV4 credential scope.
type ecrStub struct {
	*httptest.Server
	mu    sync.Mutex
	calls map[string]int
}

var sigV4Region = regexp.MustCompile(`Credential=[^/]+/[0-9]{8}/([a-z0-9-]+)/ecr/aws4_request`)

func startECRStub(t *testing.T) *ecrStub {
	s := &ecrStub{calls: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := sigV4Region.FindStringSubmatch(r.Header.Get("Authorization"))
		if r.Method != http.MethodPost || m == nil ||
			r.Header.Get("X-Amz-Target") != "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken" {
			t.Errorf("ECR stub: unexpected %s %s target %q", r.Method, r.URL, r.Header.Get("X-Amz-Target"))
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		region := m[1]
		s.mu.Lock()
		s.calls[region]++
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		if region != "us-east-1" {
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintf(w, `{"__type":"AccessDeniedException","message":"User is not authorized to perform ecr:GetAuthorizationToken (%s)"}`, ecrDeniedDetail)
			return
		}
		token := base64.StdEncoding.EncodeToString([]byte("AWS:" + ecrPassword))
		fmt.Fprintf(w, `{"authorizationData":[{"authorizationToken":%q,"expiresAt":%d,"proxyEndpoint":"https://%s"}]}`,
			token, time.Now().Add(12*time.Hour).Unix(), "123456789012.dkr.ecr.us-east-1.amazonaws.com")
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *ecrStub) callsIn(region string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[region]
}

// TestOnceECRCredentialProvider: `once` with the real ecr-credential-provider
// and no Secret preloads ECR-named images, with one plugin run for both
// images of a registry (the plugin answers cacheKeyType Registry); an
// account whose GetAuthorizationToken is denied fails its image with
// reason credentials and nothing of the plugin's stderr, the others go on.
// containerd resolves the ECR names to the local registry through
// hosts.toml; the plugin talks to a local ECR stub; nothing leaves
// 127.0.0.1.
//
// pullVia cri is the kubelet's path: the runtime's own pull with the
// credentials in the request; containerd is the preloader's own client,
// which reads the same hosts.toml.
func TestOnceECRCredentialProvider(t *testing.T) {
	harness.Require(t, "ecr-credential-provider "+harness.ECRCredentialProviderVersion+" (scripts/install-deps.sh)", harness.ECRCredentialProviderBinary())
	for _, via := range []string{"cri", "containerd"} {
		t.Run(via, func(t *testing.T) { testOnceECRCredentialProvider(t, via) })
	}
}

func testOnceECRCredentialProvider(t *testing.T, via string) {
	const (
		allowed = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
		denied  = "210987654321.dkr.ecr.eu-west-1.amazonaws.com"
	)
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: "AWS", Password: ecrPassword, TLS: true})
	open := harness.StartRegistry(t, harness.RegistryOptions{})
	pause := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	harness.PushTestImages(t, private, []harness.ImageSpec{
		{Repo: "team/app", Tag: "1.4", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/tool", Tag: "2.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
	})
	pub := harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "other/app", Tag: "1", OwnLayers: 1, LayerSize: 4 << 10}})[0]
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause.Ref})
	// The ECR hosts are served by the local registry as their mirror: the
	// credentials the preloader puts in the CRI request carry no server
	// address, so containerd hands them to a mirror of another name too.
	for _, h := range []string{allowed, denied} {
		writeMirrorTOML(t, ctrd, h, private)
	}
	stub := startECRStub(t)

	dir, bin := t.TempDir(), t.TempDir()
	if err := os.Symlink(harness.ECRCredentialProviderBinary(), filepath.Join(bin, "ecr-credential-provider")); err != nil {
		t.Fatal(err)
	}
	// The SDK's shared config files point into the test's own directory
	// (absent), so the machine's ~/.aws plays no part.
	providers := writeFile(t, dir, "providers.yaml", fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages: ["*.dkr.ecr.*.amazonaws.com"]
    defaultCacheDuration: 12h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
      - {name: AWS_ENDPOINT_URL_ECR, value: %q}
      - {name: AWS_ACCESS_KEY_ID, value: AKIAIOSFODNN7EXAMPLE}
      - {name: AWS_SECRET_ACCESS_KEY, value: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY}
      - {name: AWS_EC2_METADATA_DISABLED, value: "true"}
      - {name: AWS_CONFIG_FILE, value: %q}
      - {name: AWS_SHARED_CREDENTIALS_FILE, value: %q}
`, stub.URL, filepath.Join(dir, "aws-config"), filepath.Join(dir, "aws-credentials")))

	refs := []string{allowed + "/team/app:1.4", allowed + "/team/tool:2.0"}
	deniedRef := denied + "/team/app:1.4"
	env := []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile}
	cfg := writeFile(t, dir, "images.yaml", "pullVia: "+via+"\n"+imagesYAML("none", refs[0], refs[1], deniedRef, pub.Ref))
	r := preloader(t, 2*time.Minute, env, "once", "--config", cfg, "-o", "json",
		"--image-credential-provider-config", providers, "--image-credential-provider-bin-dir", bin)
	harness.AssertNoSecret(t, "AWS", ecrPassword, r.stdout, r.stderr)
	if strings.Contains(r.stdout+r.stderr, ecrDeniedDetail) {
		t.Errorf("output shows the plugin's stderr:\n%s", r)
	}
	if r.code != 1 {
		t.Fatalf("want exit 1 (one image failed):\n%s", r)
	}
	out := parseOnce(t, r)
	for _, ref := range append(refs, pub.Ref) {
		if st, reason := out.status(ref); st != "pulled" {
			t.Errorf("%s: %s %q, want pulled\n%s", ref, st, reason, r)
		}
	}
	assertPresent(t, ctrd.Endpoint, append(refs, pub.Ref)...)
	for _, img := range out.Images {
		if img.Via != via {
			t.Errorf("%s: pulled via %q, want %q\n%s", img.Image, img.Via, via, r)
		}
	}
	st, reason := out.status(deniedRef)
	if want := "credential provider ecr-credential-provider: failed: exit status 1 ("; st != "failed" || !strings.HasPrefix(reason, want) {
		t.Errorf("%s: %s %q, want failed %q…\n%s", deniedRef, st, reason, want, r)
	}
	if n := stub.callsIn("us-east-1"); n != 1 {
		t.Errorf("GetAuthorizationToken called %d times for 2 images of %s, want 1 (cacheKeyType Registry)", n, allowed)
	}
	if n := stub.callsIn("eu-west-1"); n != 1 {
		t.Errorf("GetAuthorizationToken called %d times for %s, want 1", n, denied)
	}
}

// writeMirrorTOML makes reg (its URL and test CA) host's mirror, as an
// admin's certs.d/<host>/hosts.toml would. Its server is a local port
// that refuses, not the host's real name: a pull the mirror does not
// serve fails here instead of leaving 127.0.0.1.
func writeMirrorTOML(t *testing.T, c *harness.Containerd, host string, reg *harness.Registry) {
	t.Helper()
	writeHosts(t, c, host, "https://127.0.0.1:1", reg.URL, reg.CACertPath)
}
