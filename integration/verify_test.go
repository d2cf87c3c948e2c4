package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/signature"
)

// signedSet is a registry (TLS, basic auth) holding images signed with the
// real cosign: one by the team's key, one by another key, one unsigned,
// and a two-platform index signed by the team's key at its index digest.
type signedSet struct {
	reg                        *harness.Registry
	team, other                harness.CosignKey
	signed, wrongKey, unsigned harness.TestImage
	index                      string // repo:tag of the index
	indexDigest                string
}

func newSignedSet(t *testing.T) signedSet {
	t.Helper()
	s := signedSet{reg: harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, TLS: true})}
	imgs := harness.PushTestImages(t, s.reg, []harness.ImageSpec{
		{Repo: "team/signed", Tag: "1", BaseLayers: 1, OwnLayers: 1, LayerSize: 16 << 10},
		{Repo: "team/wrongkey", Tag: "1", BaseLayers: 1, OwnLayers: 1, LayerSize: 16 << 10},
		{Repo: "team/unsigned", Tag: "1", BaseLayers: 1, OwnLayers: 1, LayerSize: 16 << 10},
	})
	s.signed, s.wrongKey, s.unsigned = imgs[0], imgs[1], imgs[2]
	s.team, s.other = harness.NewCosignKey(t), harness.NewCosignKey(t)

	// The index: this node's platform and another, as a multi-platform
	// image is pushed.
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for i, p := range []string{nodePlatform, "linux/s390x"} {
		img := testImage(t, p, uint64(300+i))
		os, arch, _ := strings.Cut(p, "/")
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: os, Architecture: arch}}})
	}
	s.index = s.reg.Host + "/team/multi:1"
	ref, err := name.ParseReference(s.index)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx, remote.WithAuth(s.reg.Authenticator()), remote.WithTransport(s.reg.Transport())); err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	s.indexDigest = d.String()

	harness.CosignSign(t, s.reg, s.team, s.signed.DigestRef)
	harness.CosignSign(t, s.reg, s.other, s.wrongKey.DigestRef)
	harness.CosignSign(t, s.reg, s.team, s.reg.Host+"/team/multi@"+s.indexDigest)
	return s
}

// opts reach the registry with its credentials and CA.
func (s signedSet) opts() []remote.Option {
	return []remote.Option{remote.WithAuth(s.reg.Authenticator()), remote.WithTransport(s.reg.Transport())}
}

// bundle writes an OCI layout archive as `preloader bundle --verify-key`
// does: each image (the index as it is) named as pods name it, and the
// .sig of each signed one, as cosign stored it, named
// <repo>:sha256-<hex>.sig.
func (s signedSet) bundle(t *testing.T, path string) {
	t.Helper()
	var imgs []archivetest.Image
	for _, ti := range []harness.TestImage{s.signed, s.wrongKey, s.unsigned} {
		imgs = append(imgs, archivetest.Image{Names: []string{ti.Ref}, Image: ti.Image})
		sigRef := s.reg.Host + "/" + ti.Spec.Repo + ":" + signature.Tag(digest.Digest(ti.Digest), "sig")
		if sig := s.remoteImage(t, sigRef); sig != nil {
			imgs = append(imgs, archivetest.Image{Names: []string{sigRef}, Image: sig})
		}
	}
	indexRef, err := name.ParseReference(s.index)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(indexRef, s.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	indexSig := s.reg.Host + "/team/multi:" + signature.Tag(digest.Digest(s.indexDigest), "sig")
	imgs = append(imgs, archivetest.Image{Names: []string{indexSig}, Image: s.remoteImage(t, indexSig)})
	var buf bytes.Buffer
	if err := archivetest.WriteBundle(&buf, imgs, map[string]v1.ImageIndex{s.index: idx}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// remoteImage is ref's manifest and blobs in the registry; nil when the
// registry has no such tag.
func (s signedSet) remoteImage(t *testing.T, ref string) v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r, s.opts()...)
	if err != nil {
		if strings.Contains(err.Error(), "MANIFEST_UNKNOWN") || strings.Contains(err.Error(), "404") {
			return nil
		}
		t.Fatal(err)
	}
	return img
}

// TestVerifyArchive: with verify, an archive's image signed by the key
// (and a multi-platform one, signed at its index digest) imports; one
// signed by another key and an unsigned one are refused with reason
// signature and are not in CRI ListImages, by tag or digest.
func TestVerifyArchive(t *testing.T) {
	set := newSignedSet(t)
	node := newTestNode(t, harness.Containerd2)
	archives := t.TempDir()
	set.bundle(t, filepath.Join(archives, "images.tar"))

	cfg := "sandboxImage: none\narchiveDir: " + archives + "\nimages: []\nverify:\n  keys: [" + set.team.Public + "]\n"
	r := node.once(t, cfg)
	if r.code != 1 {
		t.Fatalf("want exit 1 (two images refused):\n%s", r)
	}
	out := parseArchiveResult(t, r)
	for ref, want := range map[string]string{set.signed.Ref: "imported", set.index: "imported", set.wrongKey.Ref: "failed", set.unsigned.Ref: "failed"} {
		if got := out.statuses()[ref]; got != want {
			t.Errorf("%s: %s, want %s\n%s", ref, got, want, r)
		}
	}
	for _, i := range out.Images {
		if strings.Contains(i.Image, "sha256-") {
			t.Errorf("a cosign entry is reported as an image: %+v", i)
		}
		if i.Status != "failed" {
			continue
		}
		want := map[string]string{set.wrongKey.Ref: "not signed by any of the keys", set.unsigned.Ref: "unsigned"}[i.Image]
		if i.Reason != "signature" || !strings.Contains(i.Error, want) || !strings.Contains(i.Error, "images.tar") {
			t.Errorf("%s: reason %q, error %q; want signature, naming the archive and saying %q", i.Image, i.Reason, i.Error, want)
		}
	}
	refs := node.refs(t)
	for _, absent := range []string{set.wrongKey.Ref, set.unsigned.Ref, set.wrongKey.DigestRef, set.unsigned.DigestRef} {
		if slices.Contains(refs, absent) {
			t.Errorf("CRI ListImages shows %s, refused for its signature: %v", absent, refs)
		}
	}
	for _, present := range []string{set.signed.Ref, set.index} {
		if !slices.Contains(refs, present) {
			t.Errorf("CRI ListImages lacks %s: %v", present, refs)
		}
	}
	for _, ref := range refs {
		if strings.Contains(ref, "sha256-") {
			t.Errorf("a cosign entry was imported as an image: %s", ref)
		}
	}

	t.Run("the key file is gone: exit 2 naming it", func(t *testing.T) {
		r := node.once(t, strings.ReplaceAll(cfg, set.team.Public, "/nonexistent/team.pub"))
		if r.code != 2 || !strings.Contains(r.stderr, "/nonexistent/team.pub") {
			t.Errorf("want exit 2 naming the key file:\n%s", r)
		}
	})
}

// TestVerifyPull: with verify, a pull records the tag only on a digest
// signed by the key, read from the registry pulled from (the mirror's for
// an entry with mirror:) with the pull's credentials.
func TestVerifyPull(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testVerifyPull(t, flavor) })
	}
}

