package containerd

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A registry is near at its first answer within the time given, far once
// each of its requests has been given up, and an error when it cannot be
// reached; only /v2/ is asked, and its status does not matter.
func TestRegistryNear(t *testing.T) {
	var requests atomic.Int32
	registry := func(delay time.Duration) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			if r.URL.Path != "/v2/" {
				t.Errorf("asked %s, want /v2/", r.URL.Path)
			}
			time.Sleep(delay)
			w.WriteHeader(http.StatusUnauthorized)
		}))
		t.Cleanup(s.Close)
		return s
	}
	c := &Client{}
	ctx := context.Background()

	near := strings.TrimPrefix(registry(0).URL, "http://")
	if ok, took, err := c.RegistryNear(ctx, near+"/a:1", time.Second); err != nil || !ok || took <= 0 || requests.Load() > nearProbes {
		t.Errorf("near registry: %v in %v, %v after %d requests; want near", ok, took, err, requests.Load())
	}

	requests.Store(0)
	far := strings.TrimPrefix(registry(50*time.Millisecond).URL, "http://")
	start := time.Now()
	if ok, _, err := c.RegistryNear(ctx, far+"/a:1", 5*time.Millisecond); err != nil || ok || requests.Load() != nearProbes {
		t.Errorf("far registry: %v, %v after %d requests; want far after %d", ok, err, requests.Load(), nearProbes)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("far registry took %v to judge, want about %v", took, nearProbes*5*time.Millisecond)
	}

	gone := registry(0)
	gone.Close()
	if ok, _, err := c.RegistryNear(ctx, strings.TrimPrefix(gone.URL, "http://")+"/a:1", time.Second); err == nil || ok {
		t.Errorf("closed registry: %v, %v; want an error", ok, err)
	}
}
