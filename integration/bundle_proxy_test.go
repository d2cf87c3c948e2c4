package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestBundleThroughProxy: bundle reaches a real registry through
// HTTP_PROXY, as the nodes' registry clients do, for the registry and its
// Basic challenge alike, and NO_PROXY sends it direct. The registry goes by
// a name under .localhost, which go-containerregistry speaks plain HTTP to
// and net/http, unlike localhost itself, sends to a proxy.
func TestBundleThroughProxy(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	pushed := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "team/app", Tag: "1.0", OwnLayers: 2, LayerSize: 64 << 10}})
	_, port, _ := net.SplitHostPort(reg.Host)
	name := "preloader-test-registry.localhost:" + port

	var mu sync.Mutex
	proxied := 0
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect || r.URL.Host != name {
			http.Error(w, "this proxy knows only "+name+" over plain HTTP", http.StatusBadGateway)
			return
		}
		mu.Lock()
		proxied++
		mu.Unlock()
		out := r.Clone(r.Context())
		out.RequestURI, out.URL.Host, out.Host = "", reg.Host, reg.Host
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	defer proxy.Close()

	dir := t.TempDir()
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(name, testUser, testPassword))
	cfgPath := writeFile(t, dir, "images.yaml", fmt.Sprintf("sandboxImage: none\nimages:\n  - image: %s/team/app:1.0\n", name))
	env := func(noProxy string) []string {
		return []string{"HTTP_PROXY=" + proxy.URL, "http_proxy=" + proxy.URL, "NO_PROXY=" + noProxy, "no_proxy=" + noProxy}
	}

	r := preloader(t, time.Minute, env(""), "bundle", "--config", cfgPath, "-o", dir+"/bundle.tar", "--docker-config", creds)
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("bundle through HTTP_PROXY: want exit 0 (%d requests through the proxy):\n%s", proxied, r)
	}
	mu.Lock()
	through := proxied
	mu.Unlock()
	if through < 3 { // ping, manifest, config and layers
		t.Errorf("%d requests through the proxy, want every one", through)
	}
	t.Logf("bundle of %s: %d requests through HTTP_PROXY", pushed[0].Ref, through)

	r = preloader(t, time.Minute, env(".localhost"), "bundle", "--config", cfgPath, "-o", dir+"/direct.tar", "--docker-config", creds)
	assertNoSecret(t, r.stdout, r.stderr)
	mu.Lock()
	after := proxied
	mu.Unlock()
	if after != through {
		t.Errorf("NO_PROXY=.localhost: %d more requests through the proxy, want none (exit %d):\n%s", after-through, r.code, r)
	}
}
