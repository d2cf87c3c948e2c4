package integration

// Fault scenarios around archives and disk space: a full disk under pulls
// and imports, containerd killed in the middle of an import and SIGTERM
// during one.

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

const (
	// diskFullRoot is the tmpfs containerd's root gets in the disk-full
	// scenario; diskFullBig does not fit in it, 1 MiB images do.
	diskFullRoot = 40 << 20
	diskFullBig  = 48 << 20
)

// ourLeases lists the leases the preloader took in the runtime's
// namespace (by their label; the CRI's own pull leases look the same
// otherwise).
func (f *faultEnv) ourLeases(t *testing.T) []leases.Lease {
	t.Helper()
	c, err := client.New(f.ctrd.Address, client.WithDefaultNamespace(containerd.Namespace))
	if err != nil {
		t.Fatalf("containerd client: %v", err)
	}
	defer c.Close()
	ls, err := c.LeasesService().List(context.Background(), fmt.Sprintf("labels.%q", containerd.LabelLease))
	if err != nil {
		t.Fatalf("list leases: %v", err)
	}
	return ls
}

// writingBlob reports whether the preloader is writing a blob into the
// content store: an ingest of its (ref "preloader-<digest>") has data.
func (f *faultEnv) writingBlob(t *testing.T) bool {
	t.Helper()
	c, err := client.New(f.ctrd.Address, client.WithDefaultNamespace(containerd.Namespace))
	if err != nil {
		t.Fatalf("containerd client: %v", err)
	}
	defer c.Close()
	sts, err := c.ContentStore().ListStatuses(context.Background())
	if err != nil {
		t.Fatalf("list ingests: %v", err)
	}
	for _, st := range sts {
		if strings.HasPrefix(st.Ref, "preloader-") && st.Offset > 0 {
			return true
		}
	}
	return false
}

