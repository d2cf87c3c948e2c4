// Package signaturetest makes cosign key pairs and signatures in tests, the
// way `cosign generate-key-pair` and `cosign sign --key` make them, without
// the cosign binary: for unit tests and benchmarks that need many.
package signaturetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kube-preloader/kube-preloader/signature"
)

// Key is a key pair; Public is its public key in a PEM file, as cosign.pub
// holds it.
type Key struct {
	priv   crypto.Signer
	Public string
}

// NewKey makes an ECDSA P-256 key pair, cosign's kind.
func NewKey(t testing.TB) Key { return newKey(t, mustECDSA(t)) }

// NewEd25519Key makes an ed25519 key pair, which signs the payload itself
// rather than its hash.
func NewEd25519Key(t testing.TB) Key {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return newKey(t, priv)
}

func mustECDSA(t testing.TB) crypto.Signer {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func newKey(t testing.TB, priv crypto.Signer) Key {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cosign.pub")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return Key{priv: priv, Public: path}
}

// Sign signs payload as cosign does: ASN.1 ECDSA over its SHA-256, or
// ed25519 over the payload.
func (k Key) Sign(t testing.TB, payload []byte) signature.Signature {
	t.Helper()
	var sig []byte
	var err error
	if _, ok := k.priv.(ed25519.PrivateKey); ok {
		sig, err = k.priv.Sign(rand.Reader, payload, crypto.Hash(0))
	} else {
		h := sha256.Sum256(payload)
		sig, err = k.priv.Sign(rand.Reader, h[:], crypto.SHA256)
	}
	if err != nil {
		t.Fatal(err)
	}
	return signature.Signature{Payload: payload, Base64: base64.StdEncoding.EncodeToString(sig)}
}

// Payload is the simple-signing payload cosign v2 writes for `cosign sign`
// of repo@d.
func Payload(repo string, d digest.Digest) []byte {
	return fmt.Appendf(nil, `{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, repo, d)
}

// SignImage is Sign of Payload(repo, d).
func (k Key) SignImage(t testing.TB, repo string, d digest.Digest) signature.Signature {
	t.Helper()
	return k.Sign(t, Payload(repo, d))
}
