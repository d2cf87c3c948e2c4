package preload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// Status is what happened to one image.
type Status string

const (
	StatusPresent  Status = "present" // already there, nothing done
	StatusPulled   Status = "pulled"
	StatusImported Status = "imported" // from an archive on the node
	StatusFailed   Status = "failed"
	StatusSkipped  Status = "skipped" // does not apply to this node
)

// Result is the outcome for one image.
type Result struct {
	Image  string `json:"image"`
	Status Status `json:"status"`
	// Source is where the image came from when not from its own
	// registry: the archive file, or the mirror reference pulled.
	Source string `json:"source,omitempty"`
	// Via is the path of a pull: cri (the runtime's own) or containerd
	// (containerd's client).
	Via      string         `json:"via,omitempty"`
	Reason   failure.Reason `json:"reason,omitzero"` // short and stable: "not found", "unauthorized", …
	Error    string         `json:"error,omitempty"` // the runtime's last message
	Size     uint64         `json:"sizeBytes,omitempty"`
	Duration time.Duration  `json:"durationNanos"`
	Attempts int            `json:"attempts,omitempty"`
	// Refreshed: the tag had moved, and the run pulled what it names now.
	Refreshed bool `json:"refreshed,omitempty"`
	// NextCheck is when the tag is due to be checked again (refresh);
	// zero: not refreshed, or not known.
	NextCheck time.Time `json:"-"`
	// Guess: the image is a sandbox image no config names, the runtime's
	// compiled-in default (Image.Guess); its failure is not counted.
	Guess bool `json:"guess,omitempty"`
}

// Present says whether the image is on the node after the run.
func (r Result) Present() bool {
	switch r.Status {
	case StatusPresent, StatusPulled, StatusImported:
		return true
	}
	return false
}

// Count counts the results that apply to the node (all but the skipped
// ones and a guessed sandbox image that failed: the images applied and the
// archives' others) and, of those, the present ones.
func Count(results []Result) (present, total int) {
	for _, r := range results {
		if r.Status == StatusSkipped || (r.Guess && !r.Present()) {
			continue
		}
		total++
		if r.Present() {
			present++
		}
	}
	return present, total
}

// Engine makes images present in a runtime.
type Engine struct {
	// Store is the node's runtime.
	Store noderuntime.Store
	// Auth returns the credentials to try for img, most specific first;
	// anonymous is always tried after them. Nil means anonymous only.
	Auth func(img config.Image) []*runtimeapi.AuthConfig
	// MaxAttempts bounds the attempts per image in one Run; 0 retries
	// transient failures until ctx ends. The agent runs short bounded syncs
	// so that status shows failures and config changes are not held up.
	MaxAttempts int
	// Owner names the config the engine runs for, "agent:NS/NAME" or
	// "once:PATH": what it pulls or imports is recorded as this owner's,
	// and Prune removes only this owner's images. Empty: nothing is
	// recorded and Prune refuses.
	Owner string
	// Pulls, if set, shows the engine's pulls while they run.
	Pulls *Pulls
	Log   *slog.Logger
}

