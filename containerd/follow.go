package containerd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// followEvery is how often a CRI pull's downloads are looked at: the
// stall timeout is at least a second, and a gauge needs no more.
const followEvery = time.Second

// FollowPull runs pull, the CRI plugin's pull of ref, and follows its
// downloads in containerd's content store while it runs: the ingests of
// the blobs ref's manifest names feed the Watch's Bytes and the client's
// Transferred, and an ingest whose offset stays put for the Watch's
// Stall cuts pull (its context is cancelled), which then returns an error
// that wraps ErrStalled.
//
// The blobs are the pull's own, by their digests, so that concurrent
// pulls are told apart; a layer two pulls share counts, and stalls, in
// both. The manifest costs one resolution at the registry (a HEAD, which
// Docker Hub does not count against its pull limit) and is read from the
// content store once the CRI has it. A blob whose ingest has not started (it waits for one
// of the CRI's download slots) or has ended (the blob is in, or being
// unpacked) is not waiting for bytes and cannot stall; nor can an ingest
// left by an earlier attempt until the pull takes it up again.
func (c *Client) FollowPull(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, pull func(context.Context) error) error {
	w := WatchFrom(ctx)
	if w.Bytes == nil && w.Stall <= 0 {
		return pull(ctx)
	}
	ctx, cut := context.WithCancelCause(ctx)
	defer cut(nil)
	b := c.transfers.start(w.Bytes)
	defer b.end()
	// The following ends with the pull, even mid-call to the registry.
	fctx, stop := context.WithCancel(ctx)
	followed := make(chan *follow, 1)
	go func() { followed <- c.follow(fctx, b, ref, auth, w.Stall, cut) }()
	err := pull(ctx)
	cause := context.Cause(ctx)
	stop()
	if f := <-followed; f != nil && err == nil {
		f.complete() // the pull has all of its blobs
	}
	if err != nil && errors.Is(cause, ErrStalled) {
		return fmt.Errorf("pull %s: %w", ref, cause)
	}
	return err
}

// follow looks at the pull's downloads every followEvery until ctx ends,
// and returns what it followed; nil if it could not start.
func (c *Client) follow(ctx context.Context, b *pullBytes, ref string, auth *runtimeapi.AuthConfig, stall time.Duration, cut context.CancelCauseFunc) *follow {
	start := time.Now()
	cs := c.c.ContentStore()
	// Ingests there before the pull are another pull's or an earlier
	// attempt's: the baseline against which this one's are told.
	before, err := cs.ListStatuses(ctx)
	if err != nil {
		return nil
	}
	target, err := c.resolveTarget(ctx, ref, auth)
	if err != nil {
		return nil // the pull meets the same trouble and says so
	}
	f := newFollow(b, stall, before)
	t := time.NewTicker(followEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return f
		case <-t.C:
		}
		if f.blobs == nil {
			m, err := images.Manifest(ctx, cs, target, c.platform)
			if err != nil {
				continue // not in the store yet
			}
			if f.expect(ctx, cs, start, append([]ocispec.Descriptor{m.Config}, m.Layers...)) != nil {
				continue
			}
		}
		sts, err := cs.ListStatuses(ctx)
		if err != nil {
			continue
		}
		absent, err := f.observe(time.Now(), sts)
		if err != nil {
			cut(err)
			return f
		}
		for _, fb := range absent {
			if _, err := cs.Info(ctx, fb.desc.Digest); err == nil {
				f.committed(fb)
			}
		}
	}
}

