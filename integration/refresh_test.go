package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestRefresh is refresh on a real containerd and registry, with `once`:
// a tag pushed anew is pulled again once its interval has passed since
// the last check, and not before; the tag on the node then names the new
// image; a registry that cannot be reached keeps the image the node has
// and says so; a digest reference is never checked.
func TestRefresh(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testRefresh(t, flavor) })
	}
}

func testRefresh(t *testing.T, flavor harness.Flavor) {
	const interval = 2 * time.Second
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	v1 := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "team/moving", Tag: "stable", OwnLayers: 1, Files: map[string][]byte{"/version": []byte("1")}}})[0]
	pinned := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "team/pinned", Tag: "1", OwnLayers: 1}})[0]
	node := newTestNode(t, flavor)
	rt := node.cri(t)
	ctx := context.Background()
	moving := v1.Ref
	byDigest := strings.Replace(pinned.Ref, ":1", "@"+pinned.Digest, 1)

	path := filepath.Join(node.dir, "images.yaml")
	if err := os.WriteFile(path, []byte("sandboxImage: none\nrefresh: "+interval.String()+"\nimages:\n  - image: "+moving+"\n  - image: "+byDigest+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	once := func() (onceOutput, run) {
		t.Helper()
		return onceJSON(t, node.env, path)
	}
	digestOnNode := func() string {
		t.Helper()
		st, err := rt.ImageStatus(ctx, moving)
		if err != nil || st == nil {
			t.Fatalf("%s on the node: %v, %v", moving, st, err)
		}
		return strings.Join(st.RepoDigests, ",")
	}

	if _, r := once(); r.code != 0 {
		t.Fatalf("first run: %s", r)
	}
	first := digestOnNode()
	v2 := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "team/moving", Tag: "stable", OwnLayers: 1, Files: map[string][]byte{"/version": []byte("2")}}})[0]
	if v2.Digest == v1.Digest {
		t.Fatal("the second push did not move the tag")
	}

	// Within the interval of the pull, which resolved the tag: not asked.
	out, r := once()
	if r.code != 0 || out.Images[0].Refreshed || digestOnNode() != first {
		t.Fatalf("within the interval: refreshed %v, digest %s (want %s):\n%s", out.Images[0].Refreshed, digestOnNode(), first, r)
	}
	time.Sleep(interval + interval/10 + 100*time.Millisecond)
	out, r = once()
	if r.code != 0 || !out.Images[0].Refreshed {
		t.Fatalf("after the interval: want %s refreshed:\n%s", moving, r)
	}
	if got := digestOnNode(); !strings.Contains(got, v2.Digest) {
		t.Errorf("after refresh the node's %s is %s, want %s", moving, got, v2.Digest)
	}
	if out.Images[1].Refreshed || strings.Contains(r.stderr, "tag moved; pulling it again\" image="+byDigest) {
		t.Errorf("the digest reference was refreshed:\n%s", r)
	}
	t.Logf("tag moved %s -> %s, pulled again after %v", v1.Digest, v2.Digest, interval)

	// The registry gone during a refresh: the image stays, and once says why.
	reg.Stop()
	time.Sleep(interval + interval/10 + 100*time.Millisecond)
	out, r = once()
	if r.code != 0 || out.Images[0].Status != "present" || !strings.HasPrefix(out.Images[0].Reason.String(), "refresh: ") {
		t.Fatalf("registry gone: want %s present with a refresh reason:\n%s", moving, r)
	}
	if !strings.Contains(digestOnNode(), v2.Digest) {
		t.Errorf("registry gone: the node lost %s", moving)
	}
	t.Logf("registry gone during refresh: %s %s (%s)", out.Images[0].Status, moving, out.Images[0].Reason)
	reportFault(faultRow{scenario: string(flavor) + ": registry gone during a tag refresh",
		outcome: fmt.Sprintf("image kept and present, exit 0, reason %q", out.Images[0].Reason)})
}