// listed returns which of refs CRI ListImages shows.
func (f *faultEnv) listed(t *testing.T, refs ...string) []string {
	t.Helper()
	ctx := context.Background()
	c, err := cri.Connect(ctx, f.ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	imgs, err := c.ListImages(ctx)
	if err != nil {
		t.Fatalf("CRI ListImages: %v", err)
	}
	var out []string
	for _, img := range imgs {
		for _, ref := range refs {
			if slices.Contains(img.RepoTags, ref) || slices.Contains(img.RepoDigests, ref) {
				out = append(out, ref)
			}
		}
	}
	return out
}

// archive writes one archive of n images of a layer of size bytes each,
// named <repo>/<i>:1, and returns their names and image IDs.
func (f *faultEnv) archive(t *testing.T, dir, file, repo string, n, size int) (names []string, ids map[string]string) {
	t.Helper()
	ids = make(map[string]string)
	var imgs []archivetest.Image
	for i := range n {
		f.seq++
		img, err := archivetest.NewImage(nodePlatform, testLayer(t, uint64(f.seq)<<8, size))
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("registry.example/%s/%d:1", repo, i)
		names = append(names, name)
		ids[name] = imageID(t, img)
		imgs = append(imgs, archivetest.Image{Names: []string{name}, Image: img})
	}
	writeArchive(t, filepath.Join(dir, file), archivetest.DockerSave, archivetest.Plain, imgs...)
	return names, ids
}

// withContainerd points the scenario's runs and checks at c until the
// returned function is called.
func (f *faultEnv) withContainerd(c *harness.Containerd) (restore func()) {
	old, oldEnv := f.ctrd, f.env
	f.ctrd = c
	f.env = []string{cri.EndpointEnv + "=" + c.Endpoint, noderuntime.ContainerdConfigEnv + "=" + c.ConfigFile}
	return func() { f.ctrd, f.env = old, oldEnv }
}

// diskFull: containerd's root on a 40 MiB tmpfs of its own, and a config
// of two 1 MiB images and one of 48 MiB, pulled one at a time (in any
// order: the engine starts them together). The big one fails with "no
// space" after one attempt, the small ones are there all the same, even
// when the big one went first (what its attempt wrote is collected before
// the next image starts), and the runtime has no record of the big one. The same with each image in an archive of its
// own, imported in the order of the config.
func (f *faultEnv) diskFull(t *testing.T) {
	defer f.withContainerd(harness.StartContainerd(t, harness.ContainerdOptions{Flavor: f.flavor, RootSize: diskFullRoot}))()

	for _, via := range []string{"cri", "containerd"} {
		t.Run("pull via "+via, func(t *testing.T) {
			_, a := f.image(1<<20, "")
			_, big := f.image(diskFullBig, "")
			_, b := f.image(1<<20, "")
			// No disk budget: it would hold the big one back before the
			// disk fills (TestDiskBudget); this is the runtime's ENOSPC.
			yaml := fmt.Sprintf("sandboxImage: none\ndiskBudget: none\npullVia: %s\nconcurrency: 1\nretry: {initialDelay: 200ms, maxDelay: 1s}\nimages:\n  - image: %s\n  - image: %s\n  - image: %s\n", via, a, b, big)
			start := time.Now()
			r := f.wait(f.start(f.configYAML(yaml, nil)...), 60*time.Second)
			what := "pull"
			if via != "cri" {
				what = "pullVia containerd"
			}
			f.checkDiskFull(t, r, time.Since(start), what, "pulled", big, a, b)
			if n := len(f.ourLeases(t)); n != 0 {
				t.Errorf("%d leases of the preloader left after the run", n)
			}
		})
	}
	t.Run("import", func(t *testing.T) {
		dir := t.TempDir()
		repo := "diskfull-" + strings.ReplaceAll(string(f.flavor), ".", "")
		a, _ := f.archive(t, dir, "a.tar", repo+"/a", 1, 1<<20)
		big, _ := f.archive(t, dir, "big.tar", repo+"/big", 1, diskFullBig)
		b, _ := f.archive(t, dir, "b.tar", repo+"/b", 1, 1<<20)
		start := time.Now()
		r := f.wait(f.start(f.configYAML(archiveConfig(dir, false, a[0]+" archive=a.tar", big[0]+" archive=big.tar", b[0]+" archive=b.tar"), nil)...), 60*time.Second)
		f.checkDiskFull(t, r, time.Since(start), "archive import", "imported", big[0], a[0], b[0])
		if n := len(f.ourLeases(t)); n != 0 {
			t.Errorf("%d leases of the preloader left after the run", n)
		}
	})
}

func (f *faultEnv) checkDiskFull(t *testing.T, r run, took time.Duration, what, want, big string, small ...string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Log(r)
		}
	}()
	if r.code != 1 {
		t.Errorf("exit %d, want 1 (an image is missing)", r.code)
	}
	lost := f.verify(t, r, append([]string{big}, small...)...)
	out := parseOnce(t, r)
	ok := 0
	for _, ref := range small {
		if st, reason := out.status(ref); st != want {
			t.Errorf("%s: %s %s, want %s: the full disk is the big image's trouble only", ref, st, reason, want)
		} else {
			ok++
		}
	}
	var bigErr string
	var attempts int
	for _, img := range out.Images {
		if img.Image == big {
			bigErr, attempts = img.Error, img.Attempts
		}
	}
	if st, reason := out.status(big); st != "failed" || reason != "no space" || !strings.Contains(bigErr, "no space left on device") {
		t.Errorf("%s: %s, reason %q, error %q; want failed, \"no space\", with the runtime's ENOSPC", big, st, reason, bigErr)
	}
	if attempts > 1 {
		t.Errorf("%s: %d attempts; a full disk is not retried within a run", big, attempts)
	}
	half := f.listed(t, big)
	if len(half) > 0 {
		t.Errorf("the runtime lists %s after it failed for want of space", big)
	}
	outcome := fmt.Sprintf("exit %d in %s: %d of %d %s, the %d MiB one %q, %d listed", r.code,
		took.Round(100*time.Millisecond), ok, len(small)+1, want, diskFullBig>>20, out.reason(big), len(half))
	f.report(faultRow{scenario: fmt.Sprintf("%s: disk full (%d MiB root), %s", f.flavor, diskFullRoot>>20, what), outcome: outcome, lost: lost + len(half), leaked: f.leaked(r)})
}

// bigArchive is the archive the import scenarios interrupt: four images of
// 16 MiB, bigArchiveLayers in all, which every import of it sends to
// containerd.
func (f *faultEnv) bigArchive(t *testing.T, tag string) (yaml string, names []string, ids map[string]string) {
	t.Helper()
	dir := t.TempDir()
	names, ids = f.archive(t, dir, "app.tar", tag+"-"+strings.ReplaceAll(string(f.flavor), ".", ""), 4, bigArchiveLayers/4)
	var entries []string
	for _, n := range names {
		entries = append(entries, n+" archive=app.tar")
	}
	return archiveConfig(dir, false, entries...), names, ids
}

const (
	bigArchiveLayers = 64 << 20
	// importHeldAt is where the import scenarios stop what the preloader
	// sends to containerd: well into the layers, far from their end.
	importHeldAt = 8 << 20
)

// heldImport starts `once` on yaml with its containerd client behind a
// socket proxy that passes importHeldAt bytes, and returns once the
// proxy holds the rest and containerd has part of a blob: the import is
// provably in flight and cannot finish until the proxy lets more through.
func (f *faultEnv) heldImport(t *testing.T, yaml string) (*liveRun, *harness.SocketProxy) {
	t.Helper()
	sp := harness.StartSocketProxy(t, f.ctrd.Path(f.ctrd.Address))
	sp.Limit(importHeldAt)
	l := f.start(append(f.configYAML(yaml, nil), "--containerd-address", sp.Path)...)
	f.until(l, 30*time.Second, "an import held with a blob half-written", func() bool { return sp.Holding() && f.writingBlob(t) })
	return l, sp
}

