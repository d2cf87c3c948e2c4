package archive_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
)

// A bundle's cosign entries (.sig, .att, .sbom) are not images: the
// signatures are kept by the digest they sign, with their payloads, for
// the node to verify.
func TestInspectCosignEntries(t *testing.T) {
	imgs := testImages(t)
	app, _ := imgs[0].Image.Digest()
	tool, _ := imgs[1].Image.Digest()
	tag := func(h interface{ String() string }, suffix string) string {
		return "sha256-" + strings.TrimPrefix(h.String(), "sha256:") + "." + suffix
	}
	payload := []byte(`{"critical":{"image":{"docker-manifest-digest":"` + app.String() + `"}}}`)
	sigs := []archivetest.Signature{
		{Name: "registry.example/team/app:" + tag(app, "sig"), Payload: payload, Base64: "c2ln"},
		{Name: "registry.example/team/app:" + tag(app, "att"), Payload: []byte(`{"payloadType":"application/vnd.in-toto+json"}`), Base64: "YXR0"},
		{Name: "registry.example/team/tool:" + tag(tool, "sbom"), Payload: []byte(`{"spdxVersion":"SPDX-2.3"}`), Base64: "c2JvbQ=="},
	}
	var buf bytes.Buffer
	if err := archivetest.WriteSigned(&buf, imgs, sigs); err != nil {
		t.Fatal(err)
	}
	c, err := inspectContents(t, buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, img := range c.Images {
		names = append(names, img.Names...)
	}
	if len(c.Images) != 2 || strings.Contains(strings.Join(names, " "), "sha256-") {
		t.Errorf("images %q, want the two images and no cosign entry", names)
	}
	if len(c.Signatures) != 1 || len(c.Signatures[digest.Digest(app.String())]) != 1 {
		t.Fatalf("signatures %v, want one, for %s", c.Signatures, app)
	}
	sg := c.Signatures[digest.Digest(app.String())][0]
	if sg.Name != sigs[0].Name {
		t.Errorf("signature named %q, want %q", sg.Name, sigs[0].Name)
	}
	rc, err := sg.Fetch(context.Background(), ocispec.Descriptor{Digest: digest.FromBytes(payload)})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	if !bytes.Equal(got, payload) {
		t.Errorf("payload %s, want %s", got, payload)
	}
	if _, err := sg.Fetch(context.Background(), ocispec.Descriptor{Digest: digest.FromString("other")}); err == nil {
		t.Errorf("Fetch of a blob the manifest does not name: no error")
	}
}
