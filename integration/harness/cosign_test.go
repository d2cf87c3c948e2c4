package harness_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestCosignHelpers: in a plain-HTTP registry with no password, the
// helpers leave the three tags cosign keeps beside an image.
func TestCosignHelpers(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	key := harness.NewCosignKey(t)
	img := harness.PushTestImages(t, reg, []harness.ImageSpec{{Repo: "team/app", Tag: "1.0", OwnLayers: 1}})[0]
	dir := t.TempDir()
	predicate, sbom := filepath.Join(dir, "predicate.json"), filepath.Join(dir, "sbom.spdx.json")
	for file, content := range map[string]string{predicate: `{"builder":"ci"}`, sbom: `{"spdxVersion":"SPDX-2.3"}`} {
		if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	harness.CosignSign(t, reg, key, img.DigestRef)
	harness.CosignAttest(t, reg, key, img.DigestRef, predicate)
	harness.CosignAttachSBOM(t, reg, img.DigestRef, sbom)

	repo, err := name.NewRepository(reg.Host + "/team/app")
	if err != nil {
		t.Fatal(err)
	}
	tags, err := remote.List(repo, remote.WithTransport(reg.Transport()))
	if err != nil {
		t.Fatal(err)
	}
	base := strings.Replace(img.Digest, ":", "-", 1)
	for _, want := range []string{base + ".sig", base + ".att", base + ".sbom"} {
		if !slices.Contains(tags, want) {
			t.Errorf("tags %v, want %s", tags, want)
		}
	}
}