// Run makes every image present: one ListImages; the import of every
// archive that images name or cfg.ArchiveDir holds, first, because a node
// that has archives often has no registry; a pull of each image still
// missing (cfg.PullConcurrency at once, transient failures retried with backoff
// until ctx ends; from its mirror if it has one); then CRI ImageStatus of
// each reference, which alone decides that an image is present. Finally
// the present images are pinned if cfg.Pin, and images the preloader
// pinned before lose their pin otherwise. Results are in the order of
// images, followed by the archives' images that images do not list;
// identical references are handled once.
func (e *Engine) Run(ctx context.Context, cfg *config.Config, images []config.Image) ([]Result, error) {
	listed, err := e.presence().ListImages(ctx)
	if err != nil {
		return nil, err
	}
	have := index(listed)
	ctx = withVerification(ctx, cfg)

	images = dedupe(images)
	checks := e.checkTags(ctx, images, have)
	for name, c := range checks {
		if c.moved {
			delete(have, presenceKey(name))
		}
	}
	fromArchives, extra := e.importArchives(ctx, cfg, images, imageIDs(listed))
	pulls := toPull(images, fromArchives, have)
	cfg, why := e.choosePath(ctx, cfg, direct(pulls))
	plan := e.planBudget(ctx, cfg, pulls)
	var pulling sync.Once // say the path once, and only when there is a pull
	results := make([]Result, len(images))
	sem := make(chan struct{}, cfg.PullConcurrency(cfg.PullVia))
	// Pulls take their slots in config order: one that waits for an
	// earlier image's budget decision never holds the slot that image
	// needs.
	turn := make(chan struct{})
	close(turn)
	var wg sync.WaitGroup
	for i, img := range images {
		results[i] = Result{Image: img.Name}
		if r, ok := fromArchives[img.Name]; ok {
			results[i] = r
			continue
		}
		if have[presenceKey(img.Name)] {
			continue
		}
		pulling.Do(func() {
			e.log().Info("pull path", "via", cfg.PullVia, "concurrency", cfg.PullConcurrency(cfg.PullVia), "why", why)
		})
		mine, next := turn, make(chan struct{})
		turn = next
		wg.Add(1)
		go func() {
			defer wg.Done()
			passOn := sync.OnceFunc(func() { close(next) })
			defer passOn()
			if plan != nil {
				defer plan.settle(img.Name)
			}
			select {
			case <-mine:
			case <-ctx.Done():
				results[i] = failed(img.Name, ctx.Err(), 0, 0)
				return
			}
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				results[i] = failed(img.Name, ctx.Err(), 0, 0)
				return
			}
			passOn()
			pctx := withBudget(ctx, plan)
			if img.Mirror != "" {
				results[i] = e.pullMirror(pctx, cfg, img)
			} else {
				results[i] = e.pull(pctx, cfg, img)
			}
			if results[i].Reason == failure.NoSpace {
				e.collectGarbage(ctx)
			}
		}()
	}
	wg.Wait()
	results = append(results, extra...)

	for i := range results {
		r := &results[i]
		if r.Status == StatusFailed {
			continue
		}
		st, err := e.presence().ImageStatus(ctx, r.Image)
		var unmountable error
		if err == nil && st != nil && r.Status == "" {
			// On the node before this run (the kubelet pulled it): it
			// may be an artifact the runtime holds without its content,
			// never present. Not brought by this run, it stays.
			unmountable = e.puller().CheckArtifact(ctx, r.Image)
		}
		switch {
		case err != nil:
			*r = failed(r.Image, err, r.Duration, r.Attempts)
		case st == nil:
			// Listed or pulled, yet the runtime does not find it the way
			// the kubelet asks: the promise is about ImageStatus, so this
			// is a failure, never "present".
			*r = Result{Image: r.Image, Status: StatusFailed, Source: r.Source, Reason: failure.NotPresent, Duration: r.Duration, Attempts: r.Attempts}
		case unmountable != nil:
			*r = failed(r.Image, unmountable, r.Duration, r.Attempts)
		default:
			if r.Status == "" {
				r.Status = StatusPresent
			}
			r.Size = st.Size
			if c, ok := checks[r.Image]; ok {
				r.Refreshed = c.moved && r.Status == StatusPulled
				r.NextCheck = c.next
				if !c.reason.IsZero() {
					// The image is present: the reason is a note on it,
					// not a failure.
					r.Reason, r.Error = failure.Note("refresh: "+c.reason.String()), c.err
				}
			}
		}
	}
	for i, img := range images {
		results[i].Guess = img.Guess
	}
	e.syncPins(ctx, cfg, results)
	e.own(ctx, images, results)
	e.markChecked(ctx, images, results)
	return results, nil
}

