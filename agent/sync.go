package agent

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/kubelet"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// syncState is what one sync leaves for the next; only the sync loop
// touches it.
type syncState struct {
	config configState
	// sandbox is the resolved sandbox image for the config with hash
	// sandboxFor; resolving asks the runtime, which a sync at rest must not.
	sandbox    string
	sandboxFor string
	// last is what the last full run found, for the desired set key.
	last *converged
	// failures are the failed images and reasons already reported in
	// Events, so that a failure is reported when it starts or changes, not
	// every backoff round.
	failures map[string]failure.Reason
	// backoff is the retry schedule since the last good sync; nil after
	// one.
	backoff *wait.Backoff
	// syncErr is the last sync-wide problem reported in an Event.
	syncErr     string
	nodeMissing bool
	// policy is the kubelet policy and refused images last reported;
	// kubelet is the last policy read from the kubelet's config.
	policy            string
	kubelet           *kubelet.Policy
	kubeletUnreadable bool
	// refreshAt is when the next tag check is due (refresh); zero: none.
	refreshAt time.Time
	// refreshed is the tags pulled again under the config refreshedFor.
	refreshed    []string
	refreshCount int
	refreshedFor string
}

type converged struct {
	key    string
	status nodestatus.Status
}

// sync brings the node one step towards the config and returns when the
// next sync is due (0: only when woken).
func (a *Agent) sync(ctx context.Context) time.Duration {
	a.syncs.Add(1)
	start := time.Now()
	cfg := a.currentConfig()
	if cfg == nil {
		return a.reportUnconfigured(ctx) // the ConfigMap informer wakes us
	}
	node := a.currentNode()
	if node == nil {
		if !a.state.nodeMissing {
			a.state.nodeMissing = true
			a.log.Warn("Node not found; waiting for it")
		}
		return 0 // the Node informer wakes us
	}
	a.state.nodeMissing = false

	sandbox, err := a.sandboxImage(ctx, cfg)
	if err != nil {
		return a.syncFailed(ctx, cfg, ReasonSandboxUnknown, err)
	}
	// A guessed sandbox image counts here as any other: the agent retries
	// every resync and its status shows the failure, with no bootstrap to
	// hold up.
	apply, _ := preload.Plan(cfg.Config, node, preload.Sandbox{Name: sandbox})
	key := desiredKey(cfg.hash, apply)

	// At rest: the same images as last time, all present then, and one
	// ListImages says they still are. ImageStatus and the API are left
	// alone; planWrite below only compares with the informer's Node.
	var st nodestatus.Status
	atRest := false
	// Images prune holds for a container are asked about again every
	// resync, until they can go.
	refreshDue := !a.state.refreshAt.IsZero() && !time.Now().Before(a.state.refreshAt)
	if last := a.state.last; last != nil && last.key == key && last.status.Complete() && len(last.status.PruneHeld) == 0 && !refreshDue {
		missing, err := preload.Missing(ctx, a.opts.Store, apply)
		if err != nil {
			return a.syncFailed(ctx, cfg, ReasonRuntimeUnavailable, err)
		}
		if atRest = len(missing) == 0; atRest {
			st = last.status
		} else {
			a.log.Info("images gone from the runtime; restoring them", "images", imageNames(missing))
		}
	}
	if !atRest {
		a.leaveUnconfigured(ctx, cfg, apply)
		results, err := a.runInTurn(ctx, cfg, apply)
		if err != nil {
			return a.syncFailed(ctx, cfg, ReasonRuntimeUnavailable, err)
		}
		if ctx.Err() != nil {
			return 0 // shutting down: results say "canceled", not the truth
		}
		st = buildStatus(cfg.hash, results)
		a.state.refreshAt = preload.NextRefresh(apply, results)
		a.noteRefreshed(cfg.hash, results, &st)
		a.prune(ctx, cfg, &st)
		a.state.last = &converged{key: key, status: st}
		a.reportFailures(results)
		a.log.Info("synced", "configHash", cfg.hash, "present", st.Present, "total", st.Total, "failed", len(st.Failed))
	}
	a.syncSucceeded()
	st = a.judge(node, st, apply, sandbox)
	st.Runtime = a.runtime()
	a.metrics.desired.Set(float64(st.Total))
	a.metrics.present.Set(float64(st.Present))
	a.metrics.failed.Set(float64(len(st.Failed)))

	err = a.report(ctx, st)
	if !atRest {
		a.metrics.syncDuration.Set(time.Since(start).Seconds())
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0
		}
		a.log.Error("cannot update the Node", "err", err)
		return a.retryIn(cfg)
	}
	if !st.Complete() {
		return a.retryIn(cfg)
	}
	a.state.backoff = nil
	a.metrics.lastSuccess.SetToCurrentTime()
	return a.resync(cfg)
}

