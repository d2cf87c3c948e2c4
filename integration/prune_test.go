package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/preload"
)

// TestPrune is prune on a real containerd and registry, with `once`: an
// image the preloader pulled and the config dropped is removed; one it
// found present (pulled by someone else) stays; one that another name
// also holds loses only the preloader's name; one marked prune: false
// stays; a dry run says what it would remove and removes nothing; and a
// second config file (an ad-hoc run beside the bootstrap hook's) prunes
// only what it brought itself.
func TestPrune(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testPrune(t, flavor) })
	}
}

func testPrune(t *testing.T, flavor harness.Flavor) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/dropped", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/kept", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/theirs", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/aliased", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/sticky", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/adhoc", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
	})
	dropped, kept, theirs, aliased, sticky, adhoc := imgs[0].Ref, imgs[1].Ref, imgs[2].Ref, imgs[3].Ref, imgs[4].Ref, imgs[5].Ref
	node := newTestNode(t, flavor)
	rt := node.cri(t)
	ctx := context.Background()
	if _, err := rt.PullImage(ctx, theirs, nil); err != nil { // someone else's pull
		t.Fatal(err)
	}

	hook := filepath.Join(node.dir, "bootstrap.yaml") // one path: one owner across runs
	once := func(path, yaml string) onceOutput {
		t.Helper()
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		out, r := onceJSON(t, node.env, path)
		if r.code != 0 {
			t.Fatalf("once: %s", r)
		}
		return out
	}
	present := func(ref string) bool {
		t.Helper()
		st, err := rt.ImageStatus(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		return st != nil
	}
	list := func(extra string, refs ...string) string {
		y := "sandboxImage: none\n" + extra + "images:\n"
		if len(refs) == 0 {
			y += "  []\n"
		}
		for _, r := range refs {
			y += "  - image: " + r + "\n"
			if r == sticky {
				y += "    prune: false\n"
			}
		}
		return y
	}

	once(hook, list("", dropped, kept, theirs, aliased, sticky))
	once(filepath.Join(node.dir, "adhoc.yaml"), list("", adhoc))
	// Another name of the aliased image, as a person's `ctr images tag` leaves it.
	alias := "registry.example/other/name:1"
	is := node.containerd(t).ImageService()
	src, err := is.Get(ctx, aliased)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := is.Create(ctx, images.Image{Name: alias, Target: src.Target}); err != nil {
		t.Fatal(err)
	}

	out := once(hook, list("prune: dryRun\n", kept))
	if want := []preload.Pruned{{Image: aliased, Action: preload.PruneWouldRemove}, {Image: dropped, Action: preload.PruneWouldRemove}}; !samePruned(out.Pruned, want) {
		t.Errorf("dry run: pruned %+v, want %+v", out.Pruned, want)
	}
	for _, ref := range []string{dropped, aliased} {
		if !present(ref) {
			t.Errorf("dry run removed %s", ref)
		}
	}

	out = once(hook, list("prune: true\n", kept))
	if want := []preload.Pruned{{Image: aliased, Action: preload.PruneRemoved}, {Image: dropped, Action: preload.PruneRemoved}}; !samePruned(out.Pruned, want) {
		t.Errorf("prune: pruned %+v, want %+v", out.Pruned, want)
	}
	for ref, want := range map[string]bool{
		dropped: false, // ours, dropped
		kept:    true,  // still listed
		theirs:  true,  // not ours
		aliased: false, // ours, dropped: our name goes ...
		alias:   true,  // ... the image stays under its other name
		sticky:  true,  // prune: false
		adhoc:   true,  // another config's
	} {
		if got := present(ref); got != want {
			t.Errorf("after prune, %s present %v, want %v", ref, got, want)
		}
	}
	if st, _ := rt.ImageStatus(ctx, alias); st == nil || st.Id == "" {
		t.Errorf("the aliased image lost its other name: %+v", st)
	}

	// The second config prunes what it brought, and nothing of the hook's.
	out = once(filepath.Join(node.dir, "adhoc.yaml"), list("prune: true\n"))
	if want := []preload.Pruned{{Image: adhoc, Action: preload.PruneRemoved}}; !samePruned(out.Pruned, want) {
		t.Errorf("ad-hoc prune: %+v, want %+v", out.Pruned, want)
	}
	if !present(kept) || present(adhoc) {
		t.Errorf("ad-hoc prune: kept present %v (want true), adhoc present %v (want false)", present(kept), present(adhoc))
	}
}

type onceOutput struct {
	Images []preload.Result `json:"images"`
	Pruned []preload.Pruned `json:"pruned"`
}

// onceJSON runs `preloader once --config path -o json` and decodes what it
// printed.
func onceJSON(t *testing.T, env []string, path string, args ...string) (onceOutput, run) {
	t.Helper()
	r := preloader(t, 3*time.Minute, env, append([]string{"once", "--config", path, "-o", "json"}, args...)...)
	var out onceOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("once -o json: %v\n%s", err, r)
	}
	return out, r
}

func samePruned(got, want []preload.Pruned) bool {
	cmp := func(a, b preload.Pruned) int {
		if a.Image < b.Image {
			return -1
		}
		if a.Image > b.Image {
			return 1
		}
		return 0
	}
	got, want = slices.Clone(got), slices.Clone(want)
	slices.SortFunc(got, cmp)
	slices.SortFunc(want, cmp)
	return slices.Equal(got, want)
}
