package preload_test

import (
	"bytes"
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// testArchive writes an OCI layout archive of images named names[i] into
// dir/file and returns their config digests.
func testArchive(t *testing.T, dir, file string, f archivetest.Format, names ...[]string) []string {
	t.Helper()
	var imgs []archivetest.Image
	var ids []string
	for i, n := range names {
		l, err := archivetest.Layer(uint64(len(file)*100+i), 1024, true)
		if err != nil {
			t.Fatal(err)
		}
		img, err := archivetest.NewImage("linux/amd64", l)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := img.ConfigName()
		ids = append(ids, id.String())
		imgs = append(imgs, archivetest.Image{Names: n, Image: img})
	}
	var buf bytes.Buffer
	if err := archivetest.Write(&buf, f, imgs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return ids
}

// split replaces dir/file with n parts of it and returns their paths.
func split(t *testing.T, dir, file string, n int) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	parts, err := archivetest.WriteParts(dir, file, data, len(data)/n+1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, file)); err != nil {
		t.Fatal(err)
	}
	return parts
}

type outcome struct {
	status preload.Status
	reason failure.Reason
}

func outcomes(results []preload.Result) map[string]outcome {
	m := map[string]outcome{}
	for _, r := range results {
		m[r.Image] = outcome{r.Status, r.Reason}
	}
	return m
}