// runInTurn is run, holding a pull slot while it runs if it will pull from
// a registry and the config's rollout bounds the nodes pulling at once. A
// sync with nothing to pull makes no API request for it.
func (a *Agent) runInTurn(ctx context.Context, cfg *loadedConfig, images []config.Image) ([]preload.Result, error) {
	pull, err := toPull(ctx, a, cfg, images)
	if err != nil {
		return nil, err
	}
	if len(pull) == 0 {
		return a.run(ctx, cfg, images)
	}
	if cfg.Rollout.FirstNodes > 0 {
		if err := a.waitFirst(ctx, cfg, pull); err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			// firstNodes saves a mirror work; it must not keep a node
			// from its images when the API cannot tell who is first.
			a.log.Warn("cannot learn which nodes pull first; pulling", "err", err)
		}
	}
	if !cfg.Rollout.MaxNodesPulling.Unlimited() {
		h, err := a.acquire(ctx, cfg)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			return nil, fmt.Errorf("pull slot: %w", err)
		}
		defer a.release(ctx, h)
	}
	results, err := a.run(ctx, cfg, images)
	if err == nil && cfg.Rollout.FirstNodes > 0 && ctx.Err() == nil {
		a.tellHave(ctx, cfg, results)
	}
	return results, err
}

// run makes the images present: one bounded engine run, so that a failure
// shows in status soon and a new config waits at most one attempt.
func (a *Agent) run(ctx context.Context, cfg *loadedConfig, images []config.Image) ([]preload.Result, error) {
	if keys := a.creds.elsewhereKeys(images); len(keys) > 0 || a.creds.elsewhere.watching() {
		a.creds.elsewhere.want(ctx, keys)
		a.creds.elsewhere.wait(ctx, settleTimeout)
	}
	creds := a.creds.resolve(images)
	creds.plugins = a.opts.CredentialProviders.Gate(ctx, a.tokens)
	engine := a.engine()
	// The gate is outside the count: a pull it refuses never started.
	engine.Store = gatedStore{Store: countingStore{Store: a.opts.Store, n: &a.metrics.inFlight}, creds: creds}
	engine.Auth = creds.Auth
	stop := a.showProgress(ctx, func() nodestatus.Status { return a.freshStatus(ctx, cfg.hash, images) })
	results, err := engine.Run(ctx, a.withKubeletBudget(cfg.Config), images)
	stop()
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return results, nil
	}
	a.metrics.countPulls(results)
	if transferred(results) {
		releaseMemory()
	}
	return results, nil
}

// withKubeletBudget is cfg with the disk budget the config leaves unset
// taken from the node kubelet's thresholds, read with its policy.
func (a *Agent) withKubeletBudget(cfg *config.Config) *config.Config {
	if a.opts.KubeletConfig == "" {
		return cfg
	}
	t, err := kubelet.ReadThresholds(a.opts.KubeletConfig, a.opts.KubeletConfigDir)
	if err != nil {
		return cfg
	}
	c := *cfg
	c.DiskBudget = c.DiskBudget.WithKubelet(t.ImageGCHighThresholdPercent, t.ImagefsAvailable)
	return &c
}

// engine is the agent's engine: one attempt per image, the images it
// brings recorded as its ConfigMap's.
func (a *Agent) engine() *preload.Engine {
	return &preload.Engine{Store: a.opts.Store, MaxAttempts: 1, Owner: "agent:" + a.cmKey, Log: a.log, Pulls: a.pulls}
}

