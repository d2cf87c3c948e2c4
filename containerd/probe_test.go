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
	// A silent registry never answers: it holds each request until the
	// prober gives it up, so that only the prober's deadline decides.
	registry := func(silent bool) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			if r.URL.Path != "/v2/" {
				t.Errorf("asked %s, want /v2/", r.URL.Path)
			}
			if silent {
				<-r.Context().Done()
				return
			}
			w.WriteHeader(http.StatusUnauthorized)
		}))
		t.Cleanup(s.Close)
		return s
	}
	c := &Client{}
	ctx := context.Background()

	near := strings.TrimPrefix(registry(false).URL, "http://")
	if ok, took, err := c.RegistryNear(ctx, near+"/a:1", time.Second); err != nil || !ok || took <= 0 || requests.Load() > nearProbes {
		t.Errorf("near registry: %v in %v, %v after %d requests; want near", ok, took, err, requests.Load())
	}

	// Far: every probe is given up after its deadline, so judging takes at
	// least nearProbes deadlines. How many probes reach the server is not
	// counted exactly: one given up before its request was read never does.
	requests.Store(0)
	far := strings.TrimPrefix(registry(true).URL, "http://")
	const deadline = 20 * time.Millisecond
	start := time.Now()
	if ok, _, err := c.RegistryNear(ctx, far+"/a:1", deadline); err != nil || ok || requests.Load() > nearProbes {
		t.Errorf("far registry: %v, %v after %d requests; want far after at most %d", ok, err, requests.Load(), nearProbes)
	}
	if took := time.Since(start); took < nearProbes*deadline || took > 5*time.Second {
		t.Errorf("far registry took %v to judge, want %d deadlines of %v", took, nearProbes, deadline)
	}

	gone := registry(false)
	gone.Close()
	if ok, _, err := c.RegistryNear(ctx, strings.TrimPrefix(gone.URL, "http://")+"/a:1", time.Second); err == nil || ok {
		t.Errorf("closed registry: %v, %v; want an error", ok, err)
	}
}
