package preload_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// Prune removes what this owner pulled and the list dropped, and nothing
// else: not what it found present, not what another owner also brought,
// not an image in use, not one marked prune: false; dryRun only says.
func TestPrune(t *testing.T) {
	const (
		a, b, c, d = "registry.example/a:1", "registry.example/b:1", "registry.example/c:1", "registry.example/d:1"
		owner      = "once:/etc/preloader/images.yaml"
	)
	parse := func(extra string, names ...string) *config.Config {
		y := "sandboxImage: none\n" + extra + "images:\n"
		for _, n := range names {
			y += "  - image: " + n + "\n"
		}
		cfg, err := config.Parse("images.yaml", []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	tests := []struct {
		name      string
		setup     func(*critest.Server, *critest.Containerd)
		later     *config.Config
		want      []preload.Pruned
		remain    []string
		forgotten []string
	}{
		{name: "dropped image removed", later: parse("prune: true\n", a),
			want: []preload.Pruned{{Image: b, Action: preload.PruneRemoved}}, remain: []string{a, c}},
		{name: "dry run removes nothing", later: parse("prune: dryRun\n", a),
			want: []preload.Pruned{{Image: b, Action: preload.PruneWouldRemove}}, remain: []string{a, b, c}},
		{name: "prune off", later: parse("", a), remain: []string{a, b, c}},
		{name: "in use kept", later: parse("prune: true\n", a),
			setup: func(s *critest.Server, _ *critest.Containerd) {
				st, _ := connect(t, s).ImageStatus(context.Background(), b)
				s.RunContainer("web", st.GetId())
			},
			want: []preload.Pruned{{Image: b, Action: preload.PruneInUse, Reason: "used by container web"}}, remain: []string{a, b, c}},
		{name: "mounted as an image volume kept", later: parse("prune: true\n", a),
			setup: func(s *critest.Server, _ *critest.Containerd) {
				st, _ := connect(t, s).ImageStatus(context.Background(), b)
				s.RunContainer("server", c, st.GetId())
			},
			want: []preload.Pruned{{Image: b, Action: preload.PruneInUse, Reason: "mounted as an image volume by container server"}}, remain: []string{a, b, c}},
		{name: "another owner's too: only forgotten", later: parse("prune: true\n", a),
			setup: func(_ *critest.Server, f *critest.Containerd) {
				_ = f.Own(context.Background(), "agent:kube-preloader/preloader-config", b, false)
			},
			remain: []string{a, b, c}, forgotten: []string{b}},
		{name: "another owner's pin: only forgotten", later: parse("prune: true\n", a),
			setup: func(_ *critest.Server, f *critest.Containerd) {
				_, _ = f.SyncPins(context.Background(), "agent:kube-preloader/preloader-config", []string{b}, nil)
			},
			remain: []string{a, b, c}, forgotten: []string{b}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			s.Add(c, 1) // present before: not the preloader's
			ctrd := critest.NewContainerd(s)
			e := &preload.Engine{Store: noderuntime.WithContainerd(connect(t, s), ctrd), MaxAttempts: 1, Owner: owner}
			ctx := context.Background()
			first := parse("", a, b, c)
			if _, err := e.Run(ctx, first, first.Images); err != nil {
				t.Fatal(err)
			}
			if tt.setup != nil {
				tt.setup(s, ctrd)
			}
			if _, err := e.Run(ctx, tt.later, tt.later.Images); err != nil {
				t.Fatal(err)
			}
			got, err := e.Prune(ctx, tt.later)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("pruned %+v, want %+v", got, tt.want)
			}
			for _, n := range []string{a, b, c} {
				st, _ := connect(t, s).ImageStatus(ctx, n)
				if present := st != nil; present != slices.Contains(tt.remain, n) {
					t.Errorf("%s present %v, want %v", n, present, !present)
				}
			}
			owned, _ := ctrd.Owned(ctx, owner)
			for _, n := range tt.forgotten {
				if slices.ContainsFunc(owned, func(o noderuntime.OwnedImage) bool { return o.Name == n }) {
					t.Errorf("%s still owned by %s", n, owner)
				}
			}
			for k := range ctrd.Labels(c) {
				if strings.HasPrefix(k, containerd.LabelOwnerPrefix) {
					t.Errorf("%s was present before the preloader ran, yet it is recorded as brought: %s", c, k)
				}
			}
		})
	}
}

// An image marked prune: false stays when it leaves the list.
func TestPruneKeepsNoPrune(t *testing.T) {
	const a, b = "registry.example/a:1", "registry.example/b:1"
	s := critest.Start(t)
	ctrd := critest.NewContainerd(s)
	e := &preload.Engine{Store: noderuntime.WithContainerd(connect(t, s), ctrd), MaxAttempts: 1, Owner: "agent:ns/cm"}
	ctx := context.Background()
	first, err := config.Parse("images.yaml", []byte("sandboxImage: none\nimages:\n  - image: "+a+"\n  - image: "+b+"\n    prune: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(ctx, first, first.Images); err != nil {
		t.Fatal(err)
	}
	later, err := config.Parse("images.yaml", []byte("sandboxImage: none\nprune: true\nimages:\n  - image: "+a+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := e.Prune(ctx, later); err != nil || len(got) != 0 {
		t.Fatalf("pruned %+v, %v; want nothing", got, err)
	}
	if st, _ := connect(t, s).ImageStatus(ctx, b); st == nil {
		t.Error("the prune: false image was removed")
	}
}