// resolveTarget is the descriptor ref resolves to, as the CRI's pull
// resolves it.
func (c *Client) resolveTarget(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (ocispec.Descriptor, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	_, desc, err := c.resolver(ctx, auth).Resolve(ctx, named.String())
	return desc, err
}

// followed is one blob of a followed pull.
type followed struct {
	desc ocispec.Descriptor
	f    *blob
	// offset is its ingest's offset when last seen, since when it has not
	// moved; started, once the ingest is written by this pull (new, or
	// moving); seen, once it was.
	offset    int64
	since     time.Time
	seen      bool
	started   bool
	committed bool
}

// follow is the state of one followed pull: pure, so that what the
// content store shows can be fed to it by a test.
type follow struct {
	b      *pullBytes
	stall  time.Duration
	before map[digest.Digest]int64
	blobs  []*followed
	// moved is when an ingest this pull writes last moved.
	moved time.Time
}

func newFollow(b *pullBytes, stall time.Duration, before []content.Status) *follow {
	f := &follow{b: b, stall: stall, before: map[digest.Digest]int64{}}
	for _, st := range before {
		if d, ok := ingestDigest(st); ok {
			f.before[d] = st.Offset
		}
	}
	return f
}

// expect takes the pull's blobs: those the store lacks, or got since the
// pull started (the CRI may have committed the config before the
// manifest was read here).
func (f *follow) expect(ctx context.Context, cs content.InfoProvider, start time.Time, blobs []ocispec.Descriptor) error {
	var mine []ocispec.Descriptor
	var in []bool
	for _, d := range blobs {
		info, err := cs.Info(ctx, d.Digest)
		switch {
		case errdefs.IsNotFound(err):
			mine, in = append(mine, d), append(in, false)
		case err != nil:
			return err
		case !info.CreatedAt.Before(start):
			mine, in = append(mine, d), append(in, true)
		}
	}
	f.b.expect(mine)
	f.blobs = []*followed{}
	for i, d := range mine {
		fb := &followed{desc: d, f: f.b.fetching(d)}
		if fb.f == nil { // named twice in the manifest
			continue
		}
		f.blobs = append(f.blobs, fb)
		if in[i] {
			f.committed(fb)
		}
	}
	return nil
}

// observe takes one listing of the store's ingests at now. It returns the
// blobs of the pull that have no ingest and are not known to be in (for
// the caller to look up), and an error wrapping ErrStalled if an ingest of
// the pull has not moved for the stall timeout.
func (f *follow) observe(now time.Time, sts []content.Status) (absent []*followed, stalled error) {
	ingests := make(map[digest.Digest]content.Status, len(sts))
	for _, st := range sts {
		if d, ok := ingestDigest(st); ok {
			ingests[d] = st
		}
	}
	var current []*followed
	for _, fb := range f.blobs {
		if fb.committed {
			continue
		}
		st, ok := ingests[fb.desc.Digest]
		if !ok {
			absent = append(absent, fb)
			continue
		}
		off := st.Offset
		if !fb.seen {
			prev, was := f.before[fb.desc.Digest]
			fb.seen, fb.started = true, !was || prev != off
			fb.offset, fb.since = off, now
			if fb.started {
				f.moved = now
			}
		}
		if off != fb.offset {
			fb.offset, fb.since, fb.started = off, now, true
			f.moved = now
		}
		if d := off - fb.f.read.Load(); d > 0 {
			fb.f.add(d)
		}
		current = append(current, fb)
	}
	for _, fb := range current {
		st := ingests[fb.desc.Digest]
		// The store knows when the ingest was last written (containerd's
		// local store: the data's mtime), which is sooner than a look
		// once a second can tell. An earlier attempt's ingest that has
		// not moved since waits for one of the runtime's download slots
		// while the pull's other downloads move, and is judged only once
		// none has moved for the stall timeout: a download that resumes
		// it and stalls at once is a stall too.
		last := fb.since
		switch {
		case fb.started && !st.UpdatedAt.IsZero() && st.UpdatedAt.Before(last):
			last = st.UpdatedAt
		case !fb.started && f.moved.After(last):
			last = f.moved
		}
		if waited := now.Sub(last); f.stall > 0 && waited >= f.stall && stalled == nil {
			stalled = stallError(fb.desc, fb.offset, waited)
		}
	}
	return absent, stalled
}

// complete counts every blob of the pull as received.
func (f *follow) complete() {
	for _, fb := range f.blobs {
		if !fb.committed {
			f.committed(fb)
		}
	}
}

// committed counts a blob that is in the store as wholly received.
func (f *follow) committed(fb *followed) {
	fb.committed = true
	f.b.fetched(fb.f)
}

// ingestDigest is the blob an ingest writes: the CRI names its ingests
// by kind and digest ("layer-sha256:…", remotes.MakeRefKey).
func ingestDigest(st content.Status) (digest.Digest, bool) {
	if st.Expected != "" {
		return st.Expected, true
	}
	i := strings.LastIndexByte(st.Ref, '-')
	d, err := digest.Parse(st.Ref[i+1:])
	return d, err == nil
}

// stallError says which blob stalled, how far it got and how long it
// waited.
func stallError(desc ocispec.Descriptor, off int64, waited time.Duration) error {
	return fmt.Errorf("blob %s: %w at %d of %d bytes: no bytes for %s", desc.Digest, ErrStalled, off, desc.Size, waited.Round(time.Millisecond))
}
