package bundle

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
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

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/signature"
)

// memStore is a registry in memory: tags by reference, blobs by digest,
// and errors to return for some references.
type memStore struct {
	tags   map[string]ocispec.Descriptor
	blobs  map[digest.Digest][]byte
	broken map[string]error
}

func newMemStore() *memStore {
	return &memStore{tags: map[string]ocispec.Descriptor{}, blobs: map[digest.Digest][]byte{}, broken: map[string]error{}}
}

func (s *memStore) Resolve(_ context.Context, ref string) (ocispec.Descriptor, error) {
	if err := s.broken[ref]; err != nil {
		return ocispec.Descriptor{}, err
	}
	d, ok := s.tags[ref]
	if !ok {
		return ocispec.Descriptor{}, fmt.Errorf("%s: %w", ref, errdefs.ErrNotFound)
	}
	return d, nil
}

func (s *memStore) Fetch(_ context.Context, ref string, desc ocispec.Descriptor) (io.ReadCloser, error) {
	b, ok := s.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("%s: blob %s: %w", ref, desc.Digest, errdefs.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (s *memStore) put(mediaType string, data []byte) ocispec.Descriptor {
	d := digest.FromBytes(data)
	s.blobs[d] = data
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

// tag stores a manifest of layers under ref, as cosign writes its tags.
func (s *memStore) tag(t *testing.T, ref string, layers ...ocispec.Descriptor) ocispec.Descriptor {
	t.Helper()
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    s.put(ocispec.MediaTypeImageConfig, []byte(`{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}`)),
		Layers:    layers,
	}
	m.SchemaVersion = 2
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	d := s.put(ocispec.MediaTypeImageManifest, raw)
	s.tags[ref] = d
	return d
}

type testKey struct {
	priv *ecdsa.PrivateKey
	pub  string // PEM file
}

func newTestKey(t *testing.T) testKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(t.TempDir(), "cosign.pub")
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return testKey{priv: priv, pub: pub}
}

// signLayer is a simplesigning layer as cosign sign writes it: the payload
// naming d and repo, the signature over it in an annotation.
func (k testKey) signLayer(t *testing.T, s *memStore, repo string, d digest.Digest) ocispec.Descriptor {
	t.Helper()
	payload := fmt.Sprintf(`{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, repo, d)
	sum := sha256.Sum256([]byte(payload))
	sig, err := k.priv.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	desc := s.put(signature.SimpleSigningMediaType, []byte(payload))
	desc.Annotations = map[string]string{signature.SignatureAnnotation: base64.StdEncoding.EncodeToString(sig)}
	return desc
}

func TestAttachments(t *testing.T) {
	const (
		name   = "corp.example/team/app:1.0"
		from   = "mirror.example:5000/hub/team/app:1.0"
		repo   = "mirror.example:5000/hub/team/app"
		canon  = "corp.example/team/app"
		imgHex = "4f1c0a7c5e6b7d8e9f00112233445566778899aabbccddeeff00112233445566"
	)
	d := digest.NewDigestFromEncoded(digest.SHA256, imgHex)
	other := digest.FromString("another image")
	key, stranger := newTestKey(t), newTestKey(t)
	keys, err := signature.LoadKeys(key.pub)
	if err != nil {
		t.Fatal(err)
	}
	sigRef := repo + ":sha256-" + imgHex + ".sig"
	attRef := repo + ":sha256-" + imgHex + ".att"
	sbomRef := repo + ":sha256-" + imgHex + ".sbom"
	envelope := func(s *memStore) ocispec.Descriptor {
		return s.put("application/vnd.dsse.envelope.v1+json", []byte(`{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[]}`))
	}

	tests := []struct {
		name     string
		setup    func(t *testing.T, s *memStore)
		want     []string // carried entries' names
		sigError string   // a *SignatureError saying this
		err      string   // another error saying this
	}{
		{
			name: "signed, with attestation and SBOM",
			setup: func(t *testing.T, s *memStore) {
				s.tag(t, sigRef, key.signLayer(t, s, repo, d))
				s.tag(t, attRef, envelope(s))
				s.tag(t, sbomRef, s.put("text/spdx+json", []byte(`{"spdxVersion":"SPDX-2.3"}`)))
			},
			want: []string{canon + ":sha256-" + imgHex + ".sig", canon + ":sha256-" + imgHex + ".att", canon + ":sha256-" + imgHex + ".sbom"},
		},
		{
			name: "signed by one of two signatures",
			setup: func(t *testing.T, s *memStore) {
				s.tag(t, sigRef, stranger.signLayer(t, s, repo, d), key.signLayer(t, s, repo, d))
			},
			want: []string{canon + ":sha256-" + imgHex + ".sig"},
		},
		{
			name:     "unsigned",
			setup:    func(t *testing.T, s *memStore) { s.tag(t, attRef, envelope(s)) },
			sigError: "unsigned: the registry has no signature " + sigRef,
		},
		{
			name:     "signed with another key",
			setup:    func(t *testing.T, s *memStore) { s.tag(t, sigRef, stranger.signLayer(t, s, repo, d)) },
			sigError: sigRef,
		},
		{
			name:     "signature of another image",
			setup:    func(t *testing.T, s *memStore) { s.tag(t, sigRef, key.signLayer(t, s, repo, other)) },
			sigError: sigRef,
		},
		{
			name: "payload changed after signing",
			setup: func(t *testing.T, s *memStore) {
				l := key.signLayer(t, s, repo, d)
				forged := s.put(l.MediaType, bytes.Replace(s.blobs[l.Digest], []byte(repo), []byte("evil.example/app"), 1))
				forged.Annotations = l.Annotations
				s.tag(t, sigRef, forged)
			},
			sigError: sigRef,
		},
		{
			name: "registry fails on the attestation",
			setup: func(t *testing.T, s *memStore) {
				s.tag(t, sigRef, key.signLayer(t, s, repo, d))
				s.broken[attRef] = errors.New("HTTP 500")
			},
			err: "HTTP 500",
		},
		{
			name: "blob does not match its digest",
			setup: func(t *testing.T, s *memStore) {
				l := key.signLayer(t, s, repo, d)
				s.tag(t, sigRef, l)
				s.blobs[l.Digest] = bytes.ToUpper(s.blobs[l.Digest])
			},
			err: "content has digest",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newMemStore()
			tc.setup(t, s)
			got, err := attachments(context.Background(), s, name, from, d, keys)
			var se *SignatureError
			switch {
			case tc.sigError != "":
				if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.sigError) || !strings.HasPrefix(err.Error(), name+": ") {
					t.Fatalf("error %v, want a signature error of %s saying %q", err, name, tc.sigError)
				}
				if errors.Is(err, signature.ErrUnsigned) != strings.HasPrefix(tc.sigError, "unsigned") {
					t.Errorf("error %v: is ErrUnsigned %v", err, errors.Is(err, signature.ErrUnsigned))
				}
				return
			case tc.err != "":
				if err == nil || errors.As(err, &se) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q, not about the signature", err, tc.err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			var names []string
			for _, a := range got {
				names = append(names, a.Name)
				if !strings.HasPrefix(a.From, repo+":") {
					t.Errorf("%s read from %s, want the repository the image came from, %s", a.Name, a.From, repo)
				}
				if digest.FromBytes(a.Manifest) != a.Desc.Digest {
					t.Errorf("%s: manifest is not the registry's %s", a.Name, a.Desc.Digest)
				}
				for _, b := range a.Blobs {
					if data, err := a.blob(b); err != nil || digest.FromBytes(data) != b.Digest {
						t.Errorf("%s: blob %s not carried: %v", a.Name, b.Digest, err)
					}
				}
			}
			if strings.Join(names, " ") != strings.Join(tc.want, " ") {
				t.Errorf("carried %v, want %v", names, tc.want)
			}
		})
	}
}
