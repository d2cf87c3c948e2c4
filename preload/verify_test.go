package preload_test

import (
	"bytes"
	"context"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	digest "github.com/opencontainers/go-digest"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/signature"
	"github.com/kube-preloader/kube-preloader/signature/signaturetest"
)

// sign is the .sig entry a bundle carries for repo@d, signed by k.
func sign(t *testing.T, k signaturetest.Key, repo string, d v1.Hash) archivetest.Signature {
	t.Helper()
	sig := k.SignImage(t, repo, digestOf(d))
	return archivetest.Signature{Name: repo + ":" + signature.Tag(digestOf(d), "sig"), Payload: sig.Payload, Base64: sig.Base64}
}

func digestOf(h v1.Hash) digest.Digest { return digest.Digest(h.String()) }

func testImage(t *testing.T, seed uint64) v1.Image {
	t.Helper()
	l, err := archivetest.Layer(seed, 1024, true)
	if err != nil {
		t.Fatal(err)
	}
	img, err := archivetest.NewImage("linux/amd64", l)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestRunVerifyArchives(t *testing.T) {
	const a, b = "registry.example/team/a:1", "registry.example/team/b:1"
	team, other := signaturetest.NewKey(t), signaturetest.NewKey(t)
	imgA, imgB := testImage(t, 1), testImage(t, 2)
	da, _ := imgA.Digest()
	db, _ := imgB.Digest()
	both := []archivetest.Image{{Names: []string{a}, Image: imgA}, {Names: []string{b}, Image: imgB}}

	tests := []struct {
		name    string
		sigs    []archivetest.Signature
		keys    []string
		verify  bool
		want    map[string]outcome
		says    map[string]string // what each failure's error says
		imports int
	}{
		{
			name: "both signed by the key", verify: true, keys: []string{team.Public},
			sigs:    []archivetest.Signature{sign(t, team, "registry.example/team/a", da), sign(t, team, "registry.example/team/b", db)},
			want:    map[string]outcome{a: {preload.StatusImported, failure.Reason{}}, b: {preload.StatusImported, failure.Reason{}}},
			imports: 1,
		},
		{
			name: "one unsigned: the signed one imports alone", verify: true, keys: []string{team.Public},
			sigs:    []archivetest.Signature{sign(t, team, "registry.example/team/a", da)},
			want:    map[string]outcome{a: {preload.StatusImported, failure.Reason{}}, b: {preload.StatusFailed, failure.Signature}},
			says:    map[string]string{b: "unsigned"},
			imports: 1,
		},
		{
			name: "signed by another key", verify: true, keys: []string{team.Public},
			sigs: []archivetest.Signature{sign(t, other, "registry.example/team/a", da), sign(t, other, "registry.example/team/b", db)},
			want: map[string]outcome{a: {preload.StatusFailed, failure.Signature}, b: {preload.StatusFailed, failure.Signature}},
			says: map[string]string{a: "not signed by any of the keys", b: "not signed by any of the keys"},
		},
		{
			name: "either of two keys", verify: true, keys: []string{other.Public, team.Public},
			sigs:    []archivetest.Signature{sign(t, team, "registry.example/team/a", da), sign(t, other, "registry.example/team/b", db)},
			want:    map[string]outcome{a: {preload.StatusImported, failure.Reason{}}, b: {preload.StatusImported, failure.Reason{}}},
			imports: 1,
		},
		{
			name: "b's entry carries a's signature", verify: true, keys: []string{team.Public},
			sigs: []archivetest.Signature{sign(t, team, "registry.example/team/a", da), func() archivetest.Signature {
				s := sign(t, team, "registry.example/team/a", da)
				s.Name = "registry.example/team/b:" + signature.Tag(digestOf(db), "sig")
				return s
			}()},
			want:    map[string]outcome{a: {preload.StatusImported, failure.Reason{}}, b: {preload.StatusFailed, failure.Signature}},
			says:    map[string]string{b: "signed for another digest"},
			imports: 1,
		},
		{
			name: "a key file that cannot be read", verify: true, keys: []string{"/nonexistent/keys/team.Public"},
			sigs: []archivetest.Signature{sign(t, team, "registry.example/team/a", da)},
			want: map[string]outcome{a: {preload.StatusFailed, failure.Signature}, b: {preload.StatusFailed, failure.Signature}},
			says: map[string]string{a: "/nonexistent/keys/team.Public", b: "/nonexistent/keys/team.Public"},
		},
		{
			name: "without verify, signatures are carried, not imported", sigs: []archivetest.Signature{sign(t, team, "registry.example/team/a", da)},
			want:    map[string]outcome{a: {preload.StatusImported, failure.Reason{}}, b: {preload.StatusImported, failure.Reason{}}},
			imports: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := critest.Start(t)
			dir := t.TempDir()
			var buf bytes.Buffer
			if err := archivetest.WriteSigned(&buf, both, tt.sigs); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "bundle.tar"), buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := testConfig()
			cfg.ArchiveDir = dir
			if tt.verify {
				cfg.Verify = config.Verify{Keys: tt.keys}
			}
			ctrd := critest.NewContainerd(s)
			e := &preload.Engine{Store: noderuntime.WithContainerd(connect(t, s), ctrd), MaxAttempts: 1}
			results, err := e.Run(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := outcomes(results); !maps.Equal(got, tt.want) {
				t.Errorf("results %+v, want %+v", got, tt.want)
			}
			for _, r := range results {
				if want, ok := tt.says[r.Image]; ok && (!strings.Contains(r.Error, want) || !strings.Contains(r.Error, "bundle.tar")) {
					t.Errorf("%s: error %q, want it to name the archive and say %q", r.Image, r.Error, want)
				}
				st, err := connect(t, s).ImageStatus(context.Background(), r.Image)
				if err != nil {
					t.Fatal(err)
				}
				if r.Status == preload.StatusFailed && st != nil {
					t.Errorf("%s failed, yet the runtime has it: %+v", r.Image, st)
				}
			}
			if ctrd.Imports() != tt.imports {
				t.Errorf("%d imports, want %d", ctrd.Imports(), tt.imports)
			}
		})
	}
}