// containerdKilledImport: SIGKILL containerd while the preloader writes a
// blob of an archive, start it again; the import is retried
// once containerd answers, and every image is imported in full.
func (f *faultEnv) containerdKilledImport(t *testing.T) {
	yaml, names, ids := f.bigArchive(t, "killed")
	before := len(f.ourLeases(t))
	// A blob half-written: containerd's client waits for a restarted
	// daemon between calls, so only a call in flight sees it die.
	l, sp := f.heldImport(t, yaml)
	f.ctrd.Kill()
	// The held connection died with containerd; the retry's go through.
	sp.Limit(-1)
	f.ctrd.Start()
	healed := time.Now()
	r := f.wait(l, 60*time.Second)
	exited := time.Now()
	defer func() {
		if t.Failed() {
			t.Log(r)
		}
	}()
	if r.code != 0 {
		t.Errorf("exit %d, want 0 once containerd is back", r.code)
	}
	lost := f.verify(t, r, names...)
	out := parseOnce(t, r)
	c, err := cri.Connect(context.Background(), f.ctrd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, n := range names {
		if st, reason := out.status(n); st != "imported" {
			t.Errorf("%s: %s %s, want imported", n, st, reason)
		}
		// The whole image, not a record made early.
		if img, err := c.ImageStatus(context.Background(), n); err != nil || img == nil || img.Id != ids[n] {
			t.Errorf("CRI ImageStatus(%s) = %v, %v; want image %s", n, img, err, ids[n])
		}
	}
	retried := strings.Count(r.stderr, "import failed, retrying")
	if retried == 0 {
		t.Errorf("no import retry logged: containerd was not killed mid-import")
	}
	if !strings.Contains(r.stderr, `reason="runtime unavailable"`) {
		t.Errorf("the retries do not say the runtime was unavailable:\n%s", r.stderr)
	}
	// The killed attempt's lease could not be deleted with containerd
	// down; the retry's deletes it, rather than let it hold what that
	// attempt wrote for the 24 h of its expiry.
	left := len(f.ourLeases(t)) - before
	if left != 0 {
		t.Errorf("%d leases of the preloader left after the run", left)
	}
	f.report(faultRow{scenario: string(f.flavor) + ": containerd killed mid-import", outcome: fmt.Sprintf("exit %d, %d of %d imported, %d retries, %d leases left", r.code, len(names), len(names), retried, left), recover: exited.Sub(healed), lost: lost, leaked: f.leaked(r)})
}

// sigtermImport: SIGTERM while a blob of an archive is being written; the
// process exits within a few seconds, its lease is gone, and the runtime
// lists none of the archive's images unless the run reported them
// imported.
func (f *faultEnv) sigtermImport(t *testing.T) {
	yaml, names, _ := f.bigArchive(t, "sigterm")
	before := len(f.ourLeases(t))
	l, sp := f.heldImport(t, yaml)
	sent := time.Now()
	if err := l.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Room for the cleanup after the signal (the lease's delete queues
	// behind the held bytes), not for the import: with less than its
	// layers through, it cannot end before the signal has stopped it.
	sp.Limit(bigArchiveLayers / 2)
	r := f.wait(l, 30*time.Second)
	took := time.Since(sent)
	defer func() {
		if t.Failed() {
			t.Log(r)
		}
	}()
	if took > 5*time.Second {
		t.Errorf("exited %s after SIGTERM, want within 5s", took)
	}
	if r.code == 0 {
		t.Errorf("exit 0 after SIGTERM with the import unfinished")
	}
	lost := 0
	reported := map[string]bool{}
	if strings.HasPrefix(strings.TrimSpace(r.stdout), "{") {
		lost = f.verify(t, r)
		for _, img := range parseOnce(t, r).Images {
			reported[img.Image] = img.Status == "imported"
		}
	}
	half := 0
	for _, n := range f.listed(t, names...) {
		if !reported[n] {
			half++
			t.Errorf("%s is listed after SIGTERM cut its import, and the run did not report it imported", n)
		}
	}
	left := len(f.ourLeases(t)) - before
	if left != 0 {
		t.Errorf("%d leases of the preloader left after SIGTERM", left)
	}
	f.report(faultRow{scenario: string(f.flavor) + ": SIGTERM during an import", outcome: fmt.Sprintf("exit %d in %s, %d listed, %d leases left", r.code, took.Round(10*time.Millisecond), half, left), lost: lost + half, leaked: f.leaked(r)})
}

func (o onceResult) reason(image string) string {
	_, reason := o.status(image)
	return reason
}
