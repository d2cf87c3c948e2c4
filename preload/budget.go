package preload

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/api/resource"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// ReasonDiskBudget is the reason of an image not pulled because it would
// take the image filesystem past the budget.
const ReasonDiskBudget = "disk budget"

// unpackFactor is the estimate of an image's unpacked layers against
// their compressed size: a manifest gives only the latter, and gzip
// layers of real images commonly unpack to about twice it. An image's
// estimate on disk is its compressed blobs (kept in the content store)
// and their unpacked layers (the snapshots): three times what it
// downloads.
const unpackFactor = 2

// Budget is how full the image filesystem may get: below the kubelet's
// image GC high threshold and above its imagefs.available eviction
// threshold, whichever is lower. The defaults are the kubelet's.
type Budget struct {
	ImageGCHighThresholdPercent int    // 85
	ImagefsAvailable            string // "15%", or a quantity such as 10Gi
	// Set says which values the config gave; the others may come from
	// the node kubelet's config (WithKubelet).
	setHigh, setAvailable bool
}

// DefaultBudget is the kubelet's defaults.
func DefaultBudget() Budget { return Budget{ImageGCHighThresholdPercent: 85, ImagefsAvailable: "15%"} }

// WithKubelet returns b with what the config left unset taken from the
// kubelet's own thresholds, where it set them.
func (b Budget) WithKubelet(high int, available string) Budget {
	if !b.setHigh && high > 0 {
		b.ImageGCHighThresholdPercent = high
	}
	if !b.setAvailable && available != "" {
		if _, err := parseAvailable(available); err == nil {
			b.ImagefsAvailable = available
		}
	}
	return b
}

// limit is the bytes in use the budget allows on a filesystem of
// capacity bytes.
func (b Budget) limit(capacity uint64) uint64 {
	byGC := capacity / 100 * uint64(b.ImageGCHighThresholdPercent)
	avail, _ := parseAvailable(b.ImagefsAvailable)
	keep := avail(capacity)
	if keep >= capacity {
		return 0
	}
	return min(byGC, capacity-keep)
}

// parseAvailable reads "15%" or a quantity into the bytes it keeps free
// of a filesystem of a given capacity.
func parseAvailable(s string) (func(capacity uint64) uint64, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || f < 0 || f > 100 {
			return nil, fmt.Errorf("%q is not a percentage", s)
		}
		return func(c uint64) uint64 { return uint64(float64(c) * f / 100) }, nil
	}
	q, err := resource.ParseQuantity(s)
	if err != nil || q.Sign() < 0 {
		return nil, fmt.Errorf("%q is neither a percentage nor a quantity such as 10Gi", s)
	}
	v := uint64(q.Value())
	return func(uint64) uint64 { return v }, nil
}

// sizing is how many PullSize calls run at once.
const sizing = 8

// planBudget decides, before any pull starts, which of pulls fit the disk
// budget: each image's estimate (its manifest, downloads only) is added
// in config order, so that an earlier image always has its room before a
// later one, and an image that would take the filesystem past the budget
// is held back with its reason. Where the runtime cannot say sizes or
// free space, nothing is held back and the log says why.
func (e *Engine) planBudget(ctx context.Context, cfg *Config, pulls []Image) map[string]Result {
	if len(pulls) == 0 {
		return nil
	}
	if err := e.Store.Can(noderuntime.OpBudget); err != nil {
		e.log().Info("disk budget not applied", "reason", err)
		return nil
	}
	fs, err := e.Store.ImageFs(ctx)
	if err != nil {
		e.log().Warn("disk budget not applied", "err", err)
		return nil
	}
	limit := cfg.DiskBudget.limit(fs.Capacity)
	used := fs.Capacity - fs.Available
	sizes := e.pullSizes(ctx, pulls)
	held := make(map[string]Result)
	for i, img := range pulls {
		if sizes[i] < 0 {
			continue // unknown: the pull says why, if it fails
		}
		need := uint64(sizes[i]) * (1 + unpackFactor)
		if used+need > limit {
			left := uint64(0)
			if limit > used {
				left = limit - used
			}
			err := fmt.Errorf("needs about %s on disk, and %s is left of %s before the budget (image GC at %d%%, eviction below %s free)",
				mib(need), mib(left), mib(fs.Capacity), cfg.DiskBudget.ImageGCHighThresholdPercent, cfg.DiskBudget.ImagefsAvailable)
			held[img.Name] = Result{Image: img.Name, Status: StatusFailed, Reason: ReasonDiskBudget, Error: err.Error()}
			e.log().Warn("image held back by the disk budget", "image", img.Name, "err", err)
			continue
		}
		used += need
	}
	return held
}

// pullSizes asks for the download size of each image, sizing at once; -1
// where it could not be told.
func (e *Engine) pullSizes(ctx context.Context, images []Image) []int64 {
	sizes := make([]int64, len(images))
	sem := make(chan struct{}, sizing)
	var wg sync.WaitGroup
	for i, img := range images {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			var auths []*runtimeapi.AuthConfig
			if e.Auth != nil {
				auths = e.Auth(img)
			}
			sizes[i] = -1
			for _, auth := range append(auths, nil) {
				if n, err := e.Store.PullSize(ctx, img.Name, auth); err == nil {
					sizes[i] = n
					return
				}
			}
		})
	}
	wg.Wait()
	return sizes
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
