package preload

import (
	"context"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// refreshCheck is what the check of one present tag found.
type refreshCheck struct {
	moved  bool           // the registry's tag names another manifest: pull it
	reason failure.Reason // why the check failed; the image stays
	err    string
	next   time.Time // when the tag is due again
}

// checkTags asks the registry, for each present tag reference whose
// refresh interval has passed since its last check (recorded on the
// node, so once and the agent share it), which manifest the tag names
// now. A tag that moved is pulled again by the run; one whose registry
// cannot be asked keeps the image the node has.
func (e *Engine) checkTags(ctx context.Context, images []config.Image, have map[string]bool) map[string]refreshCheck {
	var due []config.Image
	for _, img := range images {
		if img.Refresh > 0 && !strings.Contains(img.Name, "@") && have[presenceKey(img.Name)] {
			due = append(due, img)
		}
	}
	if len(due) == 0 {
		return nil
	}
	if err := e.refresher().Can(noderuntime.OpRefresh); err != nil {
		e.log().Info("tags not refreshed", "reason", err)
		return nil
	}
	now := time.Now()
	checks := make(map[string]refreshCheck)
	for _, img := range due {
		local, checked, err := e.refresher().LocalDigest(ctx, img.Name)
		if err != nil {
			continue
		}
		if next := nextCheck(img.Name, checked, img.Refresh); now.Before(next) {
			checks[img.Name] = refreshCheck{next: next}
			continue
		}
		c := refreshCheck{next: nextCheck(img.Name, now, img.Refresh)}
		remote, err := e.tagDigest(ctx, img)
		switch {
		case err != nil:
			reason, _ := Classify(err)
			e.log().Warn("cannot check whether the tag moved; keeping the image the node has", "image", img.Name, "reason", reason, "err", err)
			c.reason, c.err = reason, err.Error()
		case remote != local:
			e.log().Info("tag moved; pulling it again", "image", img.Name, "from", local, "to", remote)
			c.moved = true
		}
		if err == nil {
			if err := e.refresher().MarkChecked(ctx, img.Name, now); err != nil {
				e.log().Warn("cannot record the tag check", "image", img.Name, "err", err)
			}
		}
		checks[img.Name] = c
	}
	return checks
}

// nextCheck is when the tag of name checked at checked is due again: one
// interval later plus up to a tenth of it, so that the nodes of a cluster
// do not all ask the registry at once; the same for the same check, so
// that the agent can sleep until it. Never checked: now.
func nextCheck(name string, checked time.Time, every time.Duration) time.Time {
	if checked.IsZero() {
		return time.Time{}
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s %d", name, checked.UnixNano())
	return checked.Add(every + time.Duration(h.Sum64()%uint64(every/10+1)))
}

// tagDigest asks with the image's credentials, most specific first, then
// anonymously, as a pull does.
func (e *Engine) tagDigest(ctx context.Context, img config.Image) (string, error) {
	var auths []*runtimeapi.AuthConfig
	if e.Auth != nil {
		auths = e.Auth(img)
	}
	auths = append(auths, nil)
	var err error
	for _, auth := range auths {
		var d string
		if d, err = e.refresher().TagDigest(ctx, img.Name, auth); err == nil {
			return d, nil
		}
	}
	return "", err
}

// markChecked records as checked the refreshed tags the run pulled: a
// pull resolves the tag, and the runtime's pull wrote a new record,
// without the old one's labels.
func (e *Engine) markChecked(ctx context.Context, images []config.Image, results []Result) {
	refresh := make(map[string]bool, len(images))
	refreshOf := make(map[string]time.Duration, len(images))
	for _, img := range images {
		refresh[img.Name] = img.Refresh > 0 && !strings.Contains(img.Name, "@")
		refreshOf[img.Name] = img.Refresh
	}
	now := time.Now()
	for i := range results {
		r := &results[i]
		if r.Status == StatusPulled && refresh[r.Image] {
			if err := e.refresher().MarkChecked(ctx, r.Image, now); err != nil {
				e.log().Warn("cannot record the tag check", "image", r.Image, "err", err)
			}
			r.NextCheck = nextCheck(r.Image, now, refreshOf[r.Image])
		}
	}
}

// NextRefresh is when the next tag check of images is due, after a run
// that gave results: the earliest the results say; when a refreshed image
// has no time (not present, the runtime could not say), one shortest
// refresh interval from now. Zero: no image is refreshed.
func NextRefresh(images []config.Image, results []Result) time.Time {
	every := shortestRefresh(images)
	if every == 0 {
		return time.Time{}
	}
	next := time.Now().Add(every)
	for _, r := range results {
		if !r.NextCheck.IsZero() && r.NextCheck.Before(next) {
			next = r.NextCheck
		}
	}
	return next
}

// shortestRefresh is the shortest refresh interval of images; 0: none.
func shortestRefresh(images []config.Image) time.Duration {
	var d time.Duration
	for _, img := range images {
		if img.Refresh > 0 && (d == 0 || img.Refresh < d) {
			d = img.Refresh
		}
	}
	return d
}
