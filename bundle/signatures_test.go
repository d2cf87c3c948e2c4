package bundle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/signature"
	"github.com/kube-preloader/kube-preloader/signature/signaturetest"
)

// memStore is a registry in memory: tags by reference (a reference by
// digest finds any tag's), blobs by digest, and errors to return for some
// references.
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
	if _, at, byDigest := strings.Cut(ref, "@"); byDigest {
		for _, t := range s.tags {
			if t.Digest.String() == at {
				d, ok = t, true
			}
		}
	}
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

// signLayer is a simplesigning layer as cosign sign writes it: the payload
// naming d and repo, the signature over it in an annotation.
func signLayer(t *testing.T, s *memStore, k signaturetest.Key, repo string, d digest.Digest) ocispec.Descriptor {
	t.Helper()
	sig := k.SignImage(t, repo, d)
	desc := s.put(signature.SimpleSigningMediaType, sig.Payload)
	desc.Annotations = map[string]string{signature.SignatureAnnotation: sig.Base64}
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
	key, stranger := signaturetest.NewKey(t), signaturetest.NewKey(t)
	keys, err := signature.LoadKeys(key.Public)
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
		sigError string   // a *signatureError saying this
		err      string   // another error saying this
	}{
		{
			name: "signed, with attestation and SBOM",
			setup: func(t *testing.T, s *memStore) {
				s.tag(t, sigRef, signLayer(t, s, key, repo, d))
				s.tag(t, attRef, envelope(s))
				s.tag(t, sbomRef, s.put("text/spdx+json", []byte(`{"spdxVersion":"SPDX-2.3"}`)))
			},
			want: []string{canon + ":sha256-" + imgHex + ".sig", canon + ":sha256-" + imgHex + ".att", canon + ":sha256-" + imgHex + ".sbom"},
		},
		{
			name: "signed by one of two signatures",
			setup: func(t *testing.T, s *memStore) {
				s.tag(t, sigRef, signLayer(t, s, stranger, repo, d), signLayer(t, s, key, repo, d))
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
			setup:    func(t *testing.T, s *memStore) { s.tag(t, sigRef, signLayer(t, s, stranger, repo, d)) },
			sigError: sigRef,
		},
		{
			name:     "signature of another image",
			setup:    func(t *testing.T, s *memStore) { s.tag(t, sigRef, signLayer(t, s, key, repo, other)) },
			sigError: sigRef,
		},
		{
			name: "payload changed after signing",
			setup: func(t *testing.T, s *memStore) {
				l := signLayer(t, s, key, repo, d)
				forged := s.put(l.MediaType, bytes.Replace(s.blobs[l.Digest], []byte(repo), []byte("evil.example/app"), 1))
				forged.Annotations = l.Annotations
				s.tag(t, sigRef, forged)
			},
			sigError: sigRef,
		},
		{
			name: "registry fails on the attestation",
			setup: func(t *testing.T, s *memStore) {
				s.tag(t, sigRef, signLayer(t, s, key, repo, d))
				s.broken[attRef] = errors.New("HTTP 500")
			},
			err: "HTTP 500",
		},
		{
			name: "registry lacks the signature's payload",
			setup: func(t *testing.T, s *memStore) {
				l := signLayer(t, s, key, repo, d)
				s.tag(t, sigRef, l)
				delete(s.blobs, l.Digest)
			},
			err: "not found",
		},
		{
			name: "registry lacks the attestation's envelope",
			setup: func(t *testing.T, s *memStore) {
				s.tag(t, sigRef, signLayer(t, s, key, repo, d))
				l := envelope(s)
				s.tag(t, attRef, l)
				delete(s.blobs, l.Digest)
			},
			err: attRef,
		},
		{
			name: "blob does not match its digest",
			setup: func(t *testing.T, s *memStore) {
				l := signLayer(t, s, key, repo, d)
				s.tag(t, sigRef, l)
				s.blobs[l.Digest] = bytes.ToUpper(s.blobs[l.Digest])
			},
			err: "got content of digest",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newMemStore()
			tc.setup(t, s)
			got, err := attachments(context.Background(), s, name, from, d, keys)
			var se *signatureError
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

// image stores a one-layer linux/amd64 image under ref and returns its
// manifest's descriptor and layer.
func (s *memStore) image(t *testing.T, ref string, seed string) (manifest, layer ocispec.Descriptor) {
	t.Helper()
	layer = s.put(ocispec.MediaTypeImageLayerGzip, []byte("layer "+seed))
	cfg := s.put(ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["`+digest.FromString(seed).String()+`"]}}`))
	raw, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer}})
	if err != nil {
		t.Fatal(err)
	}
	manifest = s.put(ocispec.MediaTypeImageManifest, raw)
	s.tags[ref] = manifest
	return manifest, layer
}

// Write with Verify carries each image's cosign tags as index.json entries
// with their blobs, whole even in a delta, and lists them in the lock; an
// image whose signature fails stops it before anything is written, and
// every such image is named.
func TestWriteVerify(t *testing.T) {
	key, stranger := signaturetest.NewKey(t), signaturetest.NewKey(t)
	keys, err := signature.LoadKeys(key.Public)
	if err != nil {
		t.Fatal(err)
	}
	amd64 := Platforms{List: []ocispec.Platform{{OS: "linux", Architecture: "amd64"}}}
	s := newMemStore()
	app, appLayer := s.image(t, "reg.example/team/app:1", "app")
	tool, _ := s.image(t, "reg.example/team/tool:1", "tool")
	bare, _ := s.image(t, "reg.example/team/bare:1", "bare")
	other, _ := s.image(t, "reg.example/team/other:1", "other")
	sig := func(repo string, d digest.Digest, k signaturetest.Key) ocispec.Descriptor {
		return s.tag(t, repo+":"+signature.Tag(d, "sig"), signLayer(t, s, k, repo, d))
	}
	appSig := sig("reg.example/team/app", app.Digest, key)
	appAtt := s.tag(t, "reg.example/team/app:"+signature.Tag(app.Digest, "att"), s.put("application/vnd.dsse.envelope.v1+json", []byte(`{}`)))
	toolSig := sig("reg.example/team/tool", tool.Digest, key)
	sig("reg.example/team/other", other.Digest, stranger)
	s.tags["reg.example/team/app:latest"] = app
	signed := []Source{{Name: "reg.example/team/app:1"}, {Name: "reg.example/team/tool:1"}, {Name: "reg.example/team/app:latest"}}

	tests := []struct {
		name    string
		sources []Source
		since   *Lock
		locked  bool     // rebuilt from a lock: images by digest
		err     []string // the error names these; nothing written
	}{
		{name: "signed", sources: signed},
		{name: "signed, from a lock", sources: signed, locked: true},
		{name: "signed delta", sources: signed, since: &Lock{Images: []LockImage{{Platforms: []LockPlatform{{Layers: []LockBlob{{Digest: appLayer.Digest}}}}}}}},
		{
			name:    "unsigned and other key",
			sources: append(signed, Source{Name: "reg.example/team/bare:1"}, Source{Name: "reg.example/team/other:1"}),
			err: []string{
				"2 of 5 images not signed by the keys",
				"reg.example/team/bare:1: unsigned: the registry has no signature reg.example/team/bare:" + signature.Tag(bare.Digest, "sig"),
				"reg.example/team/other:1: signature reg.example/team/other:" + signature.Tag(other.Digest, "sig") + ": ",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			opts := Options{Platforms: amd64, Verify: keys}
			if tc.since != nil {
				opts.Since = &Delta{Old: tc.since, File: "old.lock", Digest: digest.FromString("old")}
			}
			if tc.locked {
				var err error
				if opts.Lock, err = Write(context.Background(), io.Discard, s, tc.sources, Options{Platforms: amd64}); err != nil {
					t.Fatal(err)
				}
			}
			lock, err := Write(context.Background(), &buf, s, tc.sources, opts)
			if tc.err != nil {
				if err == nil {
					t.Fatal("no error")
				}
				for _, want := range tc.err {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not say %q", err, want)
					}
				}
				if strings.Contains(err.Error(), "team/app") || strings.Contains(err.Error(), "team/tool") {
					t.Errorf("error %q names a signed image", err)
				}
				if buf.Len() != 0 {
					t.Errorf("%d bytes written", buf.Len())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			files, err := archivetest.Files(&buf)
			if err != nil {
				t.Fatal(err)
			}
			var index ocispec.Index
			if err := json.Unmarshal(files["index.json"], &index); err != nil {
				t.Fatal(err)
			}
			entries := map[string]digest.Digest{}
			for _, d := range index.Manifests {
				entries[d.Annotations[AnnotationRefName]] = d.Digest
			}
			carried := map[string]ocispec.Descriptor{
				"reg.example/team/app:" + signature.Tag(app.Digest, "sig"):   appSig,
				"reg.example/team/app:" + signature.Tag(app.Digest, "att"):   appAtt,
				"reg.example/team/tool:" + signature.Tag(tool.Digest, "sig"): toolSig,
			}
			if len(index.Manifests) != len(carried)+len(tc.sources) {
				t.Errorf("index.json entries %v, want the %d images and %d cosign tags, each once", entries, len(tc.sources), len(carried))
			}
			for name, desc := range carried {
				if entries[name] != desc.Digest {
					t.Errorf("index.json: %s is %q, want %s", name, entries[name], desc.Digest)
				}
				var m ocispec.Manifest
				if err := json.Unmarshal(files["blobs/sha256/"+desc.Digest.Encoded()], &m); err != nil {
					t.Fatalf("%s: manifest: %v", name, err)
				}
				for _, b := range append(m.Layers, m.Config) {
					if _, ok := files["blobs/sha256/"+b.Digest.Encoded()]; !ok {
						t.Errorf("%s: blob %s (%s) not in the bundle", name, b.Digest, b.MediaType)
					}
				}
			}
			_, hasAppLayer := files["blobs/sha256/"+appLayer.Digest.Encoded()]
			if hasAppLayer != (tc.since == nil) {
				t.Errorf("app's layer in the bundle: %v, want %v", hasAppLayer, tc.since == nil)
			}
			var got []string
			for _, img := range lock.Images {
				for _, tag := range img.Signatures {
					got = append(got, fmt.Sprintf("%s %s %s", img.Name, tag.Tag, tag.Digest))
				}
			}
			want := []string{
				"reg.example/team/app:1 " + signature.Tag(app.Digest, "sig") + " " + appSig.Digest.String(),
				"reg.example/team/app:1 " + signature.Tag(app.Digest, "att") + " " + appAtt.Digest.String(),
				"reg.example/team/tool:1 " + signature.Tag(tool.Digest, "sig") + " " + toolSig.Digest.String(),
				"reg.example/team/app:latest " + signature.Tag(app.Digest, "sig") + " " + appSig.Digest.String(),
				"reg.example/team/app:latest " + signature.Tag(app.Digest, "att") + " " + appAtt.Digest.String(),
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("lock signatures:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			inside, err := ParseLock(files[LockEntry])
			if err != nil {
				t.Fatal(err)
			}
			if len(inside.Images) != 3 || len(inside.Images[0].Signatures) != 2 || inside.Images[0].Signatures[0] != lock.Images[0].Signatures[0] {
				t.Errorf("the lock in the archive does not list the signatures: %+v", inside.Images)
			}
		})
	}
}