// pull pulls one image, retrying transient failures with exponential
// backoff and jitter; permanent failures end it at once.
func (e *Engine) pull(ctx context.Context, cfg *config.Config, img config.Image) Result {
	start := time.Now()
	var auths []*runtimeapi.AuthConfig
	if e.Auth != nil {
		auths = e.Auth(img)
	}
	auths = append(auths, nil)
	backoff := cfg.Retry.Backoff()
	maxAttempts := e.MaxAttempts
	if img.Guess {
		maxAttempts = 1
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, guessTimeout)
		defer cancel()
	}
	defer e.Pulls.end(img.Name)
	var prev error
	for attempt := 1; ; attempt++ {
		err := e.pullOnce(e.Pulls.attempt(ctx, img.Name, cfg.PullVia, cfg.StallTimeout), cfg, img, auths)
		if err == nil {
			e.log().Info("pulled", "image", img.Name, "seconds", time.Since(start).Seconds(), "attempts", attempt)
			return Result{Image: img.Name, Status: StatusPulled, Via: cfg.PullVia, Duration: time.Since(start), Attempts: attempt}
		}
		if ctx.Err() != nil && prev != nil {
			// The run ended mid-attempt: why the image is missing is what
			// the attempts before said (registry down), not the deadline.
			err = fmt.Errorf("%w (run ended while retrying)", prev)
		}
		reason, transient := Classify(err)
		if !transient || ctx.Err() != nil || attempt == maxAttempts {
			e.log().Warn("pull failed", "image", img.Name, "reason", reason, "attempts", attempt, "err", err)
			return failedVia(img.Name, cfg.PullVia, err, time.Since(start), attempt)
		}
		wait := backoff.Step()
		e.log().Info("pull failed, retrying", "image", img.Name, "reason", reason, "attempt", attempt, "retryIn", wait.Round(time.Millisecond).String(), "err", err)
		select {
		case <-ctx.Done():
			return failedVia(img.Name, cfg.PullVia, err, time.Since(start), attempt)
		case <-time.After(wait):
		}
		prev = err
	}
}

// pullOnce tries each credential in turn, then anonymous, as the kubelet
// tries every matching credential. An unauthorized answer moves on to the
// next credential; anything else ends the attempt.
func (e *Engine) pullOnce(ctx context.Context, cfg *config.Config, img config.Image, auths []*runtimeapi.AuthConfig) error {
	var err error
	for _, auth := range auths {
		pctx, cancel := context.WithTimeout(ctx, cfg.PullTimeout)
		err = e.pullWith(pctx, cfg, img.Name, auth)
		timedOut := err != nil && attemptTimedOut(ctx, pctx, err)
		runtimeCanceled := status.Code(err) == codes.Canceled && pctx.Err() == nil
		cancel()
		if err == nil {
			return nil
		}
		if timedOut {
			return fmt.Errorf("attempt exceeded pullTimeout %s: %w", cfg.PullTimeout, err)
		}
		if runtimeCanceled {
			// Canceled by the runtime itself, not by the preloader: CRI-O
			// does so when a pull shows no progress for its
			// pull_progress_timeout. A stall, which a retry may get past.
			return fmt.Errorf("%w: the runtime canceled the pull (CRI-O: no progress for its pull_progress_timeout): %w", noderuntime.ErrStalled, err)
		}
		if reason, _ := Classify(err); reason != failure.Unauthorized {
			return err
		}
	}
	return err
}

// attemptTimedOut tells whether pullTimeout, not the end of the run, cut
// an attempt that failed with err. The runtime learns the deadline from the
// request and may end the pull a moment before pctx's own timer fires.
func attemptTimedOut(ctx, pctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	if pctx.Err() == context.DeadlineExceeded {
		return true
	}
	deadline, _ := pctx.Deadline()
	if run, ok := ctx.Deadline(); ok && !run.After(deadline) {
		return false // the run's own deadline is the nearer one
	}
	fromDeadline := status.Code(err) == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded)
	return fromDeadline && time.Until(deadline) < time.Second
}

// nearRegistry is the answer time under which pullVia auto pulls through
// the CRI on containerd 2.x after all. A registry this near (the node's
// LAN) fills the CRI's three download slots fast enough to keep the
// node's cores busy, and then containerd's client, which moves every byte
// through the preloader and containerd's content API, only costs CPU that
// the pulls lack; from a farther one each download waits on the network,
// and the client's more at once are faster (integration/bench:
// BenchmarkPull, LAN-like and remote-like links).
const nearRegistry = 5 * time.Millisecond

// bigLayer is the compressed size of a layer from which pullVia auto
// pulls with containerd's client even from a near registry: the client
// fetches such a blob as parallel ranges, the CRI, unless its
// concurrent_layer_fetch_buffer is on, over one connection, which then
// sets the image's time. Through a LAN-like link (100 MiB/s a
// connection) one 64 MiB layer takes 0.64 s over one connection and a
// fraction of that in ranges, more than the client's extra CPU for
// 64 MiB (BenchmarkPull's LAN-like row: the CPU of each way); the small
// images' 4 MiB layers gain nothing from ranges and keep the CRI.
const bigLayer = 64 << 20