func TestRunVerifyPulls(t *testing.T) {
	const name = "registry.example/team/app:1"
	team := signaturetest.NewKey(t)
	cfg := testConfig()
	cfg.Verify = config.Verify{Keys: []string{team.Public}}

	t.Run("an unsigned image is not pulled", func(t *testing.T) {
		s := critest.Start(t)
		e := &preload.Engine{Store: noderuntime.WithContainerd(connect(t, s), critest.NewContainerd(s)), MaxAttempts: 1}
		results, err := e.Run(context.Background(), cfg, images(name))
		if err != nil {
			t.Fatal(err)
		}
		if r := results[0]; r.Status != preload.StatusFailed || r.Reason != failure.Signature || !strings.Contains(r.Error, "unsigned") {
			t.Errorf("result %+v, want failed for its signature, unsigned", r)
		}
		if n := s.Calls("PullImage"); n != 0 {
			t.Errorf("%d pulls, want none", n)
		}
	})

	t.Run("CRI-O checks signatures itself", func(t *testing.T) {
		s := critest.Start(t)
		e := &preload.Engine{Store: noderuntime.CRIOnly(connect(t, s)), MaxAttempts: 1}
		results, err := e.Run(context.Background(), cfg, images(name))
		if err != nil {
			t.Fatal(err)
		}
		if r := results[0]; r.Status != preload.StatusFailed || r.Reason != failure.Unsupported || !strings.Contains(r.Error, "policy.json") || !strings.Contains(r.Error, "sigstoreSigned") {
			t.Errorf("result %+v, want unsupported, pointing at policy.json's sigstoreSigned", r)
		}
		if n := s.Calls("PullImage"); n != 0 {
			t.Errorf("%d pulls, want none", n)
		}
	})
}