// prune removes what the agent brought and the config dropped (prune:
// true), and shows in st what it must hold for containers or, with prune:
// dryRun, what it would remove. Removals are counted and said in an Event.
func (a *Agent) prune(ctx context.Context, cfg *loadedConfig, st *nodestatus.Status) {
	pruned, err := a.engine().Prune(ctx, cfg.Config)
	if err != nil {
		a.log.Warn("prune failed", "err", err)
		return
	}
	var removed []string
	for _, p := range pruned {
		a.metrics.pruned.WithLabelValues(pruneAction(p.Action)).Inc()
		switch p.Action {
		case preload.PruneRemoved:
			removed = append(removed, p.Image)
		case preload.PruneInUse:
			st.PruneHeld = appendListed(st.PruneHeld, p.Image)
		case preload.PruneWouldRemove:
			st.WouldPrune = appendListed(st.WouldPrune, p.Image)
		}
	}
	if len(removed) > 0 {
		a.nodeEvent(corev1.EventTypeNormal, ReasonImagesPruned, fmt.Sprintf("removed %d images that left the config: %s", len(removed), strings.Join(removed, ", ")))
	}
}

func appendListed(list []string, s string) []string {
	if len(list) >= nodestatus.MaxListed {
		return list
	}
	return append(list, s)
}

// transferred says whether a run moved image data: pulled, imported, or
// tried to.
func transferred(results []preload.Result) bool {
	for _, r := range results {
		if r.Attempts > 0 {
			return true
		}
	}
	return false
}

// releaseMemory returns to the OS what a run's transfers left behind: the
// buffers gRPC and the containerd client pool (MiBs while maxDownloads
// pulls run) and the heap they grew. An agent at rest allocates so little
// that Go would not collect for minutes and then return pages only
// gradually, so without this it idles at its last pull's footprint. Two
// collections, because a sync.Pool frees its contents on the second.
func releaseMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// report shows st on the Node if it does not already, and says so in
// Events when the node becomes ready.
func (a *Agent) report(ctx context.Context, st nodestatus.Status) error {
	node, v := a.ownView()
	if node == nil {
		return fmt.Errorf("node %s is gone", a.opts.NodeName)
	}
	w, needed := planWrite(v, st, time.Now())
	if !needed {
		return nil
	}
	if err := a.writeNode(ctx, node, v, w); err != nil {
		return err
	}
	c := w.after(v).cond
	a.log.Info("Node updated", "ready", w.ready, "present", st.Present, "total", st.Total, "taintRemoved", w.removeTaint, "condition", string(c.Status)+" "+c.Reason)
	if st.Ready() && !w.wasReady {
		a.nodeEvent(corev1.EventTypeNormal, ReasonImagesReady, fmt.Sprintf("All %d images present (config %s)", st.Total, st.ConfigHash))
	}
	return nil
}

// unconfiguredRetry is when an agent without a config, which has no
// retry schedule of its own, tries again to show that on the Node.
const unconfiguredRetry = 10 * time.Second

// reportUnconfigured shows on the Node's condition that the agent has no
// config to apply, unless the label says the node is ready: an agent
// restarted without its ConfigMap does not contradict a verdict it cannot
// check again, and leaves label, annotation and taint alone too. It
// returns when to try again: only when woken, unless the write failed.
func (a *Agent) reportUnconfigured(ctx context.Context) time.Duration {
	node, v := a.ownView()
	if node == nil || v.ready == "true" {
		return 0
	}
	var w nodeWrite
	c := nodestatus.Unconfigured(a.cmKey, a.state.config.badHash != "")
	if a.state.config.unlistedHash != "" {
		c = nodestatus.WorkloadsNotListed(a.cmKey)
	}
	w.setCond(v, c)
	if w.cond == nil {
		return 0
	}
	if err := a.writeNode(ctx, node, v, w); err != nil {
		if ctx.Err() == nil {
			a.log.Error("cannot update the Node", "err", err)
		}
		return unconfiguredRetry
	}
	a.log.Info("Node updated", "condition", string(w.cond.Status)+" "+w.cond.Reason)
	return 0
}