// choosePath returns cfg with pullVia auto decided for this runtime
// (noderuntime.Facts.DirectPull) and, where that is containerd's client,
// for the registries of pulls and their largest layers; and why pulls
// take that path.
func (e *Engine) choosePath(ctx context.Context, cfg *config.Config, pulls []config.Image) (*config.Config, string) {
	c := *cfg
	if c.PullVia != config.PullViaAuto {
		return &c, "pullVia " + cfg.PullVia
	}
	facts := e.Store.Facts()
	direct, reason := facts.DirectPull()
	if !direct {
		c.PullVia = config.PullViaCRI
		return &c, "pullVia auto: " + reason
	}
	var refs []string
	for _, img := range pulls {
		refs = append(refs, img.Name)
	}
	p := pathFacts{directWhy: reason, criRanges: facts.CRIPull.RangedFetch()}
	p.near, p.answer = e.registriesNear(ctx, refs)
	if p.near && !p.criRanges {
		p.largest, p.largestImage = e.largestLayer(ctx, pulls)
	}
	var why string
	c.PullVia, why = autoPath(p)
	return &c, "pullVia auto: " + why
}

// pathFacts is what pullVia auto decides by on containerd 2.x.
type pathFacts struct {
	directWhy    string // why containerd's client at all
	near         bool   // every registry answers within nearRegistry
	answer       string // how they answered; "" when none was timed
	criRanges    bool   // the CRI fetches a blob as parallel ranges
	largest      int64  // compressed bytes of the largest layer to pull
	largestImage string
}

// autoPath is the path of pullVia auto on containerd 2.x, and why.
func autoPath(p pathFacts) (via, why string) {
	switch {
	case !p.near && p.answer != "":
		return config.PullViaContainerd, p.directWhy + "; " + p.answer
	case !p.near:
		return config.PullViaContainerd, p.directWhy
	case p.largest >= bigLayer && !p.criRanges:
		return config.PullViaContainerd, fmt.Sprintf("%s, but %s has a layer of %d MiB: containerd's client fetches it as parallel ranges, the CRI over one connection (its concurrent_layer_fetch_buffer is off)",
			p.answer, p.largestImage, p.largest>>20)
	}
	return config.PullViaCRI, p.answer + ": containerd's CRI pulls keep the node busy at less CPU"
}

// layerSizing bounds how long pullVia auto waits for the sizes of the
// layers to pull. Manifests from registries that answered within
// nearRegistry come in well under it; what it cuts short is an image
// whose credentials are still being looked up (a credential provider may
// take the kubelet's minute), which then counts for nothing.
var layerSizing = 5 * time.Second

// largestLayer is the largest layer that pulls would download, and its
// image, as their manifests say; images whose manifest cannot be read
// within layerSizing count for nothing here (their pull says why).
func (e *Engine) largestLayer(ctx context.Context, pulls []config.Image) (int64, string) {
	type size struct {
		n int64
		i int
	}
	// Buffered: a lookup cut short ends on its own, with no one to read it.
	sizes := make(chan size, len(pulls))
	sem := make(chan struct{}, 8)
	for i, img := range pulls {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			var auth *runtimeapi.AuthConfig
			if e.Auth != nil {
				if auths := e.Auth(img); len(auths) > 0 {
					auth = auths[0]
				}
			}
			n, _ := e.puller().LargestLayer(ctx, img.Name, auth)
			sizes <- size{n, i}
		}()
	}
	timer := time.NewTimer(layerSizing)
	defer timer.Stop()
	largest, at := int64(0), -1
