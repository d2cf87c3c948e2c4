package config

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Budget is how full the image filesystem may get: below the kubelet's
// image GC high threshold and above its imagefs.available eviction
// threshold, whichever is lower. The defaults are the kubelet's.
type Budget struct {
	ImageGCHighThresholdPercent int    // 85
	ImagefsAvailable            string // "15%", or a quantity such as 10Gi
	// Off (diskBudget: none): no budget; a full disk is the runtime's
	// to report (ENOSPC).
	Off bool
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

// Limit is the bytes in use the budget allows on a filesystem of
// capacity bytes.
func (b Budget) Limit(capacity uint64) uint64 {
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
