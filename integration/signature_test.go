package integration

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/signature"
)

// cosignSignatures reads what the real cosign stored as d's .sig tag in
// repo of reg, the way a node reads it: the manifest, then its payload
// blobs. No .sig tag is no signatures.
func cosignSignatures(t *testing.T, reg *harness.Registry, repo string, d digest.Digest) []signature.Signature {
	t.Helper()
	opts := []remote.Option{remote.WithAuth(reg.Authenticator()), remote.WithTransport(reg.Transport())}
	ref, err := name.ParseReference(reg.Host + "/" + repo + ":" + signature.Tag(d, "sig"))
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		var terr *transport.Error
		if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
			return nil
		}
		t.Fatalf("get %s: %v", ref, err)
	}
	sigs, err := signature.FromManifest(context.Background(), desc.Manifest, func(_ context.Context, l ocispec.Descriptor) (io.ReadCloser, error) {
		h, err := v1.NewHash(l.Digest.String())
		if err != nil {
			return nil, err
		}
		layer, err := remote.Layer(ref.Context().Digest(h.String()), opts...)
		if err != nil {
			return nil, err
		}
		return layer.Compressed()
	})
	if err != nil {
		t.Fatalf("signatures of %s: %v", d, err)
	}
	return sigs
}

// TestSignatureVerifiesCosign: what `cosign sign --key` v2.6.1 writes into
// a registry (TLS, basic auth) is what package signature accepts for that
// key and that digest, and nothing else.
func TestSignatureVerifiesCosign(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: "alice", Password: "s3cret-sign", TLS: true})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/signed", Tag: "1", OwnLayers: 1},
		{Repo: "team/unsigned", Tag: "1", OwnLayers: 1},
	})
	team, other := harness.NewCosignKey(t), harness.NewCosignKey(t)
	harness.CosignSign(t, reg, team, imgs[0].DigestRef)

	teamKeys, err := signature.LoadKeys(team.Public)
	if err != nil {
		t.Fatal(err)
	}
	otherKeys, err := signature.LoadKeys(other.Public)
	if err != nil {
		t.Fatal(err)
	}
	bothKeys, err := signature.LoadKeys(other.Public, team.Public)
	if err != nil {
		t.Fatal(err)
	}
	signed, unsigned := digest.Digest(imgs[0].Digest), digest.Digest(imgs[1].Digest)
	signedSigs := cosignSignatures(t, reg, "team/signed", signed)
	if len(signedSigs) != 1 {
		t.Fatalf("cosign stored %d signatures for %s, want 1", len(signedSigs), signed)
	}
	for _, tt := range []struct {
		name  string
		keys  *signature.Keys
		image digest.Digest
		sigs  []signature.Signature
		want  error
	}{
		{name: "the signing key", keys: teamKeys, image: signed, sigs: signedSigs},
		{name: "either of two keys", keys: bothKeys, image: signed, sigs: signedSigs},
		{name: "another key", keys: otherKeys, image: signed, sigs: signedSigs, want: signature.ErrWrongKey},
		{name: "an unsigned image", keys: teamKeys, image: unsigned, sigs: cosignSignatures(t, reg, "team/unsigned", unsigned), want: signature.ErrUnsigned},
		{name: "the signature shown for another digest", keys: teamKeys, image: unsigned, sigs: signedSigs, want: signature.ErrOtherDigest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.keys.Verify(tt.image, tt.sigs)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}
