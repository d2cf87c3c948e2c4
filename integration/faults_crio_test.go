package integration

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// crioFlavor names CRI-O's rows in the fault table.
const crioFlavor harness.Flavor = "cri-o"

// crioFaultRegistries makes every registry on 127.0.0.1 reachable over
// plain HTTP, whatever its port: the fault proxies start after CRI-O,
// which reads registries.conf once. A prefix rewritten to itself.
const crioFaultRegistries = "[[registry]]\nprefix = \"127.0.0.1\"\nlocation = \"127.0.0.1\"\ninsecure = true\n"

// TestFaultsCRIO: the rows of the fault suite that apply to a runtime
// reached through the CRI alone, on a real CRI-O: the runtime killed
// mid-pull, the registry refusing, failing and stalling, SIGTERM. The
// preloader sees no byte of a CRI-O pull, so a stall ends at pullTimeout,
// or earlier where CRI-O's own pull_progress_timeout (off by default) is
// set.
func TestFaultsCRIO(t *testing.T) {
	t.Cleanup(func() { t.Log(faultTable()) })
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword})
	crio := harness.StartCRIO(t, harness.CRIOOptions{RegistriesDropIn: crioFaultRegistries})
	f := &faultEnv{
		t: t, flavor: crioFlavor, reg: reg, crio: crio, dir: t.TempDir(), report: reportFault,
		env: []string{cri.EndpointEnv + "=" + crio.Endpoint},
	}
	t.Cleanup(func() { assertNoSecret(t, f.printed...) })
	for _, s := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"CRI-O killed mid-pull", f.containerdKilled},
		{"registry connection refused", f.connectionRefused},
		{"registry 500/503", f.serverErrors},
		{"stalled blob body", f.stalledBody},
		{"stalled blob body, CRI-O pull_progress_timeout 2s", f.crioProgressTimeout},
		{"SIGTERM during pulls", f.sigterm},
	} {
		f.scenario = s.name
		t.Run(s.name, s.fn)
	}
}

// crioProgressTimeout: a layer's body stops after its first 64 KiB, on a
// CRI-O told to end a pull whose progress stops for 2 s; pullTimeout is a
// minute, so CRI-O's cut is the one that ends the attempt, and the
// preloader's retry, once the body flows again, pulls the image.
func (f *faultEnv) crioProgressTimeout(t *testing.T) {
	crio := harness.StartCRIO(t, harness.CRIOOptions{
		RegistriesDropIn: crioFaultRegistries,
		ConfigDropIn:     "[crio.image]\npull_progress_timeout = \"2s\"\n",
	})
	t.Cleanup(func() {
		if t.Failed() || f.t.Failed() {
			f.t.Logf("CRI-O's log:\n%s", harness.LogTail(crio.LogPath, 10))
		}
	})
	old, oldEnv := f.crio, f.env
	f.crio, f.env = crio, []string{cri.EndpointEnv + "=" + crio.Endpoint}
	defer func() { f.crio, f.env = old, oldEnv }()

	var img harness.TestImage
	hold := harness.NewHold(64<<10, func(r *http.Request) bool { return isLayerGet(r, img) })
	t.Cleanup(hold.Release)
	p := harness.StartProxy(t, f.reg.Host, harness.ProxyOptions{Hold: hold})
	img, ref := f.image(1<<20, p.Host)
	start := time.Now()
	l := f.start(f.config(time.Minute, []string{p.Host}, ref)...)
	f.until(l, 30*time.Second, "a retry after CRI-O cut the stalled pull", func() bool { return len(retries(l.stderr.String())) >= 1 })
	cut := time.Since(start)
	hold.Release()
	healed := time.Now()
	r := f.wait(l, 60*time.Second)
	f.finish(t, r, healed, time.Now(), ref)
	if strings.Contains(r.stderr, "exceeded pullTimeout") || !strings.Contains(r.stderr, `reason=stalled`) {
		t.Errorf("want CRI-O's cut retried as stalled, not pullTimeout's:\n%s", r.stderr)
	}
	t.Logf("CRI-O cut the stalled attempt %s after the run started", cut.Round(10*time.Millisecond))
}
