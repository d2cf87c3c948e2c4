package integration

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// stallCutRE is the log line of an attempt cut because a download stalled.
var stallCutRE = regexp.MustCompile(`pull failed, retrying.*reason="?stalled`)

// TestFaultStall: a registry that stops sending in the middle of a blob,
// on both pull paths. With stallTimeout 2s and pullTimeout 2m, each attempt
// is cut about 2s after the body stops, retried as transient, and the run
// ends present once the registry sends again. The stall is the blob's:
// with the blob fetched in ranges, a range held mid-blob cuts the pull the
// same way.
func TestFaultStall(t *testing.T) {
	for _, flavor := range flavors {
		t.Run(string(flavor), func(t *testing.T) { testFaultStall(t, flavor) })
	}
}

func testFaultStall(t *testing.T, flavor harness.Flavor) {
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: flavor})
	f := &faultEnv{
		t: t, flavor: flavor, reg: reg, ctrd: ctrd, dir: t.TempDir(),
		report: func(r faultRow) { t.Logf("row: %s | %s | %s", r.scenario, r.outcome, r.recover); reportFault(r) },
		env:    []string{cri.EndpointEnv + "=" + ctrd.Endpoint, noderuntime.ContainerdConfigEnv + "=" + ctrd.ConfigFile},
	}
	t.Cleanup(func() { assertNoSecret(t, f.printed...) })
	const stallTimeout = 2 * time.Second
	for _, tt := range []struct {
		via    string
		ranged bool
		size   int
	}{
		{via: "containerd", size: 8 << 20},
		{via: "cri", size: 8 << 20},
		// Bigger than one range of the client's ranged fetch: the range
		// held starts past the blob's first byte. Where the client fetches
		// a blob in one request, nothing is held and this case fails.
		{via: "containerd", ranged: true, size: 40 << 20},
	} {
		name := "pullVia " + tt.via
		if tt.ranged {
			name += ", blob in ranges"
		}
		f.scenario = "registry stops mid-blob, " + name
		t.Run(name, func(t *testing.T) {
			f.t = t
			var img harness.TestImage
			hold := harness.NewHold(1<<20, func(r *http.Request) bool {
				if !isLayerGet(r, img) {
					return false
				}
				return !tt.ranged || rangeStart(r) > 0
			})
			t.Cleanup(hold.Release)
			p := harness.StartProxy(t, f.reg.Host, harness.ProxyOptions{Hold: hold})
			img, ref := f.image(tt.size, p.Host)
			// The budget is not what is tested, and the machine's disk is shared.
			extra := fmt.Sprintf("pullTimeout: 2m\nstallTimeout: %s\ndiskBudget: none\n", stallTimeout)
			args := f.configYAML(pullViaConfig(tt.via, extra, ref), []string{p.Host})

			// Run 1: the registry never sends the rest; the run's deadline
			// ends it, and the image fails as stalled after its attempts.
			l := f.start(append(slices.Clone(args[:len(args)-2]), "--timeout", "12s")...)
			f.until(l, 60*time.Second, "a layer download held midway", func() bool { return hold.Held() > 0 })
			heldAt := time.Now()
			f.until(l, 60*time.Second, "an attempt cut as stalled", func() bool { return stallCutRE.MatchString(l.stderr.String()) })
			cut := time.Since(heldAt)
			r := f.wait(l, 60*time.Second)
			out := parseOnce(t, r)
			st, reason := out.status(ref)
			if r.code != 1 || st != "failed" || reason != "stalled" || len(out.Images) != 1 || out.Images[0].Attempts < 2 {
				t.Fatalf("want exit 1, %s failed as stalled after 2 attempts or more:\n%s", ref, r)
			}
			if e := out.Images[0].Error; !strings.Contains(e, "download stalled") || !strings.Contains(e, "sha256:") {
				t.Errorf("error %q does not say which blob stalled", e)
			}
			// The cut waits the stall timeout, and no longer than a
			// generous margin on a busy machine: far from pullTimeout. The
			// hold's time is taken in the proxy once its last write
			// returned, which the preloader may have read a moment
			// before: hence the 100 ms below the timeout.
			if cut < stallTimeout-100*time.Millisecond || cut > 15*time.Second {
				t.Errorf("first attempt cut %s after the body stopped, want %s to 15s (pullTimeout 2m)", cut.Round(10*time.Millisecond), stallTimeout)
			}
			attempts1 := out.Images[0].Attempts

			// Run 2: held again, then the registry sends again; the retry
			// completes the image.
			before := hold.Held()
			l = f.start(args...)
			f.until(l, 60*time.Second, "an attempt cut as stalled", func() bool {
				return hold.Held() > before && stallCutRE.MatchString(l.stderr.String())
			})
			hold.Release()
			healed := time.Now()
			r = f.wait(l, 90*time.Second)
			exited := time.Now()
			if n := parseOnce(t, r).Images; len(n) == 1 && n[0].Attempts < 2 {
				t.Errorf("pulled in %d attempts, want the stalled one and a retry", n[0].Attempts)
			}
			f.finish(t, r, healed, exited, ref)
			assertPresent(t, f.ctrd.Endpoint, ref)
			f.report(faultRow{scenario: string(f.flavor) + ": " + f.scenario + " (never resumes)",
				outcome: fmt.Sprintf("exit 1, failed stalled after %d attempts (--timeout 12s); first cut %s after the body stopped (stallTimeout 2s, pullTimeout 2m)",
					attempts1, cut.Round(10*time.Millisecond)), leaked: f.leaked(r)})
		})
	}
}

// rangeStart is where the request's Range begins; 0 if it has none.
func rangeStart(r *http.Request) int64 {
	v, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
	if !ok {
		return 0
	}
	start, _, _ := strings.Cut(v, "-")
	n, _ := strconv.ParseInt(start, 10, 64)
	return n
}
