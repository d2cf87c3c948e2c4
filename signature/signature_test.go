package signature_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/signature"
)

// signer is a key pair made in the test, signing as `cosign sign --key`
// does: ASN.1 ECDSA over the SHA-256 of the payload (ed25519 signs the
// payload itself).
type signer struct {
	priv crypto.Signer
}

func newSigner(t *testing.T, kind string) signer {
	t.Helper()
	switch kind {
	case "ed25519":
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return signer{priv}
	default:
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return signer{priv}
	}
}

// pubFile writes the public key as cosign.pub holds it.
func (s signer) pubFile(t *testing.T) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(s.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cosign.pub")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func (s signer) sign(t *testing.T, p []byte) signature.Signature {
	t.Helper()
	var sig []byte
	var err error
	if _, ok := s.priv.(ed25519.PrivateKey); ok {
		sig, err = s.priv.Sign(rand.Reader, p, crypto.Hash(0))
	} else {
		h := sha256.Sum256(p)
		sig, err = s.priv.Sign(rand.Reader, h[:], crypto.SHA256)
	}
	if err != nil {
		t.Fatal(err)
	}
	return signature.Signature{Payload: p, Base64: base64.StdEncoding.EncodeToString(sig)}
}

// cosignPayload is the simple-signing payload cosign v2 writes for
// `cosign sign` of repo@d.
func cosignPayload(repo string, d digest.Digest) []byte {
	return fmt.Appendf(nil, `{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, repo, d)
}

func TestVerify(t *testing.T) {
	team, other, edTeam := newSigner(t, "ecdsa"), newSigner(t, "ecdsa"), newSigner(t, "ed25519")
	img := digest.FromString("the image's index")
	moved := digest.FromString("another image")
	const repo = "registry.example:5000/team/app"
	p := cosignPayload(repo, img)
	tampered := bytes.Replace(p, []byte("team/app"), []byte("team/evil"), 1)

	for _, tt := range []struct {
		name string
		keys []signer
		sigs []signature.Signature
		want error // nil: valid
		says string
	}{
		{name: "signed by the key", keys: []signer{team}, sigs: []signature.Signature{team.sign(t, p)}},
		{name: "signed by the second of two keys", keys: []signer{other, team}, sigs: []signature.Signature{team.sign(t, p)}},
		{name: "an ed25519 key", keys: []signer{edTeam}, sigs: []signature.Signature{edTeam.sign(t, p)}},
		{name: "one of several signatures is by the key", keys: []signer{team}, sigs: []signature.Signature{other.sign(t, p), team.sign(t, p)}},
		{name: "signed by another key", keys: []signer{team}, sigs: []signature.Signature{other.sign(t, p)}, want: signature.ErrWrongKey, says: "1 signature(s), 1 key(s)"},
		{name: "unsigned", keys: []signer{team}, want: signature.ErrUnsigned, says: img.String()},
		{name: "a signature for another digest", keys: []signer{team}, sigs: []signature.Signature{team.sign(t, cosignPayload(repo, moved))}, want: signature.ErrOtherDigest, says: "cosign.pub signed " + moved.String()},
		{name: "a payload changed after signing", keys: []signer{team}, sigs: []signature.Signature{{Payload: tampered, Base64: team.sign(t, p).Base64}}, want: signature.ErrWrongKey},
		{name: "a signature that is not base64", keys: []signer{team}, sigs: []signature.Signature{{Payload: p, Base64: "not base64!"}}, want: signature.ErrWrongKey},
		{name: "a signed payload that is not a cosign image signature", keys: []signer{team}, sigs: []signature.Signature{team.sign(t, []byte(`{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":"`+img.String()+`"}}}`))}, want: signature.ErrOtherDigest, says: "not a cosign image signature"},
		{name: "the docker-reference is another registry's (a mirror's)", keys: []signer{team}, sigs: []signature.Signature{team.sign(t, cosignPayload("mirror.internal/team/app", img))}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var files []string
			for _, k := range tt.keys {
				files = append(files, k.pubFile(t))
			}
			keys, err := signature.LoadKeys(files...)
			if err != nil {
				t.Fatal(err)
			}
			err = keys.Verify(img, tt.sigs)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify = %v, want valid", err)
				}
				return
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("Verify = %v, want %v saying %q", err, tt.want, tt.says)
			}
		})
	}
}

