package preload

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// budgetPlan is one run's disk budget: the room left below it, and each
// image's decision, taken in config order, so that an earlier image
// always has its room before a later one. Each image's pull decides its
// own once it knows what it needs on disk: through containerd's client
// when the pull has read its manifest, through the CRI from an estimate
// just before the pull; both before the first byte of a layer.
type budgetPlan struct {
	budget         config.Budget
	capacity, free uint64
	limit          uint64
	log            *slog.Logger

	mu    sync.Mutex
	used  uint64
	index map[string]int // image (and mirror) name -> its place among the pulls
	done  []chan struct{}
	held  map[int]error
}

// planBudget returns the budget of a run that pulls images, in config
// order; nil where the runtime cannot say sizes or free space (the log
// says why), and nothing is held back.
func (e *Engine) planBudget(ctx context.Context, cfg *config.Config, pulls []config.Image) *budgetPlan {
	if len(pulls) == 0 || cfg.DiskBudget.Off {
		return nil
	}
	if err := e.budgeter().Can(noderuntime.OpBudget); err != nil {
		e.log().Info("disk budget not applied", "reason", err)
		return nil
	}
	fs, err := e.budgeter().ImageFs(ctx)
	if err != nil {
		e.log().Warn("disk budget not applied", "err", err)
		return nil
	}
	p := &budgetPlan{budget: cfg.DiskBudget, capacity: fs.Capacity, free: fs.Available, limit: cfg.DiskBudget.Limit(fs.Capacity), log: e.log(),
		used: fs.Capacity - fs.Available, index: make(map[string]int, len(pulls)), held: map[int]error{}}
	for i, img := range pulls {
		p.index[img.Name] = i
		if src, err := config.MirrorRef(img.Name, img.Mirror); img.Mirror != "" && err == nil {
			p.index[src] = i
		}
		p.done = append(p.done, make(chan struct{}))
	}
	return p
}

// reserve decides the image named name (or its mirror's name), whose
// pull needs need on disk, once every earlier image has been decided: its
// need is added, or it is held back with a *budgetError. An image decided
// before (an earlier attempt) keeps its decision.
func (p *budgetPlan) reserve(ctx context.Context, name string, need noderuntime.DiskNeed) error {
	i, ok := p.index[name]
	if !ok {
		return nil
	}
	if err := p.awaitEarlier(ctx, name, i); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done[i]:
		return p.held[i]
	default:
	}
	defer close(p.done[i])
	total := uint64(max(need.Total(), 0))
	// An image whose blobs the node has adds nothing, however full it is.
	if total > 0 && p.used+total > p.limit {
		err := &budgetError{need: need, left: p.limit - min(p.used, p.limit), free: p.free, capacity: p.capacity, budget: p.budget}
		p.held[i] = err
		return err
	}
	p.used += total
	p.log.Info("disk budget: room taken", "image", name, "need", mib(total), "how", needHow(need))
	return nil
}

// await returns once every image before the one named name has been
// decided. A pull through containerd's client awaits this before it
// starts: it asks for room while containerd's unpacker holds its lock on
// the manifest, and had it waited there for an earlier image that pulls
// the same manifest (by tag and by digest), neither would go on.
func (p *budgetPlan) await(ctx context.Context, name string) error {
	i, ok := p.index[name]
	if !ok {
		return nil
	}
	return p.awaitEarlier(ctx, name, i)
}

func (p *budgetPlan) awaitEarlier(ctx context.Context, name string, i int) error {
	logged := false
	for j := range i {
		select {
		case <-p.done[j]:
			continue
		default:
		}
		if !logged {
			p.log.Info("disk budget: waiting for the images before it to be decided", "image", name)
			logged = true
		}
		select {
		case <-p.done[j]:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// settle marks the image named name decided without room, if its pull
// ended before it asked (a failure before the manifest, an unknown size),
// so that later images do not wait for it.
func (p *budgetPlan) settle(name string) {
	i, ok := p.index[name]
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done[i]:
	default:
		close(p.done[i])
	}
}

// budgetError is an image held back by the disk budget.
type budgetError struct {
	need                 noderuntime.DiskNeed
	left, free, capacity uint64
	budget               config.Budget
}

func (e *budgetError) Error() string {
	return fmt.Sprintf("needs about %s on disk (%s), and %s is left of %s before the budget (image GC at %d%%, eviction below %s free; %s was free when the run began)",
		mib(uint64(max(e.need.Total(), 0))), needHow(e.need), mib(e.left), mib(e.capacity),
		e.budget.ImageGCHighThresholdPercent, e.budget.ImagefsAvailable, mib(e.free))
}

// needHow says what need is made of, and where its unpacked size comes
// from: told by the layers (their gzip trailers, or uncompressed) or
// estimated from their compressed size.
func needHow(n noderuntime.DiskNeed) string {
	s := fmt.Sprintf("%s of blobs, %s unpacked", mib(uint64(max(n.Download, 0))), mib(uint64(max(n.Unpacked, 0))))
	switch {
	case n.Layers == 0:
		return s
	case n.Told == n.Layers:
		return s + " as its layers tell"
	case n.Told == 0:
		return fmt.Sprintf("%s, estimated at %d times the compressed size", s, noderuntime.UnpackFactor)
	}
	return fmt.Sprintf("%s: told by %d of %d layers, the others estimated at %d times their compressed size", s, n.Told, n.Layers, noderuntime.UnpackFactor)
}

// Reason: an image that would take the image filesystem past the budget
// is held back, not pulled.
func (e *budgetError) Reason() failure.Reason { return failure.DiskBudget }

// estimateAndReserve decides ref's room before a pull through the CRI,
// which gives no hook between manifest and layers: from its manifest and
// layer trailers, asked with the pull's credentials. An image
// whose size cannot be told is not held back; its pull says why it fails,
// if it does. name is the image (or its mirror's name) in the plan; ref
// is what is pulled, which verify pins to a digest.
func (e *Engine) estimateAndReserve(ctx context.Context, p *budgetPlan, name, ref string, auth *runtimeapi.AuthConfig) error {
	n, err := e.budgeter().PullNeed(ctx, ref, auth)
	if err != nil {
		p.settle(name)
		return nil
	}
	return p.reserve(ctx, name, n)
}

type budgetKey struct{}

// withBudget carries a run's budget to its pulls; nil: none.
func withBudget(ctx context.Context, p *budgetPlan) context.Context {
	if p == nil {
		return ctx
	}
	return context.WithValue(ctx, budgetKey{}, p)
}

func budgetFrom(ctx context.Context) *budgetPlan {
	p, _ := ctx.Value(budgetKey{}).(*budgetPlan)
	return p
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
