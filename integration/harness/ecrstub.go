package harness

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"
)

const (
	// ECRPassword is what the ECR stub hands out, base64("AWS:"+it) as
	// ECR does; a registry behind the ECR names accepts it for user AWS.
	ECRPassword = "ecr-token-Hq4vX9-never-print-me"
	// ECRDeniedDetail is in the stub's AccessDenied answer, which the
	// plugin prints to its stderr: it must reach no output either.
	ECRDeniedDetail = "denied-detail-Wm2kP7-from-stderr"
	// ECRAllowedRegistry is an ECR registry whose token the stub grants;
	// ECRDeniedRegistry's region is denied.
	ECRAllowedRegistry = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
	ECRDeniedRegistry  = "210987654321.dkr.ecr.eu-west-1.amazonaws.com"
)

// ECRStub is ECR's GetAuthorizationToken (AWS JSON 1.1) on 127.0.0.1:
// accounts in us-east-1 get a token, eu-west-1 is denied. It counts the
// calls of each region, taken from the request's SigV4 credential scope.
type ECRStub struct {
	*httptest.Server
	mu    sync.Mutex
	calls map[string]int
}

var sigV4Region = regexp.MustCompile(`Credential=[^/]+/[0-9]{8}/([a-z0-9-]+)/ecr/aws4_request`)

// StartECRStub serves the stub until the test ends.
func StartECRStub(t *testing.T) *ECRStub {
	s := &ECRStub{calls: map[string]int{}}
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
			fmt.Fprintf(w, `{"__type":"AccessDeniedException","message":"User is not authorized to perform ecr:GetAuthorizationToken (%s)"}`, ECRDeniedDetail)
			return
		}
		token := base64.StdEncoding.EncodeToString([]byte("AWS:" + ECRPassword))
		fmt.Fprintf(w, `{"authorizationData":[{"authorizationToken":%q,"expiresAt":%d,"proxyEndpoint":"https://%s"}]}`,
			token, time.Now().Add(12*time.Hour).Unix(), ECRAllowedRegistry)
	}))
	t.Cleanup(s.Close)
	return s
}

// Calls is how many GetAuthorizationToken calls region has had.
func (s *ECRStub) Calls(region string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[region]
}

// ProviderConfig is a CredentialProviderConfig that runs the real
// ecr-credential-provider against the stub with static test keys. The
// SDK's shared config files point into dir (absent), so the machine's
// ~/.aws plays no part.
func (s *ECRStub) ProviderConfig(dir string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
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
`, s.URL, filepath.Join(dir, "aws-config"), filepath.Join(dir, "aws-credentials"))
}
