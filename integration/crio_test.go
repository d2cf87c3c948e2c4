package integration

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// TestSandboxImageCRIO: on a real CRI-O the pause image is the one its
// status reports, its effective pause_image (a crio.conf.d drop-in's over
// crio.conf's), and `once` with sandboxImage auto pulls it and an image of
// the config from a private registry with the node's credentials, naming
// CRI-O as its runtime.
func TestSandboxImageCRIO(t *testing.T) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, TLS: true})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "infra/pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10},
		{Repo: "team/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
	})
	pause, app := imgs[0], imgs[1]
	crio := harness.StartCRIO(t, harness.CRIOOptions{
		PauseImage:   "registry.example/overridden/pause:0",
		ConfigDropIn: "[crio.image]\npause_image = " + strconv.Quote(pause.Ref) + "\n",
		Registries:   []*harness.Registry{reg},
	})

	ctx := context.Background()
	store, err := noderuntime.Connect(ctx, noderuntime.Options{CRIEndpoint: crio.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	img, source, err := store.Facts().SandboxImage(ctx)
	if err != nil || img != pause.Ref || source != "CRI-O status (pause_image)" {
		t.Fatalf("SandboxImage = %q, %q, %v; want %s from CRI-O's status", img, source, err, pause.Ref)
	}

	dir := t.TempDir()
	cfg := writeFile(t, dir, "images.yaml", imagesYAML("auto", app.Ref))
	creds := writeFile(t, dir, "config.json", harness.DockerConfigJSON(reg.Host, testUser, testPassword))
	r := preloader(t, time.Minute, []string{cri.EndpointEnv + "=" + crio.Endpoint}, "once", "--config", cfg, "--docker-config", creds, "-o", "json")
	assertNoSecret(t, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("want exit 0:\n%s", r)
	}
	out := parseOnce(t, r)
	for _, ref := range []string{pause.Ref, app.Ref} {
		if st, reason := out.status(ref); st != "pulled" {
			t.Errorf("%s: %s %s, want pulled\n%s", ref, st, reason, r)
		}
	}
	assertPresent(t, crio.Endpoint, pause.Ref, app.Ref)
	assertRuntime(t, out, crio.Endpoint, "cri-o")
	if want := strings.TrimPrefix(harness.CRIOVersion, "v"); out.Runtime.Version != want {
		t.Errorf("runtime version %q, want the harness's CRI-O %s", out.Runtime.Version, want)
	}
}
