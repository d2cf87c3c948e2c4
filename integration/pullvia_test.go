package integration

import (
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/client"
	digest "github.com/opencontainers/go-digest"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

func TestPullViaContainerd(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testPullViaContainerd(t, flavor) })
	}
}

// pullViaConfig is a config of refs with pullVia and pin set.
func pullViaConfig(via string, extra string, refs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "sandboxImage: none\npullVia: %s\npin: true\nretry: {initialDelay: 200ms, maxDelay: 1s}\n%simages:\n", via, extra)
	for _, r := range refs {
		fmt.Fprintf(&b, "  - image: %s\n", r)
	}
	return b.String()
}

// A private image pulled by the containerd client must look to the kubelet
// exactly like one the CRI pulled: same ListImages/ImageStatus shape, same
// image records and labels, pinned. The node's hosts.toml decides mirrors
// and CAs, as it does for the CRI.
func testPullViaContainerd(t *testing.T, flavor harness.Flavor) {
	private := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	secure := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, TLS: true})
	mirror := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	imgs := harness.PushTestImages(t, private, []harness.ImageSpec{
		{Repo: "team/by-cri", Tag: "1.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
		{Repo: "team/by-client", Tag: "1.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
		{Repo: "team/by-digest", Tag: "1.0", BaseLayers: 2, OwnLayers: 2, LayerSize: 64 << 10},
	})
	byCRI, byClient, byDigest := imgs[0], imgs[1], imgs[2]
	tlsImg := harness.PushTestImages(t, secure, []harness.ImageSpec{{Repo: "corp/tls", Tag: "1.0", OwnLayers: 1, LayerSize: 32 << 10}})[0]
	harness.PushTestImages(t, mirror, []harness.ImageSpec{{Repo: "team/mirrored", Tag: "1.0", OwnLayers: 1, LayerSize: 32 << 10}})
	// Reachable only through the hosts.toml mirror: the name does not resolve.
	const mirrored = "registry.example.test/team/mirrored:1.0"

	node := newTestNode(t, flavor)
	// containerd 2.x does not report its registry config_path; the
	// preloader reads it from the config file, as on a node.
	node.env = append(node.env, noderuntime.ContainerdConfigEnv+"="+node.ctrd.ConfigFile)
	secure.TrustIn(node.ctrd)
	writeHostsTOML(t, node.ctrd, "registry.example.test", mirror.URL)
	auth := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPassword))
	creds := writeFile(t, node.dir, "config.json", fmt.Sprintf(`{"auths":{%q:{"auth":%q},%q:{"auth":%q},%q:{"auth":%q}}}`,
		private.Host, auth, secure.Host, auth, "registry.example.test", auth))

	r := node.once(t, pullViaConfig("cri", "", byCRI.Ref), "--docker-config", creds)
	if r.code != 0 {
		t.Fatalf("pullVia cri: want exit 0:\n%s", r)
	}
	refs := []string{byClient.Ref, byDigest.DigestRef, tlsImg.Ref, mirrored}
	// byCRI stays listed, and so keeps its pin.
	r = node.once(t, pullViaConfig("containerd", "", append([]string{byCRI.Ref}, refs...)...), "--docker-config", creds)
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("pullVia containerd: want exit 0:\n%s", r)
	}
	out := parseOnce(t, r)
	for _, ref := range refs {
		if st, reason := out.status(ref); st != "pulled" {
			t.Errorf("%s: %s %s, want pulled", ref, st, reason)
		}
	}
	assertPresent(t, node.ctrd.Endpoint, refs...)

	t.Run("indistinguishable from a CRI pull", func(t *testing.T) {
		c := node.cri(t)
		for _, img := range []harness.TestImage{byCRI, byClient} {
			st, err := c.ImageStatus(context.Background(), img.Ref)
			if err != nil || st == nil {
				t.Fatalf("ImageStatus(%s) = %v, %v", img.Ref, st, err)
			}
			repo := img.Ref[:strings.LastIndex(img.Ref, ":")]
			if !slices.Equal(st.RepoTags, []string{img.Ref}) || !slices.Equal(st.RepoDigests, []string{repo + "@" + img.Digest}) {
				t.Errorf("%s: tags %v digests %v, want [%s] [%s@%s]", img.Ref, st.RepoTags, st.RepoDigests, img.Ref, repo, img.Digest)
			}
			if flavor == harness.Containerd2 && !st.Pinned {
				t.Errorf("%s: not pinned", img.Ref)
			}
		}
		ctrd := node.containerd(t)
		want, got := recordLabels(t, ctrd, byCRI.Ref), recordLabels(t, ctrd, byClient.Ref)
		if len(want) != 3 || !slices.Equal(labelSets(want), labelSets(got)) {
			t.Errorf("image records: CRI pull %v, containerd client pull %v; want the same three records with the same labels", want, got)
		}
		if w, g := manifestLabelKeys(t, ctrd, byCRI), manifestLabelKeys(t, ctrd, byClient); !slices.Equal(w, g) {
			t.Errorf("manifest content labels: CRI pull %v, containerd client pull %v", w, g)
		}
	})

	t.Run("failures say why, without retries", func(t *testing.T) {
		missing, noCreds := private.Host+"/team/missing:1.0", tlsImg.Ref
		r := node.once(t, pullViaConfig("containerd", "", missing, noCreds)) // no docker config
		assertNoSecret(t, r.stdout, r.stderr)
		out := parseOnce(t, r)
		for ref, want := range map[string]string{missing: "unauthorized", noCreds: "present"} {
			if st, reason := out.status(ref); st != want && reason != want {
				t.Errorf("%s: %s %q, want %s", ref, st, reason, want)
			}
		}
		r = node.once(t, pullViaConfig("containerd", "", missing), "--docker-config", creds)
		for _, img := range parseOnce(t, r).Images {
			if img.Status != "failed" || img.Reason != "not found" || img.Attempts != 1 {
				t.Errorf("%s: %s %q after %d attempts, want failed, not found, 1 attempt\n%s", img.Image, img.Status, img.Reason, img.Attempts, r)
			}
		}
	})

	t.Run("one authentication per pull", func(t *testing.T) {
		// Requests without credentials are those the registry refuses
		// before the client authenticates: a pull whose manifest and blobs
		// share one authorizer is refused once.
		var anonymous atomic.Int32
		proxy := harness.StartProxy(t, private.Host, harness.ProxyOptions{Fault: func(_ http.ResponseWriter, r *http.Request) bool {
			if r.Header.Get("Authorization") == "" && r.URL.Path != "/v2/" {
				anonymous.Add(1)
			}
			return false
		}})
		fresh := harness.PushTestImages(t, private, []harness.ImageSpec{{Repo: "team/auth-once", Tag: "1.0", OwnLayers: 2, LayerSize: 32 << 10}})[0]
		via := strings.Replace(fresh.Ref, private.Host, proxy.Host, 1)
		proxyCreds := writeFile(t, node.dir, "proxy.json", fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, proxy.Host, auth))
		r := node.once(t, pullViaConfig("containerd", "", via), "--docker-config", proxyCreds)
		if st, reason := parseOnce(t, r).status(via); st != "pulled" {
			t.Fatalf("%s: %s %s, want pulled\n%s", via, st, reason, r)
		}
		if n := anonymous.Load(); n != 1 {
			t.Errorf("%d requests without credentials, want 1", n)
		}
	})

	t.Run("digest reference", func(t *testing.T) {
		st, err := node.cri(t).ImageStatus(context.Background(), byDigest.DigestRef)
		if err != nil || st == nil || !slices.Contains(st.RepoDigests, byDigest.DigestRef) {
			t.Errorf("ImageStatus(%s) = %v, %v; want it listed by digest", byDigest.DigestRef, st, err)
		}
	})
}

