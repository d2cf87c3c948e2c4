package integration

import (
	"context"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/noderuntime/storetest"
)

// TestConformance runs the runtime contract the unit tests' fake passes
// (noderuntime/storetest) against real containerd and CRI-O, reached as
// the preloader reaches them (noderuntime.Connect): public images from an
// anonymous registry, private ones from a registry with basic auth behind
// TLS from a test CA.
func TestConformance(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testConformance(t, flavor) })
	}
	t.Run("cri-o", testConformanceCRIO)
}

// conformanceRegistries start the anonymous and the private registry with
// one image each.
func conformanceRegistries(t *testing.T) (open, secure *harness.Registry, pub, priv harness.TestImage) {
	open = harness.StartRegistry(t, harness.RegistryOptions{})
	secure = harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, TLS: true})
	pub = harness.PushTestImages(t, open, []harness.ImageSpec{{Repo: "conformance/public", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10}})[0]
	priv = harness.PushTestImages(t, secure, []harness.ImageSpec{{Repo: "conformance/private", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10}})[0]
	return open, secure, pub, priv
}

// testConformanceCRIO: CRI-O is a runtime known only by its CRI, so the
// suite asserts that it refuses what only containerd's API does (digest
// records, tags, owners, pins, direct pulls) rather than skipping those.
func testConformanceCRIO(t *testing.T) {
	open, secure, pub, priv := conformanceRegistries(t)
	crio := harness.StartCRIO(t, harness.CRIOOptions{PauseImage: "registry.example/unused/pause:0", Registries: []*harness.Registry{open, secure}})
	store, err := noderuntime.Connect(context.Background(), noderuntime.Options{CRIEndpoint: crio.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if f := store.Facts(); f.Name != "cri-o" || f.ContainerdAddress != "" {
		t.Fatalf("Connect found %+v, want cri-o without a containerd address", f)
	}
	storetest.Run(t, storetest.Backend{
		Store:     store,
		Public:    storetest.Image{Ref: pub.Ref, Digest: pub.Digest},
		Private:   storetest.Image{Ref: priv.Ref, Digest: priv.Digest},
		Auth:      &runtimeapi.AuthConfig{Username: testUser, Password: testPassword},
		WrongAuth: &runtimeapi.AuthConfig{Username: testUser, Password: testPassword + "-wrong"},
		Missing:   open.Host + "/conformance/missing:1",
	})
}

func testConformance(t *testing.T, flavor harness.Flavor) {
	open, secure, pub, priv := conformanceRegistries(t)
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: flavor, SandboxImage: "registry.example/unused/pause:0"})
	open.TrustIn(ctrd)
	secure.TrustIn(ctrd)
	// containerd 2.x does not report its registry config_path; the
	// preloader reads it from the config file, as on a node.
	t.Setenv(noderuntime.ContainerdConfigEnv, ctrd.ConfigFile)
	store, err := noderuntime.Connect(context.Background(), noderuntime.Options{CRIEndpoint: ctrd.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if f := store.Facts(); f.Name != "containerd" || f.ContainerdAddress == "" {
		t.Fatalf("Connect found %+v, want containerd with its address", f)
	}
	storetest.Run(t, storetest.Backend{
		Store:        store,
		Public:       storetest.Image{Ref: pub.Ref, Digest: pub.Digest},
		Private:      storetest.Image{Ref: priv.Ref, Digest: priv.Digest},
		Auth:         &runtimeapi.AuthConfig{Username: testUser, Password: testPassword},
		WrongAuth:    &runtimeapi.AuthConfig{Username: testUser, Password: testPassword + "-wrong"},
		Missing:      open.Host + "/conformance/missing:1",
		PinsReported: flavor == harness.Containerd2,
	})
}