wait:
	for range pulls {
		select {
		case s := <-sizes:
			if s.n > largest || (s.n == largest && s.n > 0 && s.i < at) {
				largest, at = s.n, s.i
			}
		case <-timer.C:
			e.log().Info("pull path: sizing layers without the manifests not read in time", "after", layerSizing.String())
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	if at < 0 {
		return 0, ""
	}
	return largest, pulls[at].Name
}

// registriesNear says whether every registry of refs answers within
// nearRegistry, and how they answered: the first that does not, or the
// slowest that does.
func (e *Engine) registriesNear(ctx context.Context, refs []string) (bool, string) {
	var slowest time.Duration
	var slowestHost string
	for _, host := range registryHosts(refs) {
		near, took, err := e.puller().RegistryNear(ctx, host.ref, nearRegistry)
		switch {
		case err != nil:
			return false, fmt.Sprintf("could not time registry %s: %v", host.name, err)
		case !near:
			return false, fmt.Sprintf("registry %s answers in more than %v", host.name, nearRegistry)
		case took >= slowest:
			slowest, slowestHost = took, host.name
		}
	}
	if slowestHost == "" {
		return false, ""
	}
	return true, fmt.Sprintf("registry %s answers in %v, within %v", slowestHost, slowest.Round(10*time.Microsecond), nearRegistry)
}

// registryHost is a registry and one reference of an image on it.
type registryHost struct{ name, ref string }

// registryHosts are the registries of refs, each once, in order.
func registryHosts(refs []string) []registryHost {
	var hosts []registryHost
	seen := make(map[string]bool)
	for _, ref := range refs {
		named, err := reference.ParseDockerRef(ref)
		if err != nil {
			continue // its pull fails with the reason
		}
		if name := reference.Domain(named); !seen[name] {
			seen[name] = true
			hosts = append(hosts, registryHost{name: name, ref: ref})
		}
	}
	return hosts
}

// direct are the pulls that go by pullVia: those not from a mirror
// (always through the CRI).
func direct(pulls []config.Image) []config.Image {
	var out []config.Image
	for _, img := range pulls {
		if img.Mirror == "" {
			out = append(out, img)
		}
	}
	return out
}

// toPull is the images of the run still missing once the archives are in,
// in config order.
func toPull(images []config.Image, fromArchives map[string]Result, have map[string]bool) []config.Image {
	var out []config.Image
	for _, img := range images {
		if _, imported := fromArchives[img.Name]; !imported && !have[presenceKey(img.Name)] {
			out = append(out, img)
		}
	}
	return out
}

// pullWith pulls ref the way cfg.PullVia says: by the runtime's own CRI
// pull, or by the containerd client. The latter is done only once the CRI
// shows the image, which containerd 1.6's CRI learns of from an event.
func (e *Engine) pullWith(ctx context.Context, cfg *config.Config, ref string, auth *runtimeapi.AuthConfig) error {
	if v := verificationFrom(ctx); v != nil {
		return e.pullSigned(ctx, cfg, v, ref, auth)
	}
	return e.pullRef(ctx, cfg, ref, ref, auth)
}

// pullRef pulls ref, in the disk budget as the image named name.
func (e *Engine) pullRef(ctx context.Context, cfg *config.Config, name, ref string, auth *runtimeapi.AuthConfig) error {
	plan := budgetFrom(ctx)
	if cfg.PullVia != config.PullViaContainerd {
		if plan != nil {
			if err := e.estimateAndReserve(ctx, plan, name, ref, auth); err != nil {
				return err
			}
		}
		_, err := e.puller().PullImage(ctx, ref, auth)
		return err
	}
	if plan != nil {
		if err := plan.await(ctx, name); err != nil {
			return err
		}
		ctx = noderuntime.WithReservation(ctx, func(ctx context.Context, need noderuntime.DiskNeed) error {
			return plan.reserve(ctx, name, need)
		})
	}
	if err := e.puller().PullDirect(ctx, ref, auth, cfg.MaxDownloads); err != nil {
		return err
	}
	return e.awaitCRI(ctx, ref, "")
}

// collectGarbage frees what a pull that ran out of space wrote, before
// the next pull takes its place (with concurrency 1, the image that does
// not fit is then the only one to fail).
func (e *Engine) collectGarbage(ctx context.Context) {
	if err := e.puller().CollectGarbage(ctx); err != nil {
		e.log().Warn("cannot have the runtime collect garbage after a pull ran out of space", "err", err)
	}
}

func (e *Engine) log() *slog.Logger {
	if e.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Log
}

// failedVia is a pull through via that failed.
func failedVia(image, via string, err error, d time.Duration, attempts int) Result {
	r := failed(image, err, d, attempts)
	r.Via = via
	return r
}

func failed(image string, err error, d time.Duration, attempts int) Result {
	reason, _ := Classify(err)
	return Result{Image: image, Status: StatusFailed, Reason: reason, Error: err.Error(), Duration: d, Attempts: attempts}
}

// Classify maps a pull error to a reason and whether retrying may help.
// Runtimes report registry failures only as text inside a gRPC Unknown
// status, so the text is what there is to go on; the patterns are those of
// containerd's and CRI-O's resolvers.
func Classify(err error) (reason failure.Reason, transient bool) {
	// An error that knows its reason (the agent's missing credentials) is
	// final: retrying cannot supply what is not there.
	var known interface{ Reason() failure.Reason }
	if errors.As(err, &known) {
		return known.Reason(), false
	}
	switch {
	case errors.Is(err, noderuntime.ErrStalled):
		return failure.Stalled, true
	case errors.Is(err, context.Canceled):
		return failure.Canceled, false
	case errors.Is(err, context.DeadlineExceeded):
		return failure.Timeout, true
	}
	// The containerd client (imports, pullVia containerd) turns gRPC codes
	// into errdefs errors, whose text ("connection refused") would read
	// as a registry's trouble.
	if errdefs.IsUnavailable(err) {
		return failure.Runtime, true
	}
	switch status.Code(err) {
	case codes.Canceled:
		return failure.Canceled, false
	case codes.DeadlineExceeded:
		return failure.Timeout, true
	case codes.Unavailable:
		return failure.Runtime, true
	case codes.InvalidArgument:
		return failure.Invalid, false
	}
	msg := strings.ToLower(err.Error())
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(msg, s) {
				return true
			}
		}
		return false
	}
	switch {
	case has("no space left"):
		// Final for the run: another attempt fills the disk again, taking
		// the space the other images need, and `once` would hold a node's
		// boot until its timeout. The agent tries again at its next sync,
		// when the kubelet's image GC may have made room.
		return failure.NoSpace, false
	case has("401 unauthorized", "403 forbidden", "unauthorized", "authorization failed", "authentication required", "access denied", "denied:"):
		return failure.Unauthorized, false
	case has("not found", "manifest unknown", "name unknown", "no match for platform"):
		return failure.NotFound, false
	case has("x509:", "tls: failed", "certificate"):
		return failure.TLS, false
	case has("deadline exceeded", "i/o timeout", "timeout"):
		return failure.Timeout, true
	case has("connection refused", "no such host", "connection reset", "eof", "network is unreachable", "broken pipe"):
		return failure.Unreachable, true
	case has(" 500 ", " 502 ", " 503 ", " 504 ", "429", "internal server error", "bad gateway", "service unavailable", "gateway timeout", "too many requests"):
		return failure.Registry, true
	}
	return failure.Other, true
}