// writeHostsTOML makes host served by the mirror at url (plain HTTP), as
// an admin's /etc/containerd/certs.d/<host>/hosts.toml would.
func writeHostsTOML(t *testing.T, c *harness.Containerd, host, url string) {
	t.Helper()
	if err := c.WriteHosts(host, "https://"+host, url, ""); err != nil {
		t.Fatal(err)
	}
}

// labelSets is the label maps of image records, in a comparable form.
func labelSets(recs map[string]map[string]string) []string {
	var out []string
	for _, l := range recs {
		out = append(out, fmt.Sprint(l))
	}
	slices.Sort(out)
	return out
}

// manifestLabelKeys is the label keys on an image's manifest content,
// repository-independent.
func manifestLabelKeys(t *testing.T, c *client.Client, img harness.TestImage) []string {
	t.Helper()
	info, err := c.ContentStore().Info(context.Background(), digest.Digest(img.Digest))
	if err != nil {
		t.Fatal(err)
	}
	keys := slices.Sorted(maps.Keys(info.Labels))
	for i, k := range keys {
		if strings.HasPrefix(k, "containerd.io/gc.ref.content.") {
			keys[i] = "containerd.io/gc.ref.content.*"
		}
	}
	return slices.Compact(keys)
}

func leaseIDs(t *testing.T, c *client.Client) []string {
	t.Helper()
	ls, err := c.LeasesService().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, l := range ls {
		ids = append(ids, l.ID)
	}
	slices.Sort(ids)
	return ids
}