// leaveUnconfigured moves a condition that says the agent has no config
// (or waits for the controller's list) on to the images still missing,
// before a run that may pull for minutes: a condition that still said
// "nothing is preloaded" meanwhile would be wrong. Only to False: the
// run's own report says True, with the label.
func (a *Agent) leaveUnconfigured(ctx context.Context, cfg *loadedConfig, images []config.Image) {
	node, v := a.ownView()
	switch {
	case node == nil:
		return
	case v.cond.Reason != nodestatus.ReasonNoConfig && v.cond.Reason != nodestatus.ReasonConfigInvalid && v.cond.Reason != nodestatus.ReasonWorkloadsNotListed:
		return
	}
	st := a.freshStatus(ctx, cfg.hash, images)
	if st.Ready() {
		return
	}
	var w nodeWrite
	w.setCond(v, nodestatus.ConditionOf(st))
	if w.cond == nil {
		return
	}
	if err := a.writeNode(ctx, node, v, w); err != nil {
		if ctx.Err() == nil {
			a.log.Error("cannot update the Node", "err", err)
		}
		return
	}
	a.log.Info("Node updated", "condition", string(w.cond.Status)+" "+w.cond.Reason)
}

// reportFailures records an Event for each image that newly failed or
// failed for a new reason.
func (a *Agent) reportFailures(results []preload.Result) {
	cur := map[string]failure.Reason{}
	for _, r := range results {
		if r.Status != preload.StatusFailed || r.Reason == failure.Canceled {
			continue
		}
		cur[r.Image] = r.Reason
		if a.state.failures[r.Image] == r.Reason {
			continue
		}
		reason, msg := r.Reason.Event(r.Image, r.Error)
		a.nodeEvent(corev1.EventTypeWarning, reason, msg)
	}
	a.state.failures = cur
}

// syncFailed handles a sync that could not run at all, most often because
// the runtime did not answer: status is left as it is (nothing new is
// known), /readyz fails, and an Event says why when the problem is new.
func (a *Agent) syncFailed(ctx context.Context, cfg *loadedConfig, reason string, err error) time.Duration {
	if ctx.Err() != nil {
		return 0
	}
	a.runtimeOK.Store(false)
	a.state.sandboxFor = "" // a runtime that restarted may have a new sandbox image
	a.log.Error("sync failed", "reason", reason, "err", err)
	if msg := err.Error(); a.state.syncErr != reason+msg {
		a.state.syncErr = reason + msg
		a.nodeEvent(corev1.EventTypeWarning, reason, msg)
	}
	return a.retryIn(cfg)
}

func (a *Agent) syncSucceeded() {
	if !a.runtimeOK.Swap(true) && a.state.syncErr != "" {
		a.log.Info("container runtime answers again")
	}
	a.state.syncErr = ""
}

// retryIn is the delay before a sync after one that failed: the config's
// retry backoff (config.Retry.Backoff), never beyond resync, which bounds
// how stale the node may be.
func (a *Agent) retryIn(cfg *loadedConfig) time.Duration {
	if a.state.backoff == nil {
		b := cfg.Retry.Backoff()
		a.state.backoff = &b
	}
	return min(a.state.backoff.Step(), a.resync(cfg))
}

// resync is when the next sync at rest is due: the config's resync (or
// the shorter one a test set), or sooner when a tag check is due first.
func (a *Agent) resync(cfg *loadedConfig) time.Duration {
	d := cfg.Resync
	if a.testResync > 0 {
		d = a.testResync
	}
	if !a.state.refreshAt.IsZero() {
		d = max(min(d, time.Until(a.state.refreshAt)), time.Millisecond)
	}
	return d
}

// noteRefreshed shows in st the tags pulled again because they moved,
// since the config last changed: the last MaxListed by name, all counted.
func (a *Agent) noteRefreshed(hash string, results []preload.Result, st *nodestatus.Status) {
	if a.state.refreshedFor != hash {
		a.state.refreshed, a.state.refreshCount, a.state.refreshedFor = nil, 0, hash
	}
	for _, r := range results {
		if r.Refreshed {
			a.state.refreshCount++
			a.state.refreshed = append(a.state.refreshed, r.Image)
			if len(a.state.refreshed) > nodestatus.MaxListed {
				a.state.refreshed = a.state.refreshed[1:]
			}
		}
	}
	st.Refreshed, st.RefreshedImages = a.state.refreshCount, slices.Clone(a.state.refreshed)
}

