package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestArtifacts preloads OCI artifacts the ORAS CLI pushed, one
// image-shaped and two that are not (an empty config with an
// artifactType; a config of its own type), and checks what the kubelet
// will find. containerd records the others without unpacking them: 2.4's
// CRI "pulls" them with nothing unpacked, 1.6's CRI and the client of
// either fail their unpack again on every retry. Each is a final failure,
// unsupported runtime, saying why, with no image record left behind; one
// the kubelet pulled is not present either. CRI-O keeps all three.
// Archives and bundles refuse an artifact as one.
func TestArtifacts(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	a := harness.PushArtifacts(t, reg, "models/m")
	refs := []string{a.Image, a.Empty, a.Custom}

	for _, flavor := range flavors {
		for _, via := range []string{"cri", "containerd"} {
			t.Run(string(flavor)+" pullVia "+via, func(t *testing.T) { testArtifactsContainerd(t, flavor, via, a) })
		}
	}

	t.Run("containerd 2.4.2: an artifact the kubelet pulled is not present", func(t *testing.T) {
		node := newTestNode(t, harness.Containerd2)
		c := node.cri(t)
		// The kubelet's pull of an image volume's artifact "succeeds".
		if _, err := c.PullImage(context.Background(), a.Empty, nil); err != nil {
			t.Fatal(err)
		}
		r := node.once(t, pullViaConfig("cri", "", a.Empty))
		if r.code != 1 {
			t.Fatalf("want exit 1:\n%s", r)
		}
		out := parseOnce(t, r)
		if st, reason := out.status(a.Empty); st != "failed" || reason != "unsupported runtime" {
			t.Errorf("%s: %s %q, want failed \"unsupported runtime\"\n%s", a.Empty, st, reason, r)
		}
		if want := a.Empty + " is an OCI artifact"; !strings.Contains(out.Images[0].Error, want) {
			t.Errorf("error %q lacks %q", out.Images[0].Error, want)
		}
		// Not the preloader's: it leaves the kubelet's record alone.
		if img, err := c.ImageStatus(context.Background(), a.Empty); err != nil || img == nil {
			t.Errorf("CRI ImageStatus(%s) = %v, %v; want the kubelet's record kept", a.Empty, img, err)
		}
	})

	t.Run("CRI-O 1.36.3", func(t *testing.T) {
		crio := harness.StartCRIO(t, harness.CRIOOptions{PauseImage: "registry.example/unused/pause:0", Registries: []*harness.Registry{reg}})
		cfg := writeFile(t, t.TempDir(), "images.yaml", imagesYAML("none", refs...))
		r := preloader(t, time.Minute, []string{cri.EndpointEnv + "=" + crio.Endpoint}, "once", "--config", cfg, "-o", "json")
		if r.code != 0 {
			t.Fatalf("want exit 0:\n%s", r)
		}
		out := parseOnce(t, r)
		for _, ref := range refs {
			if st, reason := out.status(ref); st != "pulled" {
				t.Errorf("%s: %s %q, want pulled", ref, st, reason)
			}
		}
		assertPresent(t, crio.Endpoint, refs...)
	})

	t.Run("archive and bundle of an artifact: refused as one", func(t *testing.T) {
		node := newTestNode(t, harness.Containerd2)
		archives := t.TempDir()
		layout := filepath.Join(t.TempDir(), "layout")
		orasRun(t, "copy", "--from-plain-http", a.Empty, "--to-oci-layout", layout+":empty")
		tarball := exec.Command("tar", "-C", layout, "-cf", filepath.Join(archives, "model.tar"), ".")
		if out, err := tarball.CombinedOutput(); err != nil {
			t.Fatalf("tar: %v\n%s", err, out)
		}
		ref := "corp.example/models/m:1"
		r := node.once(t, "sandboxImage: none\narchiveDir: "+archives+"\nimages:\n  - image: "+ref+"\n    archive: model.tar\n")
		if r.code != 1 {
			t.Fatalf("archive: want exit 1:\n%s", r)
		}
		out := parseOnce(t, r)
		if st, reason := out.status(ref); st != "failed" || reason != "unsupported runtime" {
			t.Errorf("archive: %s %q, want failed \"unsupported runtime\"\n%s", st, reason, r)
		}
		if want := "is an OCI artifact (artifactType " + harness.ArtifactType + ", config application/vnd.oci.empty.v1+json), not a container image: containerd does not unpack OCI artifacts"; !strings.Contains(out.Images[0].Error, want) {
			t.Errorf("archive: error %q lacks %q", out.Images[0].Error, want)
		}

		cfg := writeFile(t, t.TempDir(), "bundle.yaml", imagesYAML("none", a.Image, a.Custom))
		bundle := filepath.Join(t.TempDir(), "bundle.tar")
		r = preloader(t, time.Minute, nil, "bundle", "--config", cfg, "-o", bundle)
		if r.code == 0 {
			t.Fatalf("bundle of an artifact: want a failure:\n%s", r)
		}
		if want := a.Custom + " is an OCI artifact (config " + harness.ArtifactConfigType + "), not a container image: containerd does not unpack OCI artifacts"; !strings.Contains(r.stderr, want) {
			t.Errorf("bundle: stderr lacks %q\n%s", want, r)
		}
		if _, err := os.Stat(bundle); err == nil {
			t.Errorf("bundle: %s written for a bundle that failed", bundle)
		}
	})
}

func orasRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(harness.ORASBinary(), args...).CombinedOutput(); err != nil {
		t.Fatalf("oras %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// testArtifactsContainerd preloads a's artifacts on containerd through
// pullVia via.
func testArtifactsContainerd(t *testing.T, flavor harness.Flavor, via string, a harness.Artifacts) {
	refs := []string{a.Image, a.Empty, a.Custom}
	node := newTestNode(t, flavor)
	start := time.Now()
	r := node.once(t, pullViaConfig(via, "", refs...), "--timeout", "2m")
	took := time.Since(start)
	if r.code != 1 {
		t.Fatalf("want exit 1:\n%s", r)
	}
	out := parseOnce(t, r)
	if st, reason := out.status(a.Image); st != "pulled" {
		t.Errorf("%s: %s %q, want pulled", a.Image, st, reason)
	}
	assertPresent(t, node.ctrd.Endpoint, a.Image)
	for _, img := range out.Images {
		if img.Image == a.Image {
			continue
		}
		if img.Status != "failed" || img.Reason != "unsupported runtime" || img.Attempts != 1 {
			t.Errorf("%s: %s %q after %d attempts, want failed \"unsupported runtime\" after 1", img.Image, img.Status, img.Reason, img.Attempts)
		}
		for _, want := range []string{img.Image + " is an OCI artifact", "containerd " + out.Runtime.Version + " does not unpack OCI artifacts"} {
			if !strings.Contains(img.Error, want) {
				t.Errorf("%s: error %q lacks %q", img.Image, img.Error, want)
			}
		}
	}
	if took > time.Minute {
		t.Errorf("once took %v: the artifacts' failure was retried", took)
	}
	c := node.cri(t)
	is := node.containerd(t).ImageService()
	for _, ref := range []string{a.Empty, a.Custom} {
		if img, err := c.ImageStatus(context.Background(), ref); err != nil || img != nil {
			t.Errorf("CRI ImageStatus(%s) = %v, %v; want absent", ref, img, err)
		}
		name, err := reference.ParseDockerRef(ref)
		if err != nil {
			t.Fatal(err)
		}
		if rec, err := is.Get(context.Background(), name.String()); !errdefs.IsNotFound(err) {
			t.Errorf("containerd image record %s = %v, %v; want none left behind", name, rec.Target.Digest, err)
		}
	}
}