// Missing returns the images of which a single ListImages shows no trace:
// the cheap check the agent runs every resync.
func Missing(ctx context.Context, s noderuntime.Presence, images []config.Image) ([]config.Image, error) {
	listed, err := s.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	have := index(listed)
	var missing []config.Image
	for _, img := range images {
		if !have[presenceKey(img.Name)] {
			missing = append(missing, img)
		}
	}
	return missing, nil
}

// index holds every tag and digest reference the runtime lists.
func index(images []*runtimeapi.Image) map[string]bool {
	have := make(map[string]bool)
	for _, img := range images {
		for _, t := range img.RepoTags {
			have[t] = true
		}
		for _, d := range img.RepoDigests {
			have[d] = true
		}
	}
	return have
}

// presenceKey is how a normalized reference appears in ListImages: a digest
// reference by repo@digest (runtimes resolve name:tag@digest by digest), a
// tag reference as it is.
func presenceKey(name string) string {
	ref, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return name
	}
	if d, ok := ref.(reference.Digested); ok {
		return ref.Name() + "@" + d.Digest().String()
	}
	return name
}

func dedupe(images []config.Image) []config.Image {
	seen := make(map[string]bool, len(images))
	out := images[:0:0]
	for _, img := range images {
		if !seen[img.Name] {
			seen[img.Name] = true
			out = append(out, img)
		}
	}
	return out
}
