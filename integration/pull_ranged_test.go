package integration

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// A big layer comes in ranges on parallel connections through what stands
// between a node and a cloud registry: a hosts.toml mirror, a token
// service, and a redirect of each blob request to an object store under
// another host name, which never sees the credentials. Where the store
// ignores Range, the layer comes whole, and once.
func TestPullBigBlobInRanges(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, Token: true})
	img := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "ai/model", Tag: "1", OwnLayers: 1, LayerSize: 40 << 20}})[0]
	layers, err := img.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	big, err := layers[0].Size()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.Image.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	const name = "models.example.test" // reachable only through the mirror
	ref := name + "/ai/model:1"
	auth := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPassword))

	for _, tt := range []struct {
		name        string
		ignoreRange bool
	}{
		{name: "ranges"},
		{name: "range ignored", ignoreRange: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			front := harness.StartBlobRedirect(t, reg, tt.ignoreRange)
			node := newTestNode(t, harness.Containerd2)
			node.env = append(node.env, noderuntime.ContainerdConfigEnv+"="+node.ctrd.ConfigFile)
			writeHostsTOML(t, node.ctrd, name, "http://"+front.Host)
			creds := writeFile(t, node.dir, "config.json", fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, name, auth))
			issued := reg.TokensIssued.Load()

			r := node.once(t, pullViaConfig("containerd", "", ref), "--docker-config", creds)
			assertNoSecret(t, r.stdout, r.stderr)
			if st, reason := parseOnce(t, r).status(ref); st != "pulled" {
				t.Fatalf("%s: %s %s, want pulled\n%s", ref, st, reason, r)
			}
			assertPresent(t, node.ctrd.Endpoint, ref)

			if reg.TokensIssued.Load() == issued {
				t.Error("the token service issued no token: the pull did not authenticate through it")
			}
			// The disk budget reads each layer's last 8 bytes (its gzip
			// size) before the pull: not part of the download.
			trailer := fmt.Sprintf("bytes=%d-", big-8)
			var ranged []string
			var sent int64
			for _, a := range front.Store.Asked() {
				if a.Auth {
					t.Errorf("a request to the object store (range %q) carried credentials", a.Range)
				}
				if a.Range == trailer {
					continue
				}
				sent += a.Sent()
				if a.Range != "" {
					ranged = append(ranged, a.Range)
				}
			}
			if want := big + int64(len(cfg)); sent != want {
				t.Errorf("the object store sent %d bytes for blobs of %d: something came twice", sent, want)
			}
			chunks := int((big + 8<<20 - 1) / (8 << 20))
			switch {
			case tt.ignoreRange && len(ranged) != 1:
				t.Errorf("a store that ignores Range was asked for %d ranges %q; want the first range only, answered whole", len(ranged), ranged)
			case !tt.ignoreRange && len(ranged) < chunks:
				t.Errorf("the %d-byte layer came in %d ranges %q; want %d", big, len(ranged), ranged, chunks)
			}
			for _, a := range ranged {
				if strings.HasSuffix(a, "-") {
					t.Errorf("open-ended range %q: each range must be closed, so that its connection is kept", a)
				}
			}
		})
	}
}
