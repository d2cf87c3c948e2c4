package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// TestPinOwners is pins per config on a real containerd and registry,
// with `once`: config A (the bootstrap hook's) pins a and b, config B (an
// ad-hoc run) pins b and c and leaves a pinned; A dropping b leaves b
// pinned for B, A with pin: false unpins a only, and B with pin: false
// unpins b and c; A's prune leaves b, which it brought, to B, which pins
// it. A pin an earlier version set without an owner stays throughout.
func TestPinOwners(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testPinOwners(t, flavor) })
	}
}

func testPinOwners(t *testing.T, flavor harness.Flavor) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "team/a", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/b", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/c", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
		{Repo: "team/old", Tag: "1", OwnLayers: 1, LayerSize: 32 << 10},
	})
	a, b, c, old := imgs[0].Ref, imgs[1].Ref, imgs[2].Ref, imgs[3].Ref
	all := []string{a, b, c, old}
	node := newTestNode(t, flavor)
	ctx := context.Background()

	// What a version that recorded no owner left: the CRI's pin and its
	// own mark.
	if _, err := node.cri(t).PullImage(ctx, old, nil); err != nil {
		t.Fatal(err)
	}
	is := node.containerd(t).ImageService()
	rec, err := is.Get(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	rec.Labels = map[string]string{containerd.LabelPinned: "pinned", containerd.LabelPreloaderPinned: "true"}
	if _, err := is.Update(ctx, rec, "labels."+containerd.LabelPinned, "labels."+containerd.LabelPreloaderPinned); err != nil {
		t.Fatal(err)
	}

	configA, configB := filepath.Join(node.dir, "bootstrap.yaml"), filepath.Join(node.dir, "adhoc.yaml")
	type pins struct{ pinned, unpinned, stillPinned []string }
	steps := []struct {
		name   string
		config string
		pin    bool
		prune  bool
		images []string
		want   []string // pinned after the run (and present)
		log    *pins    // the run's "pins changed"; nil: none
	}{
		{"A pins a and b", configA, true, false, []string{a, b}, []string{a, b, old}, &pins{pinned: []string{a, b}}},
		{"B pins b and c, a stays A's", configB, true, false, []string{b, c}, []string{a, b, c, old}, &pins{pinned: []string{b, c}}},
		{"A drops b, B holds it", configA, true, false, []string{a}, []string{a, b, c, old}, &pins{stillPinned: []string{b}}},
		{"A with pin: false", configA, false, false, []string{a}, []string{b, c, old}, &pins{unpinned: []string{a}}},
		// A brought b, and B pins it: A's prune leaves it to B.
		{"A prunes", configA, false, true, []string{a}, []string{b, c, old}, nil},
		{"B with pin: false", configB, false, false, []string{b, c}, []string{old}, &pins{unpinned: []string{b, c}}},
	}
	for _, st := range steps {
		y := fmt.Sprintf("sandboxImage: none\npin: %v\nprune: %v\nimages:\n", st.pin, st.prune)
		for _, ref := range st.images {
			y += "  - image: " + ref + "\n"
		}
		if err := os.WriteFile(st.config, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		out, r := onceJSON(t, node.env, st.config)
		if r.code != 0 {
			t.Fatalf("%s: %s", st.name, r)
		}
		if len(out.Pruned) > 0 {
			t.Errorf("%s: pruned %+v, want nothing", st.name, out.Pruned)
		}
		wantPinnedStatus(t, node, flavor, st.name, all, st.want)
		got, found := pinsChanged(r.stderr)
		switch {
		case !found && st.log == nil:
		case !found || st.log == nil || !slices.Equal(got["pinned"], st.log.pinned) ||
			!slices.Equal(got["unpinned"], st.log.unpinned) || !slices.Equal(got["stillPinnedByOthers"], st.log.stillPinned):
			t.Errorf("%s: logged pins changed %v (found %v), want %+v\n%s", st.name, got, found, st.log, r.stderr)
		}
	}
}

// wantPinnedStatus checks each of refs is pinned exactly when want lists
// it: the CRI's pin label on its containerd record, and the pinned field
// of CRI ImageStatus as the kubelet reads it (containerd 1.6 reports
// false for every image), waiting for the CRI to catch up with
// containerd's events.
func wantPinnedStatus(t *testing.T, node *testNode, flavor harness.Flavor, step string, refs, want []string) {
	t.Helper()
	ctx := context.Background()
	is := node.containerd(t).ImageService()
	for _, ref := range refs {
		img, err := is.Get(ctx, ref)
		if errdefs.IsNotFound(err) && !slices.Contains(want, ref) {
			continue // not on the node yet
		}
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if got := img.Labels[containerd.LabelPinned] == "pinned"; got != slices.Contains(want, ref) {
			t.Errorf("%s: %s pin label %v, want %v (labels %v)", step, ref, got, !got, img.Labels)
		}
	}
	c := node.cri(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var wrong []string
		for _, ref := range refs {
			st, err := c.ImageStatus(ctx, ref)
			if err != nil {
				t.Fatalf("%s: ImageStatus %s: %v", step, ref, err)
			}
			if st == nil {
				if slices.Contains(want, ref) {
					wrong = append(wrong, ref+" absent")
				}
				continue
			}
			if wantPin := slices.Contains(want, ref) && flavor != harness.Containerd16; st.Pinned != wantPin {
				wrong = append(wrong, fmt.Sprintf("%s pinned=%v", ref, st.Pinned))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: CRI ImageStatus %v, want pinned %v", step, wrong, want)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pinsChanged reads the attributes of the "pins changed" line of once's
// log (slog's text format, lists as [x y]).
func pinsChanged(stderr string) (map[string][]string, bool) {
	for line := range strings.Lines(stderr) {
		_, rest, ok := strings.Cut(line, `msg="pins changed" `)
		if !ok {
			continue
		}
		attrs := map[string][]string{}
		for rest = strings.TrimSpace(rest); rest != ""; rest = strings.TrimSpace(rest) {
			key, value, _ := strings.Cut(rest, "=")
			if strings.HasPrefix(value, `"`) {
				q, err := strconv.QuotedPrefix(value)
				if err != nil {
					return nil, false
				}
				rest = value[len(q):]
				value, _ = strconv.Unquote(q)
			} else {
				value, rest, _ = strings.Cut(value, " ")
			}
			attrs[key] = strings.Fields(strings.Trim(value, "[]"))
		}
		return attrs, true
	}
	return nil, false
}
