package integration

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// blobWatch is a registry proxy that holds every blob download for a
// second and records, per blob, how many downloads of it ran at once: the
// registry's view of how many nodes pulled at the same time. A read of a
// blob's tail (the disk budget reading a gzip trailer) is a ranged GET,
// counted apart from downloads.
type blobWatch struct {
	host string

	mu       sync.Mutex
	inFlight map[string]int
	peak     map[string]int
	gets     map[string]int
	tails    map[string]int
}

func startBlobWatch(t *testing.T, target string) *blobWatch {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blobWatch{host: lis.Addr().String(), inFlight: map[string]int{}, peak: map[string]int{}, gets: map[string]int{}, tails: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, digest, isBlob := strings.Cut(r.URL.Path, "/blobs/")
		if !isBlob || r.Method != http.MethodGet {
			rp.ServeHTTP(w, r)
			return
		}
		b.mu.Lock()
		if rg := r.Header.Get("Range"); rg != "" && !strings.HasPrefix(rg, "bytes=0-") {
			b.tails[digest]++
		} else {
			b.gets[digest]++
		}
		b.inFlight[digest]++
		b.peak[digest] = max(b.peak[digest], b.inFlight[digest])
		b.mu.Unlock()
		defer func() {
			b.mu.Lock()
			b.inFlight[digest]--
			b.mu.Unlock()
		}()
		select {
		case <-time.After(time.Second): // a large layer over a slow link
		case <-r.Context().Done():
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return b
}

// TestWavesAgents: three real agents, each with its own containerd 2.x,
// against one kube-apiserver with manifests/ applied, pull one image with
// rollout.maxNodesPulling 1: the registry never serves a blob to two nodes
// at once, and all three end up ready with their slot released.
func TestWavesAgents(t *testing.T) {
	k := harness.StartKube(t)
	c := k.Client
	k.Kubectl(t, "apply", "-k", "../manifests")
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	img := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "team/wave", Tag: "1.0", OwnLayers: 1, LayerSize: 256 << 10}})[0]
	watch := startBlobWatch(t, reg.Host)
	ref := strings.Replace(img.Ref, reg.Host, watch.host, 1)

	cfg := "sandboxImage: none\nresync: 3s\nretry: {initialDelay: 200ms, maxDelay: 2s}\nrollout: {maxNodesPulling: 1}\nimages:\n  - image: " + ref + "\n"
	hash := harness.SetImagesYAML(t, c, cfg)
	nodes := []string{"wave-1", "wave-2", "wave-3"}
	var agents []*harness.Agent
	for _, n := range nodes {
		createNode(t, c, n, nil, nil)
		ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2})
		agents = append(agents, startAgent(t, k.KubeconfigForPodOn(t, agentNS, agentSA, n), n, ctrd))
	}
	start := time.Now()
	for i, n := range nodes {
		agents[i].Eventually(t, 45*time.Second, n+" ready", func() string { return harness.ViewNode(c, n).Shows(hash, 1, 1) })
	}
	t.Logf("3 nodes ready %s after the agents started", time.Since(start).Round(time.Millisecond))

	watch.mu.Lock()
	defer watch.mu.Unlock()
	for digest, peak := range watch.peak {
		t.Logf("blob %s: %d downloads and %d tail reads, at most %d at once", digest[:19], watch.gets[digest], watch.tails[digest], peak)
		if peak > 1 {
			t.Errorf("blob %s served to %d nodes at once with maxNodesPulling 1", digest, peak)
		}
	}
	if layer := img.Layers[0]; watch.gets[layer] != len(nodes) {
		t.Errorf("layer downloaded %d times, want once per node (%d)", watch.gets[layer], len(nodes))
	}
	leases, err := c.CoordinationV1().Leases(agentNS).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases.Items {
		if l.Spec.HolderIdentity != nil {
			t.Errorf("lease %s still held by %s", l.Name, *l.Spec.HolderIdentity)
		}
	}
}
