// Package signature checks cosign key-based image signatures offline: the
// public keys are files, the signatures come from the `sha256-<hex>.sig`
// manifests cosign writes beside an image, and nothing here reaches the
// network (no transparency log, no TUF root, no certificate chain).
package signature

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	sigstore "github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
)

// Why Verify refused; its error wraps one of these.
var (
	// ErrUnsigned: there is no signature at all.
	ErrUnsigned = errors.New("unsigned")
	// ErrWrongKey: there are signatures, but none by any of the keys.
	ErrWrongKey = errors.New("not signed by any of the keys")
	// ErrOtherDigest: a signature by one of the keys is valid, but its
	// payload names another image.
	ErrOtherDigest = errors.New("signed for another digest")
)

// Keys are cosign public keys (PEM), any of which may sign.
type Keys struct {
	keys []key
}

type key struct {
	name     string
	verifier sigstore.Verifier
}

// LoadKeys reads one public key (PEM, as `cosign generate-key-pair` writes
// cosign.pub) from each file; an unreadable file or one that holds no
// usable key is an error naming the file.
func LoadKeys(paths ...string) (*Keys, error) {
	if len(paths) == 0 {
		return nil, errors.New("no public key files")
	}
	k := &Keys{}
	for _, path := range paths {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("public key: %w", err)
		}
		v, err := parseKey(raw)
		if err != nil {
			return nil, fmt.Errorf("public key %s: %w", path, err)
		}
		k.keys = append(k.keys, key{name: filepath.Base(path), verifier: v})
	}
	return k, nil
}

func parseKey(raw []byte) (sigstore.Verifier, error) {
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("not a PEM public key: %w", err)
	}
	if err := cryptoutils.ValidatePubKey(pub); err != nil {
		return nil, err
	}
	// SHA-256 is the hash `cosign sign --key` signs with and `cosign
	// verify --key` checks with, whatever the key's size.
	return sigstore.LoadVerifier(pub, crypto.SHA256)
}

// Len is how many keys there are.
func (k *Keys) Len() int { return len(k.keys) }

// Signature is one cosign signature: the payload it signs (the
// simple-signing JSON naming the image's digest) and the signature over
// it, base64-encoded as cosign's annotation holds it.
type Signature struct {
	Payload []byte
	Base64  string
}

// Verify checks that one of sigs is a valid signature by one of the keys
// over a payload that names digest; the error says why not (unsigned,
// wrong key, other digest) and wraps ErrUnsigned, ErrWrongKey or
// ErrOtherDigest.
//
// The payload's docker-reference (the repository the signer pushed to) is
// not compared, as cosign's own check does not: a bundle or a mirror
// carries the image to another registry, and the digest is what names it.
func (k *Keys) Verify(d digest.Digest, sigs []Signature) error {
	if len(sigs) == 0 {
		return fmt.Errorf("%s: %w: no cosign signature", d, ErrUnsigned)
	}
	var others []string
	for _, s := range sigs {
		raw, err := base64.StdEncoding.DecodeString(s.Base64)
		if err != nil {
			continue
		}
		for _, key := range k.keys {
			if key.verifier.VerifySignature(bytes.NewReader(raw), bytes.NewReader(s.Payload)) != nil {
				continue
			}
			named, err := payloadDigest(s.Payload)
			if err != nil {
				others = append(others, fmt.Sprintf("a payload signed by %s is not a cosign image signature: %v", key.name, err))
				continue
			}
			if named == d.String() {
				return nil
			}
			others = append(others, fmt.Sprintf("%s signed %s", key.name, named))
		}
	}
	if len(others) > 0 {
		return fmt.Errorf("%s: %w: %s", d, ErrOtherDigest, strings.Join(others, "; "))
	}
	return fmt.Errorf("%s: %w: %d signature(s), %d key(s)", d, ErrWrongKey, len(sigs), len(k.keys))
}

func payloadDigest(p []byte) (string, error) {
	var simple payload.SimpleContainerImage
	if err := json.Unmarshal(p, &simple); err != nil {
		return "", err
	}
	if simple.Critical.Type != payload.CosignSignatureType {
		return "", fmt.Errorf("type %q", simple.Critical.Type)
	}
	return simple.Critical.Image.DockerManifestDigest, nil
}

// Tag is the tag cosign keeps d's signatures (suffix "sig"),
// attestations ("att") or SBOM ("sbom") under, in d's repository:
// "sha256-<hex>.sig".
func Tag(d digest.Digest, suffix string) string {
	return d.Algorithm().String() + "-" + d.Encoded() + "." + strings.TrimPrefix(suffix, ".")
}