// sandboxImage resolves the config's sandboxImage once per config.
func (a *Agent) sandboxImage(ctx context.Context, cfg *loadedConfig) (string, error) {
	if a.state.sandboxFor == cfg.hash {
		return a.state.sandbox, nil
	}
	sb, err := preload.ResolveSandbox(ctx, a.opts.Store, cfg.Config)
	if err != nil {
		return "", err
	}
	if sb.Name != "" && sb.Name != a.state.sandbox {
		a.log.Info("sandbox image", "image", sb.Name, "source", sb.Source)
	}
	a.state.sandbox, a.state.sandboxFor = sb.Name, cfg.hash
	return sb.Name, nil
}

// desiredKey identifies the set of images a sync wants: the config's
// content and which of its images apply here.
func desiredKey(hash string, images []config.Image) string {
	names := imageNames(images)
	slices.Sort(names)
	return hash + "\n" + strings.Join(names, "\n")
}

func imageNames(images []config.Image) []string {
	names := make([]string, len(images))
	for i, img := range images {
		names[i] = img.Name
	}
	return names
}

// judge adds to st what the node's kubelet will do with its images for
// pods without pull credentials (KEP-2535), from the kubelet's config as
// it is now; refusals are reported in an Event when they change. The
// sandbox image is not judged: the runtime uses it, not a pod.
func (a *Agent) judge(node *corev1.Node, st nodestatus.Status, apply []config.Image, sandbox string) nodestatus.Status {
	if a.opts.KubeletConfig == "" {
		return st
	}
	p := a.kubeletPolicy(node)
	st.Policy = p.Name
	var refused []string
	for _, img := range apply {
		if img.Name != sandbox && p.Refuses(img.Ref) {
			refused = append(refused, img.Ref)
		}
	}
	st.Refused = len(refused)
	st.RefusedImages = refused[:min(len(refused), nodestatus.MaxListed)]
	a.reportPolicy(p, refused)
	return st
}

// kubeletPolicy reads the kubelet's policy. Once one has been read, a read
// that fails (the file being rewritten in place, or gone) keeps it, and a
// change counts only when a second read agrees: a torn read must not lift
// the not-ready taint, which the agent never puts back.
func (a *Agent) kubeletPolicy(node *corev1.Node) kubelet.Policy {
	read := func() kubelet.Policy {
		return kubelet.ReadPolicy(a.opts.KubeletConfig, a.opts.KubeletConfigDir, kubelet.Minor(node.Status.NodeInfo.KubeletVersion))
	}
	p, last := read(), a.state.kubelet
	switch {
	case last == nil:
	case p.Name == kubelet.Unknown:
		if !a.state.kubeletUnreadable {
			a.state.kubeletUnreadable = true
			a.log.Warn("kubelet config unreadable; keeping the policy last read", "policy", last.Name, "reason", p.Reason)
		}
		return *last
	case !samePolicy(p, *last):
		if again := read(); !samePolicy(p, again) {
			return *last
		}
	}
	a.state.kubelet, a.state.kubeletUnreadable = &p, false
	return p
}

func samePolicy(a, b kubelet.Policy) bool {
	return a.Name == b.Name && slices.Equal(a.Allowlist, b.Allowlist) && a.Minor == b.Minor
}

// reportPolicy logs the policy when it changes and records a Warning Event
// on the Node when the images it refuses change to a non-empty set.
func (a *Agent) reportPolicy(p kubelet.Policy, refused []string) {
	key := p.Name + "\n" + strings.Join(refused, "\n")
	if a.state.policy == key {
		return
	}
	a.state.policy = key
	a.log.Info("kubelet credential verification", "policy", p.Name, "source", p.Reason, "refused", len(refused))
	if len(refused) == 0 {
		return
	}
	names := refused[:min(len(refused), 5)]
	more := ""
	if len(refused) > len(names) {
		more = fmt.Sprintf(" and %d more", len(refused)-len(names))
	}
	a.nodeEvent(corev1.EventTypeWarning, ReasonKubeletRefuses, fmt.Sprintf(
		"kubelet imagePullCredentialsVerificationPolicy %s (%s) refuses %d preloaded images to pods without pull credentials: %s%s. "+
			"Set imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages with the allowlist `preloader allowlist --config images.yaml` prints",
		p.Name, p.Reason, len(refused), strings.Join(names, ", "), more))
}
