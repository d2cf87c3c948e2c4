package signature_test

import (
	"bytes"
	"context"
	"encoding/json"
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
	"github.com/kube-preloader/kube-preloader/signature/signaturetest"
)

func TestVerify(t *testing.T) {
	team, other, edTeam := signaturetest.NewKey(t), signaturetest.NewKey(t), signaturetest.NewEd25519Key(t)
	img := digest.FromString("the image's index")
	moved := digest.FromString("another image")
	const repo = "registry.example:5000/team/app"
	p := signaturetest.Payload(repo, img)
	tampered := bytes.Replace(p, []byte("team/app"), []byte("team/evil"), 1)

	for _, tt := range []struct {
		name string
		keys []signaturetest.Key
		sigs []signature.Signature
		want error // nil: valid
		says string
	}{
		{name: "signed by the key", keys: []signaturetest.Key{team}, sigs: []signature.Signature{team.Sign(t, p)}},
		{name: "signed by the second of two keys", keys: []signaturetest.Key{other, team}, sigs: []signature.Signature{team.Sign(t, p)}},
		{name: "an ed25519 key", keys: []signaturetest.Key{edTeam}, sigs: []signature.Signature{edTeam.Sign(t, p)}},
		{name: "one of several signatures is by the key", keys: []signaturetest.Key{team}, sigs: []signature.Signature{other.Sign(t, p), team.Sign(t, p)}},
		{name: "signed by another key", keys: []signaturetest.Key{team}, sigs: []signature.Signature{other.Sign(t, p)}, want: signature.ErrWrongKey, says: "1 signature(s), 1 key(s)"},
		{name: "unsigned", keys: []signaturetest.Key{team}, want: signature.ErrUnsigned, says: img.String()},
		{name: "a signature for another digest", keys: []signaturetest.Key{team}, sigs: []signature.Signature{team.Sign(t, signaturetest.Payload(repo, moved))}, want: signature.ErrOtherDigest, says: "cosign.pub signed " + moved.String()},
		{name: "a payload changed after signing", keys: []signaturetest.Key{team}, sigs: []signature.Signature{{Payload: tampered, Base64: team.Sign(t, p).Base64}}, want: signature.ErrWrongKey},
		{name: "a signature that is not base64", keys: []signaturetest.Key{team}, sigs: []signature.Signature{{Payload: p, Base64: "not base64!"}}, want: signature.ErrWrongKey},
		{name: "a signed payload that is not a cosign image signature", keys: []signaturetest.Key{team}, sigs: []signature.Signature{team.Sign(t, []byte(`{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":"`+img.String()+`"}}}`))}, want: signature.ErrOtherDigest, says: "not a cosign image signature"},
		{name: "the docker-reference is another registry's (a mirror's)", keys: []signaturetest.Key{team}, sigs: []signature.Signature{team.Sign(t, signaturetest.Payload("mirror.internal/team/app", img))}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var files []string
			for _, k := range tt.keys {
				files = append(files, k.Public)
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
	good := signaturetest.NewKey(t).Public
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
	team := signaturetest.NewKey(t)
	img := digest.FromString("image")
	p := signaturetest.Payload("r.example/app", img)
	s := team.Sign(t, p)
	pd := digest.FromBytes(p)
	layer := ocispec.Descriptor{MediaType: signature.SimpleSigningMediaType, Digest: pd, Size: int64(len(p)), Annotations: map[string]string{signature.SignatureAnnotation: s.Base64}}
	store := blobs{pd: p}
	keys, err := signature.LoadKeys(team.Public)
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