func TestLoadKeys(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := newSigner(t, "ecdsa").pubFile(t)
	for _, tt := range []struct {
		name  string
		paths []string
		says  string
	}{
		{name: "no files", says: "no public key files"},
		{name: "a missing file", paths: []string{good, filepath.Join(dir, "gone.pub")}, says: "gone.pub"},
		{name: "not PEM", paths: []string{write("junk.pub", "hello")}, says: "public key " + filepath.Join(dir, "junk.pub") + ": not a PEM public key"},
		{name: "the private key instead", paths: []string{write("cosign.key", "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")}, says: "cosign.key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := signature.LoadKeys(tt.paths...)
			if err == nil || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("LoadKeys = %v, %v; want an error saying %q", keys, err, tt.says)
			}
		})
	}
	keys, err := signature.LoadKeys(good, good)
	if err != nil || keys.Len() != 2 {
		t.Fatalf("LoadKeys of two good files = %v, %v", keys, err)
	}
}

func TestTag(t *testing.T) {
	d := digest.Digest("sha256:" + strings.Repeat("ab", 32))
	for _, suffix := range []string{"sig", ".sig"} {
		if got, want := signature.Tag(d, suffix), "sha256-"+strings.Repeat("ab", 32)+".sig"; got != want {
			t.Errorf("Tag(%q) = %q, want %q", suffix, got, want)
		}
	}
	if got := signature.Tag(d, "att"); !strings.HasSuffix(got, ".att") {
		t.Errorf("Tag(att) = %q", got)
	}
}

// blobs serves a manifest's blobs from memory as a registry or an archive
// would.
type blobs map[digest.Digest][]byte

func (b blobs) fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	p, ok := b[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: not found", desc.Digest)
	}
	return io.NopCloser(bytes.NewReader(p)), nil
}

func sigManifest(t *testing.T, layers ...ocispec.Descriptor) []byte {
	t.Helper()
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Layers: layers}
	m.SchemaVersion = 2
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestFromManifest(t *testing.T) {
	team := newSigner(t, "ecdsa")
	img := digest.FromString("image")
	p := cosignPayload("r.example/app", img)
	s := team.sign(t, p)
	pd := digest.FromBytes(p)
	layer := ocispec.Descriptor{MediaType: signature.SimpleSigningMediaType, Digest: pd, Size: int64(len(p)), Annotations: map[string]string{signature.SignatureAnnotation: s.Base64}}
	store := blobs{pd: p}
	keys, err := signature.LoadKeys(team.pubFile(t))
	if err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name     string
		manifest []byte
		blobs    blobs
		valid    bool
		count    int
		fails    string
	}{
		{name: "cosign's .sig manifest", manifest: sigManifest(t, layer), blobs: store, valid: true, count: 1},
		{name: "other layers are not signatures", manifest: sigManifest(t, ocispec.Descriptor{MediaType: "application/vnd.in-toto+json", Digest: pd, Size: int64(len(p))}, layer), blobs: store, valid: true, count: 1},
		{name: "a layer without the annotation", manifest: sigManifest(t, ocispec.Descriptor{MediaType: signature.SimpleSigningMediaType, Digest: pd, Size: int64(len(p))}), blobs: store},
		{name: "a payload blob that is not what the layer names", manifest: sigManifest(t, layer), blobs: blobs{pd: bytes.ToUpper(p)}, fails: "does not match"},
		{name: "a missing payload blob", manifest: sigManifest(t, layer), blobs: blobs{}, fails: "not found"},
		{name: "a payload too big to be one", manifest: sigManifest(t, ocispec.Descriptor{MediaType: signature.SimpleSigningMediaType, Digest: pd, Size: 1 << 30, Annotations: layer.Annotations}), blobs: store, fails: "more than"},
		{name: "not JSON", manifest: []byte("<html>"), blobs: store, fails: "signature manifest"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sigs, err := signature.FromManifest(context.Background(), tt.manifest, tt.blobs.fetch)
			if tt.fails != "" {
				if err == nil || !strings.Contains(err.Error(), tt.fails) {
					t.Fatalf("FromManifest = %v, want an error saying %q", err, tt.fails)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(sigs) != tt.count {
				t.Fatalf("FromManifest read %d signatures, want %d", len(sigs), tt.count)
			}
			if err := keys.Verify(img, sigs); (err == nil) != tt.valid {
				t.Fatalf("Verify = %v, want valid %v", err, tt.valid)
			}
		})
	}
}