func testVerifyPull(t *testing.T, flavor harness.Flavor) {
	set := newSignedSet(t)
	node := newTestNode(t, flavor)
	set.reg.TrustIn(node.ctrd)
	dir := t.TempDir()
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(set.reg.Host, testUser, testPassword))
	// The mirror: a path of the registry with an image of its own, signed
	// there (a mirror keeps its own copy's .sig). Not the manifest of
	// team/signed: two pulls of one manifest in a run through containerd's
	// client can wait on each other (the unpacker's shared lock on the
	// manifest is held while the later pull waits for the earlier one's
	// disk budget decision), which is not what this test is about.
	const mirrored = "registry.example/team/signed:1"
	mirrorImg := harness.PushTestImages(t, set.reg, []harness.ImageSpec{{Repo: "mirror/team/signed", Tag: "1", OwnLayers: 1, LayerSize: 16 << 10}})[0]
	harness.CosignSign(t, set.reg, set.team, mirrorImg.DigestRef)
	cfg := imagesYAML("none", set.signed.Ref, set.index, set.wrongKey.Ref, set.unsigned.Ref, mirrored) +
		"    mirror: " + set.reg.Host + "/mirror\nverify:\n  keys: [" + set.team.Public + "]\n"
	var printed []string
	r := preloader(t, 3*time.Minute, node.env, "once", "--config", writeFile(t, dir, "images.yaml", cfg), "-o", "json", "--docker-config", creds)
	printed = append(printed, r.stdout, r.stderr)
	t.Cleanup(func() { assertNoSecret(t, printed...) })
	if r.code != 1 {
		t.Fatalf("want exit 1 (two images refused):\n%s", r)
	}
	out := parseOnce(t, r)
	for ref, want := range map[string]string{set.signed.Ref: "pulled", set.index: "pulled", mirrored: "pulled", set.wrongKey.Ref: "failed", set.unsigned.Ref: "failed"} {
		if st, reason := out.status(ref); st != want || (want == "failed" && reason != "signature") {
			t.Errorf("%s: %s %q, want %s (signature when failed)\n%s", ref, st, reason, want, r)
		}
	}
	assertPresent(t, node.ctrd.Endpoint, set.signed.Ref, set.index, mirrored)
	refs := node.refs(t)
	for _, absent := range []string{set.wrongKey.Ref, set.unsigned.Ref, set.wrongKey.DigestRef, set.unsigned.DigestRef} {
		if slices.Contains(refs, absent) {
			t.Errorf("CRI ListImages shows %s, refused for its signature: %v", absent, refs)
		}
	}
	// What the tag is recorded on is the digest that was verified.
	st, err := node.cri(t).ImageStatus(t.Context(), set.signed.Ref)
	if err != nil || st == nil {
		t.Fatalf("ImageStatus %s: %v, %v", set.signed.Ref, st, err)
	}
	if !slices.Contains(st.RepoDigests, set.signed.DigestRef) {
		t.Errorf("%s is recorded on %v, want %s", set.signed.Ref, st.RepoDigests, set.signed.DigestRef)
	}
}

// testPublicKeyPEM is a public key as cosign.pub holds it, for a config
// whose key is read but signs nothing.
func testPublicKeyPEM(t *testing.T) string {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}
