package credprovider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/failure"
)

// testPlugin is testdata/plugin, built static as plugins must be.
var testPlugin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "credprovider-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testPlugin = filepath.Join(dir, "plugin")
	cmd := exec.Command("go", "build", "-o", testPlugin, "./testdata/plugin")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build test plugin: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const secret = "s3cr3t-T0ken-value"

// setup makes a bin dir holding the test plugin under each provider's name
// and a runs dir the plugin records its runs in.
func setup(t *testing.T, providers ...Provider) (*Plugins, string) {
	t.Helper()
	bin, runs := t.TempDir(), t.TempDir()
	for i := range providers {
		p := &providers[i]
		if p.APIVersion == "" {
			p.APIVersion = apiV1
		}
		p.Env = append([]EnvVar{{"PLUGIN_RUNS", runs}, {"PLUGIN_USER", "AWS"}, {"PLUGIN_PASS", secret}}, p.Env...)
		if err := os.Symlink(testPlugin, filepath.Join(bin, p.Name)); err != nil {
			t.Fatal(err)
		}
	}
	return New(&Config{Providers: providers}, bin, Options{}), runs
}

func runs(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		match, image string
		want         bool
	}{
		{"*.dkr.ecr.*.amazonaws.com", "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1.4", true},
		{"*.dkr.ecr.*.amazonaws.com", "123456789012.dkr.ecr.us-east-1.amazonaws.com.cn/team/app", false}, // one label more
		{"*.dkr.ecr.*.amazonaws.com", "dkr.ecr.us-east-1.amazonaws.com/app", false},
		{"reg.io:5000", "reg.io/app", false}, // ports must be equal
		{"reg.io:5000", "reg.io:5000/app@sha256:" + strings.Repeat("a", 64), true},
		{"reg.io", "reg.io:5000/app", false},
		{"reg.io/team", "reg.io/team/app", true},
		{"reg.io/team", "reg.io/teamster/app", true}, // a string prefix, as the kubelet's
		{"reg.io/team", "reg.io/other/app", false},
		{"docker.io", "nginx", true}, // images are normalized: docker.io/library/nginx
		{"*.io", "reg.io/x", true},
		{"*.io", "a.reg.io/x", false},
		{"*-registry.example.com", "eu-registry.example.com/app", true},
	} {
		t.Run(tc.match+" "+tc.image, func(t *testing.T) {
			ps := New(&Config{Providers: []Provider{{Name: "p", MatchImages: []string{tc.match}}}}, t.TempDir(), Options{})
			if got := ps.Matches(tc.image); got != tc.want {
				t.Errorf("Matches = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCacheKeyType(t *testing.T) {
	images := []string{"a.reg.io/x:1", "a.reg.io/x:2", "a.reg.io/y", "b.reg.io/z", "b.reg.io/z"}
	for _, tc := range []struct {
		keyType, duration string
		defaultDuration   time.Duration
		wantRuns          int
	}{
		{"Image", "1h", 0, 3},    // a.reg.io/x, a.reg.io/y, b.reg.io/z: tags are not part of the image
		{"Registry", "1h", 0, 2}, // a.reg.io, b.reg.io
		{"Global", "1h", 0, 1},
		{"Registry", "", time.Hour, 2}, // the provider's defaultCacheDuration
		{"Registry", "", 0, 5},         // neither: not cached
		{"Global", "0s", time.Hour, 5}, // an explicit 0: not cached
	} {
		t.Run(fmt.Sprintf("%s %q default %s", tc.keyType, tc.duration, tc.defaultDuration), func(t *testing.T) {
			ps, dir := setup(t, Provider{
				Name: "p", MatchImages: []string{"*.reg.io"}, DefaultCacheDuration: tc.defaultDuration,
				Env: []EnvVar{{"PLUGIN_KEY_TYPE", tc.keyType}, {"PLUGIN_DURATION", tc.duration}},
			})
			for _, img := range images {
				auths, err := ps.Lookup(t.Context(), img, Identity{})
				if err != nil {
					t.Fatalf("Lookup(%s): %v", img, err)
				}
				if tc.keyType == "Global" {
					// The test plugin answers the first image's registry:
					// another registry's images get no credentials from it.
					continue
				}
				if len(auths) != 1 || auths[0].Username != "AWS" || auths[0].Password != secret {
					t.Fatalf("Lookup(%s) = %d credentials, want the plugin's", img, len(auths))
				}
			}
			if got := runs(t, dir); got != tc.wantRuns {
				t.Errorf("plugin ran %d times, want %d", got, tc.wantRuns)
			}
		})
	}
}

func TestCacheExpires(t *testing.T) {
	ps, dir := setup(t, Provider{Name: "p", MatchImages: []string{"reg.io", "*.reg.io"}, Env: []EnvVar{{"PLUGIN_DURATION", "10m"}}})
	now := time.Now()
	ps.providers[0].opts.Now = func() time.Time { return now }
	lookup := func() {
		if _, err := ps.Lookup(t.Context(), "reg.io/app", Identity{}); err != nil {
			t.Fatal(err)
		}
	}
	lookup()
	now = now.Add(9 * time.Minute)
	lookup()
	if got := runs(t, dir); got != 1 {
		t.Fatalf("within cacheDuration: %d runs, want 1", got)
	}
	now = now.Add(2 * time.Minute)
	lookup()
	if got := runs(t, dir); got != 2 {
		t.Fatalf("after cacheDuration: %d runs, want 2", got)
	}

	// An entry never looked up again goes within sweepEvery of expiring.
	if _, err := ps.Lookup(t.Context(), "other.reg.io/app", Identity{}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(sweepEvery + time.Minute)
	lookup()
	if n := len(ps.providers[0].cache); n != 1 {
		t.Errorf("%d cache entries after the sweep, want 1 (reg.io's new one)", n)
	}
}

// Many images of one registry at once, before any answer: the plugin runs
// once, not once per image.
func TestOneRunPerCacheKey(t *testing.T) {
	for _, keyType := range []string{"Registry", "Global"} {
		t.Run(keyType, func(t *testing.T) {
			ps, dir := setup(t, Provider{Name: "p", MatchImages: []string{"reg.io"},
				Env: []EnvVar{{"PLUGIN_KEY_TYPE", keyType}, {"PLUGIN_DURATION", "1h"}}})
			var wg sync.WaitGroup
			errs := make([]error, 20)
			for i := range errs {
				wg.Go(func() {
					auths, err := ps.Lookup(t.Context(), fmt.Sprintf("reg.io/team/app%d:1", i), Identity{})
					if err == nil && len(auths) != 1 {
						err = fmt.Errorf("%d credentials", len(auths))
					}
					errs[i] = err
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			if got := runs(t, dir); got != 1 {
				t.Errorf("plugin ran %d times for 20 images, want 1", got)
			}
		})
	}
}

func TestRequestAndEnv(t *testing.T) {
	// The plugin's env is the agent's plus the provider's, which wins.
	ps, _ := setup(t, Provider{Name: "p", MatchImages: []string{"reg.io"}, APIVersion: apiV1beta1,
		Env: []EnvVar{{"PLUGIN_USER", "from-provider"}}})
	ps.providers[0].opts.Environ = func() []string { return []string{"PLUGIN_USER=from-agent", "PLUGIN_KEY_TYPE=Image"} }
	auths, err := ps.Lookup(t.Context(), "reg.io/app:1@sha256:"+strings.Repeat("b", 64), Identity{})
	if err != nil {
		t.Fatal(err)
	}
	// cacheKeyType Image from the agent's env: the answer's key is the
	// image the plugin was asked for, and it must be the repository alone.
	if len(auths) != 1 || auths[0].Username != "from-provider" {
		t.Fatalf("got %d credentials (%v), want one for user from-provider", len(auths), auths)
	}
}

func TestFailures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  string
		setup func(t *testing.T, bin string) // replaces the bin dir's plugin
		want  Kind
		text  string
	}{
		{name: "missing", setup: func(t *testing.T, bin string) { os.Remove(filepath.Join(bin, "p")) }, want: Missing, text: "no plugin binary"},
		{name: "not executable", setup: func(t *testing.T, bin string) {
			os.Remove(filepath.Join(bin, "p"))
			data, _ := os.ReadFile(testPlugin)
			os.WriteFile(filepath.Join(bin, "p"), data, 0o644)
		}, want: NotExecutable, text: "not an executable file"},
		{name: "directory", setup: func(t *testing.T, bin string) {
			os.Remove(filepath.Join(bin, "p"))
			os.Mkdir(filepath.Join(bin, "p"), 0o755)
		}, want: NotExecutable, text: "not an executable file"},
		{name: "not a program", setup: func(t *testing.T, bin string) {
			os.Remove(filepath.Join(bin, "p"))
			os.WriteFile(filepath.Join(bin, "p"), []byte("\x7fELF garbage"), 0o755)
		}, want: NotExecutable, text: "cannot be run"},
		{name: "crash", mode: "crash", want: Crashed, text: "exit status 3 (34 bytes on stderr, not shown)"},
		{name: "garbage", mode: "garbage", want: BadResponse, text: "is not a JSON object"},
		{name: "wrong apiVersion", mode: "version", want: WrongVersion, text: `answered "credentialprovider.kubelet.k8s.io/v1alpha1", want credentialprovider.kubelet.k8s.io/v1`},
		{name: "wrong kind", mode: "kind", want: BadResponse, text: "kind a value of 18 bytes, not shown"},
		{name: "unknown field", mode: "unknown-field", want: BadResponse, text: `unknown or duplicate field "token"`},
		{name: "bad cacheKeyType", mode: "keytype", want: BadResponse, text: `cacheKeyType "Forever"`},
		{name: "hang", mode: "hang", want: TimedOut, text: "no answer after 300ms (32 bytes on stderr, not shown)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fifo := filepath.Join(t.TempDir(), "fifo")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			ps, _ := setup(t,
				Provider{Name: "p", MatchImages: []string{"reg.io"}, Env: []EnvVar{{"PLUGIN_MODE", tc.mode}, {"PLUGIN_FIFO", fifo}}},
				Provider{Name: "good", MatchImages: []string{"*.io"}, Env: []EnvVar{{"PLUGIN_USER", "other"}}},
			)
			if tc.setup != nil {
				tc.setup(t, filepath.Dir(ps.providers[0].bin))
			}
			ps.providers[0].opts.Timeout = 300 * time.Millisecond
			auths, err := ps.Lookup(t.Context(), "reg.io/app:1", Identity{})
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want an *Error", err)
			}
			if pe.Kind != tc.want || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("err = %q (kind %q), want kind %q saying %q", err, pe.Kind, tc.want, tc.text)
			}
			if !strings.HasPrefix(err.Error(), "credential provider p: ") {
				t.Errorf("err = %q, want it to name the provider", err)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(fmt.Sprintf("%+v %#v", err, pe), secret) {
				t.Errorf("err shows the plugin's secret: %q", err)
			}
			var known interface{ Reason() failure.Reason }
			if !errors.As(err, &known) || known.Reason().Label() != "credentials" || known.Reason().String() != pe.Error() {
				t.Errorf("reason = %v, want credentials with the error's text", known)
			}
			// The other provider that matches still answers.
			if len(auths) != 1 || auths[0].Username != "other" {
				t.Errorf("got %d credentials, want the good provider's", len(auths))
			}
		})
	}
}

// fakeTokens is an API server's ServiceAccounts: each Token call issues
// a new token, as a TokenRequest does.
type fakeTokens struct {
	mu       sync.Mutex
	accounts map[string]fakeAccount
	issued   []string
	tokenErr error
}

type fakeAccount struct {
	uid         string
	annotations map[string]string
}

const tokenPrefix = "sa-token-do-not-show-"

func (f *fakeTokens) ServiceAccount(_ context.Context, name string) (string, map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.accounts[name]
	if !ok {
		return "", nil, fmt.Errorf("serviceaccount %q not found", name)
	}
	return a.uid, a.annotations, nil
}

func (f *fakeTokens) Token(_ context.Context, name, uid, audience string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tokenErr != nil {
		return "", f.tokenErr
	}
	tok := fmt.Sprintf("%s%s-%s-%s-%d", tokenPrefix, name, uid, audience, len(f.issued))
	f.issued = append(f.issued, tok)
	return tok, nil
}

// sentRequest is what the test plugin recorded of a request.
type sentRequest struct {
	APIVersion  string            `json:"apiVersion"`
	Token       string            `json:"serviceAccountToken"`
	Annotations map[string]string `json:"serviceAccountAnnotations"`
}

func requests(t *testing.T, dir string) []sentRequest {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []sentRequest
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var r sentRequest
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatalf("request %s: %v", data, err)
		}
		out = append(out, r)
	}
	return out
}

// Providers with tokenAttributes get what the kubelet sends for a pod of
// the image's ServiceAccount, or are not run where the kubelet would not
// run them; the token shows in no error.
func TestTokenProvider(t *testing.T) {
	accounts := map[string]fakeAccount{
		"app":   {"uid-1", map[string]string{"reg.io/role": "puller", "reg.io/region": "eu", "other": "x"}},
		"plain": {"uid-2", nil},
	}
	for _, tc := range []struct {
		name      string
		require   bool
		cacheType string
		mode      string
		tokens    bool // an API server to ask (the agent); false is once
		sa        string
		tokenErr  error
		// want
		runs        int
		token       bool              // the plugin received a token
		annotations map[string]string // the plugin received
		kind        Kind              // "" is credentials from the plugin
		errHas      string
	}{
		{name: "token and annotations", require: true, tokens: true, sa: "app",
			runs: 1, token: true, annotations: map[string]string{"reg.io/role": "puller", "reg.io/region": "eu"}},
		{name: "required annotation missing: not run, no error", require: true, tokens: true, sa: "plain"},
		{name: "image without serviceAccount", require: true, tokens: true,
			kind: NoToken, errHas: "the image names no serviceAccount"},
		{name: "no serviceAccount, not required: run without a token", tokens: true, runs: 1},
		{name: "once", require: true, sa: "", kind: NoToken, errHas: "preloader once has no service account"},
		{name: "once, not required: run without a token", runs: 1},
		{name: "serviceaccount missing", require: true, tokens: true, sa: "gone",
			kind: NoToken, errHas: `serviceaccount gone: serviceaccount "gone" not found`},
		{name: "TokenRequest refused", require: true, tokens: true, sa: "app", tokenErr: errors.New("forbidden: cannot create resource serviceaccounts/token"),
			kind: NoToken, errHas: `token of serviceaccount app for audience "reg.io": forbidden`},
		{name: "token echoed, cacheType ServiceAccount", require: true, tokens: true, sa: "app", mode: "echo",
			runs: 1, token: true, annotations: map[string]string{"reg.io/role": "puller", "reg.io/region": "eu"}, kind: TokenEchoed},
		{name: "token echoed, cacheType Token", require: true, cacheType: "Token", tokens: true, sa: "app", mode: "echo",
			runs: 1, token: true, annotations: map[string]string{"reg.io/role": "puller", "reg.io/region": "eu"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cacheType := tc.cacheType
			if cacheType == "" {
				cacheType = "ServiceAccount"
			}
			attrs := &TokenAttributes{ServiceAccountTokenAudience: "reg.io", RequireServiceAccount: tc.require, CacheType: cacheType,
				OptionalServiceAccountAnnotationKeys: []string{"reg.io/region", "reg.io/absent"}}
			if tc.require {
				attrs.RequiredServiceAccountAnnotationKeys = []string{"reg.io/role"}
			}
			ps, dir := setup(t, Provider{Name: "p", MatchImages: []string{"reg.io"}, TokenAttributes: attrs,
				Env: []EnvVar{{"PLUGIN_MODE", tc.mode}}})
			fake := &fakeTokens{accounts: accounts, tokenErr: tc.tokenErr}
			id := Identity{Name: tc.sa}
			if tc.tokens {
				id.Tokens = fake
			}
			auths, err := ps.Lookup(t.Context(), "reg.io/app:1", id)
			sent := requests(t, dir)
			if len(sent) != tc.runs {
				t.Fatalf("plugin ran %d times, want %d", len(sent), tc.runs)
			}
			if err != nil && strings.Contains(err.Error(), tokenPrefix) {
				t.Errorf("error shows the token: %v", err)
			}
			if tc.runs == 1 {
				got := sent[0]
				if got.APIVersion != apiV1 {
					t.Errorf("request apiVersion %q", got.APIVersion)
				}
				if tc.token != (got.Token != "") || tc.token && (len(fake.issued) == 0 || got.Token != fake.issued[len(fake.issued)-1]) {
					t.Errorf("plugin received token %q, want one %v (issued %q)", got.Token, tc.token, fake.issued)
				}
				if fmt.Sprint(got.Annotations) != fmt.Sprint(tc.annotations) {
					t.Errorf("plugin received annotations %v, want %v", got.Annotations, tc.annotations)
				}
			}
			if tc.kind == "" {
				if err != nil {
					t.Fatalf("Lookup: %v", err)
				}
				if wantCreds := tc.runs == 1; wantCreds != (len(auths) == 1) {
					t.Errorf("got %d credentials, want them only from a run", len(auths))
				}
				return
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Kind != tc.kind || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("err = %v, want %q with %q", err, tc.kind, tc.errHas)
			}
			if pe.Reason().Label() != "credentials" {
				t.Errorf("reason %v, want credentials", pe.Reason())
			}
			if len(auths) != 0 {
				t.Errorf("got %d credentials with an error", len(auths))
			}
		})
	}
}

// The cache is keyed as the kubelet's: per ServiceAccount (name, UID,
// annotations) for cacheType ServiceAccount, per token for Token.
func TestTokenProviderCache(t *testing.T) {
	for _, tc := range []struct {
		cacheType string
		// lookups: image, serviceAccount
		lookups [][2]string
		runs    int
	}{
		// Every lookup has a new token: ServiceAccount caching ignores it.
		{"ServiceAccount", [][2]string{{"reg.io/a", "app"}, {"reg.io/b", "app"}, {"reg.io/a", "app"}}, 1},
		{"ServiceAccount", [][2]string{{"reg.io/a", "app"}, {"reg.io/a", "other"}, {"reg.io/b", "other"}}, 2},
		{"Token", [][2]string{{"reg.io/a", "app"}, {"reg.io/b", "app"}}, 2},
	} {
		t.Run(fmt.Sprint(tc.cacheType, tc.lookups), func(t *testing.T) {
			ps, dir := setup(t, Provider{Name: "p", MatchImages: []string{"reg.io"}, DefaultCacheDuration: time.Hour,
				TokenAttributes: &TokenAttributes{ServiceAccountTokenAudience: "reg.io", RequireServiceAccount: true, CacheType: tc.cacheType}})
			fake := &fakeTokens{accounts: map[string]fakeAccount{"app": {"uid-1", nil}, "other": {"uid-2", nil}}}
			for _, l := range tc.lookups {
				if auths, err := ps.Lookup(t.Context(), l[0], Identity{Tokens: fake, Name: l[1]}); err != nil || len(auths) != 1 {
					t.Fatalf("Lookup(%s, %s) = %d, %v", l[0], l[1], len(auths), err)
				}
			}
			if got := runs(t, dir); got != tc.runs {
				t.Errorf("plugin ran %d times, want %d", got, tc.runs)
			}
		})
	}
}

// A caller that gives up while the plugin runs stops waiting, and its
// error is its own, not the plugin's.
func TestLookupCanceled(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The run goes on after the caller cancels; a writer's open ends its
	// wait, so that no plugin outlives the test binary.
	t.Cleanup(func() {
		if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
	ps, dir := setup(t, Provider{Name: "p", MatchImages: []string{"reg.io"}, Env: []EnvVar{{"PLUGIN_MODE", "hang"}, {"PLUGIN_FIFO", fifo}}})
	ps.providers[0].opts.Timeout = time.Second
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() {
		_, err := ps.Lookup(ctx, "reg.io/app", Identity{})
		done <- err
	}()
	// The plugin records its run before it blocks on the FIFO.
	for runs(t, dir) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	err := <-done
	var pe *Error
	if !errors.Is(err, context.Canceled) || errors.As(err, &pe) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if _, err := ps.Lookup(ctx, "reg.io/app", Identity{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled before: err = %v, want context.Canceled", err)
	}
}
