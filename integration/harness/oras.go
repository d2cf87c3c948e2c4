package harness

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// ORASVersion is the ORAS CLI that tools/oras/go.mod requires and
// scripts/install-deps.sh builds from it.
const ORASVersion = "v1.3.6"

// ORASBinary is that CLI; a test that needs it calls Require with it.
func ORASBinary() string {
	return filepath.Join(CacheDir(), "bin", "oras-"+ORASVersion)
}

// Artifacts are OCI artifacts the ORAS CLI pushed, one of each shape a
// pod's image volume may name.
type Artifacts struct {
	// Image is image-shaped: a gzip layer and a real image config whose
	// diff_ids are that layer's.
	Image string
	// Empty has the empty config (application/vnd.oci.empty.v1+json) and
	// an artifactType, as `oras push --artifact-type` writes, and one
	// file as its layer.
	Empty string
	// Custom has a config and a file of media types of its own.
	Custom string
	// File is the content of the one file, model.bin, that Empty and
	// Custom hold; Image holds model/weights.bin in its layer.
	File []byte
}

// The artifact and config types of the artifacts PushArtifacts pushes.
const (
	ArtifactType       = "application/vnd.example.model.v1"
	ArtifactConfigType = "application/vnd.example.model.config.v1+json"
	artifactFileType   = "application/vnd.example.model.weights.v1"
)

// PushArtifacts pushes Artifacts to reg under repo (tags image, empty,
// custom) with the ORAS CLI; the registry must be plain HTTP without
// credentials.
func PushArtifacts(t T, reg *Registry, repo string) Artifacts {
	t.Helper()
	Require(t, "oras "+ORASVersion+" (scripts/install-deps.sh)", ORASBinary())
	dir, err := os.MkdirTemp("", "artifacts")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	layer, diffID := modelLayer(t)
	write("layer.tar.gz", layer)
	cfg, err := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	if err != nil {
		t.Fatal(err)
	}
	write("image-config.json", cfg)
	file := bytes.Repeat([]byte("weights "), 4096)
	write("model.bin", file)
	write("custom-config.json", []byte(`{"format":"example","version":1}`))

	ref := func(tag string) string { return reg.Host + "/" + repo + ":" + tag }
	a := Artifacts{Image: ref("image"), Empty: ref("empty"), Custom: ref("custom"), File: file}
	for _, args := range [][]string{
		{a.Image, "--config", "image-config.json:application/vnd.oci.image.config.v1+json", "layer.tar.gz:application/vnd.oci.image.layer.v1.tar+gzip"},
		// The file without a media type: ORAS gives it the OCI layer
		// type, as it does for users who name none.
		{a.Empty, "--artifact-type", ArtifactType, "model.bin"},
		{a.Custom, "--config", "custom-config.json:" + ArtifactConfigType, "model.bin:" + artifactFileType},
	} {
		cmd := exec.Command(ORASBinary(), append([]string{"push", "--plain-http", "--disable-path-validation"}, args...)...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("oras push %s: %v\n%s", args[0], err, out)
		}
	}
	return a
}

// modelLayer is a gzip tar of one file, and its diff ID.
func modelLayer(t T) ([]byte, string) {
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	body := bytes.Repeat([]byte("model "), 4096)
	if err := tw.WriteHeader(&tar.Header{Name: "model/weights.bin", Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(0, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tarball.Bytes())
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return gz.Bytes(), fmt.Sprintf("sha256:%x", sha256.Sum256(tarball.Bytes()))
}