func TestRunArchives(t *testing.T) {
	const a, b, x = "registry.example/a:1", "registry.example/b:1", "registry.example/x:1"
	tests := []struct {
		name        string
		setup       func(t *testing.T, dir string, s *critest.Server)
		images      []config.Image
		noCtrd      bool
		want        map[string]outcome
		wantImports int
	}{
		{
			name: "archiveDir: images in the config and the archive's others",
			setup: func(t *testing.T, dir string, _ *critest.Server) {
				testArchive(t, dir, "ab.tar", archivetest.OCILayout, []string{a}, []string{b})
			},
			images: images(a),
			want: map[string]outcome{
				a: {preload.StatusImported, failure.Reason{}},
				b: {preload.StatusImported, failure.Reason{}},
			},
			wantImports: 1,
		},
		{
			name: "present by config digest: not imported again",
			setup: func(t *testing.T, dir string, s *critest.Server) {
				ids := testArchive(t, dir, "ab.tar", archivetest.OCILayout, []string{a}, []string{b})
				s.AddImage(&runtimeapi.Image{Id: ids[0], RepoTags: []string{a}})
				s.AddImage(&runtimeapi.Image{Id: ids[1], RepoTags: []string{b}})
			},
			images: images(a),
			want: map[string]outcome{
				a: {preload.StatusPresent, failure.Reason{}},
				b: {preload.StatusPresent, failure.Reason{}},
			},
		},
		{
			name: "same name, other content: imported again",
			setup: func(t *testing.T, dir string, s *critest.Server) {
				ids := testArchive(t, dir, "ab.tar", archivetest.OCILayout, []string{a}, []string{b})
				s.AddImage(&runtimeapi.Image{Id: "sha256:0000000000000000000000000000000000000000000000000000000000000000", RepoTags: []string{a}})
				s.AddImage(&runtimeapi.Image{Id: ids[1], RepoTags: []string{b}})
			},
			images: images(a),
			want: map[string]outcome{
				a: {preload.StatusImported, failure.Reason{}},
				b: {preload.StatusPresent, failure.Reason{}},
			},
			wantImports: 1,
		},
		{
			name: "an archive's only image takes the name of the entry that names the archive",
			setup: func(t *testing.T, dir string, _ *critest.Server) {
				testArchive(t, dir, "untagged.tar", archivetest.DockerSave, nil)
			},
			images:      []config.Image{{Ref: x, Name: x, Archive: "untagged.tar"}},
			want:        map[string]outcome{x: {preload.StatusImported, failure.Reason{}}},
			wantImports: 1,
		},
		{
			name: "several images, none with the entry's name",
			setup: func(t *testing.T, dir string, _ *critest.Server) {
				testArchive(t, dir, "ab.tar", archivetest.OCILayout, []string{a}, []string{b})
			},
			images: []config.Image{{Ref: x, Name: x, Archive: "ab.tar"}},
			want: map[string]outcome{
				x: {preload.StatusFailed, failure.Archive},
				a: {preload.StatusImported, failure.Reason{}},
				b: {preload.StatusImported, failure.Reason{}},
			},
			wantImports: 1,
		},
		{
			name: "a file in archiveDir that is not an archive fails as itself",
			setup: func(t *testing.T, dir string, _ *critest.Server) {
				if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("images for the lab\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, ".upload.tmp"), []byte("hidden: skipped"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want: map[string]outcome{"notes.txt": {preload.StatusFailed, failure.Archive}},
		},
		{
			name: "a bundle's lock, checksums and signatures beside it are no archives",
			setup: func(t *testing.T, dir string, _ *critest.Server) {
				testArchive(t, dir, "ab.tar", archivetest.OCILayout, []string{a}, []string{b})
				for _, f := range []string{"ab.tar.lock", "ab.tar.sha256", "SHA256SUMS", "ab.tar.sig"} {
					if err := os.WriteFile(filepath.Join(dir, f), []byte("version: 1\n"), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			},
			want: map[string]outcome{
				a: {preload.StatusImported, failure.Reason{}},
				b: {preload.StatusImported, failure.Reason{}},
			},
			wantImports: 1,
		},
		{
			name: "the parts of a split archive are one archive",
			setup: func(t *testing.T, dir string, _ *critest.Server) {
				testArchive(t, dir, "ab.tar", archivetest.OCILayout, []string{a}, []string{b})
				split(t, dir, "ab.tar", 3)
			},
			images: []config.Image{{Ref: a, Name: a, Archive: "ab.tar"}},
			want: map[string]outcome{
				a: {preload.StatusImported, failure.Reason{}},
				b: {preload.StatusImported, failure.Reason{}},
			},
			wantImports: 1,
		},
		{
			name: "a split archive with a part missing imports nothing",
			setup: func(t *testing.T, dir string, _ *critest.Server) {
				testArchive(t, dir, "ab.tar", archivetest.OCILayout, []string{a}, []string{b})
				parts := split(t, dir, "ab.tar", 3)
				if err := os.Remove(parts[1]); err != nil {
					t.Fatal(err)
				}
			},
			want: map[string]outcome{"ab.tar": {preload.StatusFailed, failure.Archive}},
		},
		{
			name: "an image without the node's platform fails by name, the others import",
			setup: func(t *testing.T, dir string, _ *critest.Server) {
				var imgs []archivetest.Image
				for i, p := range []string{"linux/amd64", "linux/arm64"} {
					l, err := archivetest.Layer(uint64(700+i), 1024, true)
					if err != nil {
						t.Fatal(err)
					}
					img, err := archivetest.NewImage(p, l)
					if err != nil {
						t.Fatal(err)
					}
					imgs = append(imgs, archivetest.Image{Names: []string{[]string{a, x}[i]}, Image: img})
				}
				var buf bytes.Buffer
				if err := archivetest.Write(&buf, archivetest.OCILayout, imgs); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "two.tar"), buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			images: images(a, x),
			want: map[string]outcome{
				a: {preload.StatusImported, failure.Reason{}},
				x: {preload.StatusFailed, failure.Archive},
			},
			wantImports: 1,
		},
		{
			name:   "archive missing",
			images: []config.Image{{Ref: x, Name: x, Archive: "missing.tar"}},
			want:   map[string]outcome{x: {preload.StatusFailed, failure.NotFound}},
		},
		{
			name: "not containerd",
			setup: func(t *testing.T, dir string, _ *critest.Server) {
				testArchive(t, dir, "x.tar", archivetest.OCILayout, []string{x})
			},
			images: []config.Image{{Ref: x, Name: x, Archive: "x.tar"}},
			noCtrd: true,
			want:   map[string]outcome{x: {preload.StatusFailed, failure.Unsupported}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			dir := t.TempDir()
			if tt.setup != nil {
				tt.setup(t, dir, s)
			}
			cfg := testConfig()
			cfg.ArchiveDir = dir
			ctrd := critest.NewContainerd(s)
			e := &preload.Engine{Store: noderuntime.WithContainerd(connect(t, s), ctrd), MaxAttempts: 1}
			if tt.noCtrd {
				e.Store = noderuntime.CRIOnly(connect(t, s))
			}
			results, err := e.Run(context.Background(), cfg, tt.images)
			if err != nil {
				t.Fatal(err)
			}
			got := outcomes(results)
			// A file that fails before it is read is reported by its path.
			for name, o := range got {
				if rel, ok := strings.CutPrefix(name, dir+"/"); ok {
					delete(got, name)
					got[rel] = o
				}
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("results %+v, want %+v", got, tt.want)
			}
			for _, r := range results {
				if r.Status == preload.StatusFailed && !strings.Contains(r.Error, dir) {
					t.Errorf("%s: error %q does not name the archive", r.Image, r.Error)
				}
			}
			if ctrd.Imports() != tt.wantImports {
				t.Errorf("%d imports, want %d", ctrd.Imports(), tt.wantImports)
			}
			if n := s.Calls("PullImage"); n != 0 {
				t.Errorf("%d pulls, want none: archives come first", n)
			}
		})
	}
}

func TestMirrorRef(t *testing.T) {
	tests := []struct{ name, mirror, want string }{
		{"registry.k8s.io/coredns/coredns:v1.12.0", "artifacts.corp/k8s", "artifacts.corp/k8s/coredns/coredns:v1.12.0"},
		{"registry.k8s.io/pause:3.10", "mirror.local:5000", "mirror.local:5000/pause:3.10"},
		{"docker.io/library/nginx:1.27", "harbor.corp/dockerhub", "harbor.corp/dockerhub/library/nginx:1.27"},
		{"registry.k8s.io/pause@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a", "m.corp",
			"m.corp/pause@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a"},
		{"registry.k8s.io/pause:3.10@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a", "m.corp",
			"m.corp/pause:3.10@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a"},
	}
	for _, tt := range tests {
		got, err := config.MirrorRef(tt.name, tt.mirror)
		if err != nil || got != tt.want {
			t.Errorf("MirrorRef(%s, %s) = %s, %v; want %s", tt.name, tt.mirror, got, err, tt.want)
		}
	}
}

func TestRunMirror(t *testing.T) {
	const canonical, mirror = "registry.k8s.io/pause:3.10", "mirror.corp/k8s"
	user := &runtimeapi.AuthConfig{Username: "u", Password: "p"}
	img := config.Image{Ref: canonical, Name: canonical, Mirror: mirror}

	t.Run("pulled from the mirror with its credentials, recorded under the canonical name", func(t *testing.T) {
		s := critest.Start(t)
		var pulled []string
		var mu sync.Mutex
		s.Pull = func(_ context.Context, ref string, auth *runtimeapi.AuthConfig) error {
			mu.Lock()
			defer mu.Unlock()
			pulled = append(pulled, ref)
			if auth == nil || auth.Username != "u" {
				return critest.Errorf("401 Unauthorized")
			}
			return nil
		}
		ctrd := critest.NewContainerd(s)
		var asked []string
		e := &preload.Engine{Store: noderuntime.WithContainerd(connect(t, s), ctrd), MaxAttempts: 1,
			Auth: func(img config.Image) []*runtimeapi.AuthConfig {
				asked = append(asked, img.Name)
				return []*runtimeapi.AuthConfig{user}
			}}
		results, err := e.Run(context.Background(), testConfig(), []config.Image{img})
		if err != nil {
			t.Fatal(err)
		}
		r := results[0]
		if r.Image != canonical || r.Status != preload.StatusPulled || r.Source != mirror+"/pause:3.10" {
			t.Errorf("result %+v, want %s pulled from %s/pause:3.10", r, canonical, mirror)
		}
		if !slices.Equal(pulled, []string{mirror + "/pause:3.10"}) || !slices.Equal(asked, []string{mirror + "/pause:3.10"}) {
			t.Errorf("pulled %v with credentials for %v, want the mirror reference for both", pulled, asked)
		}
		from, err := connect(t, s).ImageStatus(context.Background(), mirror+"/pause:3.10")
		if err != nil || from == nil {
			t.Fatalf("ImageStatus of the mirror reference: %v, %v", from, err)
		}
		if !slices.Contains(from.RepoTags, canonical) {
			t.Errorf("the mirror's image is named %v, want %s among its names", from.RepoTags, canonical)
		}
	})

	t.Run("not containerd", func(t *testing.T) {
		s := critest.Start(t)
		e := &preload.Engine{Store: noderuntime.CRIOnly(connect(t, s)), MaxAttempts: 1}
		results, err := e.Run(context.Background(), testConfig(), []config.Image{img})
		if err != nil {
			t.Fatal(err)
		}
		if r := results[0]; r.Status != preload.StatusFailed || r.Reason != failure.Unsupported || !strings.Contains(r.Error, "registries.conf") {
			t.Errorf("result %+v, want failed with a pointer to the runtime's mirror config", r)
		}
		if n := s.Calls("PullImage"); n != 0 {
			t.Errorf("%d pulls, want none", n)
		}
	})
}

func TestRunPullViaContainerd(t *testing.T) {
	const name = "registry.example/team/app:1"
	cfg := testConfig()
	cfg.PullVia = config.PullViaContainerd

	t.Run("pulled by the containerd client, not the CRI", func(t *testing.T) {
		s := critest.Start(t)
		ctrd := critest.NewContainerd(s)
		e := &preload.Engine{Store: noderuntime.WithContainerd(connect(t, s), ctrd), MaxAttempts: 1}
		results, err := e.Run(context.Background(), cfg, images(name))
		if err != nil {
			t.Fatal(err)
		}
		if r := results[0]; r.Status != preload.StatusPulled {
			t.Errorf("result %+v, want pulled", r)
		}
		if !slices.Equal(ctrd.Pulls(), []string{name}) || s.Calls("PullImage") != 0 {
			t.Errorf("containerd pulls %v, CRI pulls %d; want containerd only", ctrd.Pulls(), s.Calls("PullImage"))
		}
	})

	t.Run("not containerd: a reason, no retries", func(t *testing.T) {
		s := critest.Start(t)
		e := &preload.Engine{Store: noderuntime.CRIOnly(connect(t, s)), MaxAttempts: 5}
		results, err := e.Run(context.Background(), cfg, images(name))
		if err != nil {
			t.Fatal(err)
		}
		r := results[0]
		if r.Status != preload.StatusFailed || r.Reason != failure.Unsupported || r.Attempts != 1 || !strings.Contains(r.Error, "pullVia: cri") {
			t.Errorf("result %+v, want one failed attempt, unsupported runtime, pointing to pullVia: cri", r)
		}
		if n := s.Calls("PullImage"); n != 0 {
			t.Errorf("%d CRI pulls, want none", n)
		}
	})
}
