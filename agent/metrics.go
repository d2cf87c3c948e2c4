package agent

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
)

// metrics live in the agent's own registry, so that two agents in one
// process (tests) do not collide and nothing else's metrics leak in.
//
// No metric has an image label, and every label takes its values from a
// closed set (failure.Labels, PruneActions): a node's series count does not
// grow with its config, so a fleet's is nodes × a constant. The node is
// the scrape target (its instance), never a label of the agent's own.
type metrics struct {
	reg          *prometheus.Registry
	desired      prometheus.Gauge
	present      prometheus.Gauge
	failed       prometheus.Gauge
	pulls        *prometheus.CounterVec
	pullDuration prometheus.Histogram
	pruned       *prometheus.CounterVec
	lastSuccess  prometheus.Gauge
	syncDuration prometheus.Gauge
	slotHeld     prometheus.Gauge
	slotWait     prometheus.Histogram
	// inFlight counts pulls by either way (CRI or containerd's client)
	// between their start and return; see countingStore.
	inFlight atomic.Int64
}

// pull results, the result label of preloader_pulls_total.
const (
	resultPulled = "pulled"
	resultFailed = "failed"
)

// PruneActions is every action label value of preloader_pruned_total,
// from preload's Prune actions (which read as prose in status).
var PruneActions = []string{"removed", "would_remove", "kept_in_use", "failed"}

var pruneLabels = map[string]string{
	preload.PruneRemoved:     "removed",
	preload.PruneWouldRemove: "would_remove",
	preload.PruneInUse:       "kept_in_use",
	preload.PruneFailed:      "failed",
}

func pruneAction(action string) string {
	if l, ok := pruneLabels[action]; ok {
		return l
	}
	return "failed" // an action preload does not define is not a removal
}

// newMetrics makes the agent's metrics; store's progress, where it has
// one (containerd), feeds the pull byte gauges when scraped.
func newMetrics(store noderuntime.Store) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		desired: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "preloader_images_desired",
			Help: "Images that apply to this node, the sandbox image included.",
		}),
		present: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "preloader_images_present",
			Help: "Images that apply to this node and are present in its runtime.",
		}),
		failed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "preloader_images_failed",
			Help: "Images that apply to this node and were not present after the last sync, for a failure (the node annotation's failed list).",
		}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "preloader_pulls_total",
			Help: "Pull attempts by result (pulled, failed) and, when failed, reason: unauthorized, not_found, network, registry, tls, timeout, no_space, disk_budget, credentials, runtime, invalid_reference, archive, unsupported, not_present, canceled, other.",
		}, []string{"result", "reason"}),
		pullDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "preloader_pull_duration_seconds",
			Help: "Duration of successful pulls.",
			// 0.25 s to about 34 min: from a cached layer to a huge image
			// over a slow mirror.
			Buckets: prometheus.ExponentialBuckets(0.25, 2, 14),
		}),
		pruned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "preloader_pruned_total",
			Help: "Images that left the config, by what prune did: removed, would_remove (dryRun), kept_in_use, failed.",
		}, []string{"action"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "preloader_last_successful_sync_timestamp_seconds",
			Help: "When a sync last found every image that applies present (Unix time); 0 until one has.",
		}),
		syncDuration: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "preloader_last_sync_duration_seconds",
			Help: "How long the last sync that checked every image took (pulls, imports, prune and the Node's update); a sync at rest, one ListImages, does not count.",
		}),
	}
	m.slotHeld = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "preloader_pull_slot_held",
		Help: "1 while this node holds a rollout pull slot (rollout.maxNodesPulling), else 0.",
	})
	m.slotWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "preloader_pull_slot_wait_seconds",
		Help: "How long this node waited for a rollout pull slot before pulling.",
		// 0.1 s to about 7 h: a slot free at once to the tail of a wave
		// across thousands of nodes.
		Buckets: prometheus.ExponentialBuckets(0.1, 2, 18),
	})

	// Every label value is exported from the start, so that a dashboard
	// has a series (at 0) before the first failure or prune.
	m.pulls.WithLabelValues(resultPulled, "")
	for _, l := range failure.Labels() {
		m.pulls.WithLabelValues(resultFailed, l)
	}
	for _, a := range PruneActions {
		m.pruned.WithLabelValues(a)
	}

	// Progress is read when scraped: atomics the pulls add to, so a node
	// that pulls nothing does nothing for these.
	progress := func() noderuntime.Transferred {
		if p, ok := store.(noderuntime.Transfers); ok {
			return p.Transferred()
		}
		return noderuntime.Transferred{}
	}
	inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "preloader_pulls_in_flight",
		Help: "Pulls running now, through the CRI or containerd's client.",
	}, func() float64 { return float64(m.inFlight.Load()) })
	bytesDone := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "preloader_pull_received_bytes",
		Help: "Bytes received so far by the pulls in flight on containerd: through its client, and through its CRI as its content store shows them. " +
			"On a runtime other than containerd this is always 0.",
	}, func() float64 { return float64(progress().Done) })
	bytesTotal := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "preloader_pull_expected_bytes",
		Help: "Bytes the pulls in flight on containerd have to receive (the blobs their manifests name that the node lacks). " +
			"A pull through the CRI counts once the CRI has its manifest; on a runtime other than containerd this is always 0.",
	}, func() float64 { return float64(progress().Total) })

	m.reg.MustRegister(m.desired, m.present, m.failed, m.pulls, m.pullDuration, m.pruned, m.lastSuccess, m.syncDuration,
		inFlight, bytesDone, bytesTotal, m.slotHeld, m.slotWait,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// countPulls records the pulls of one run; images found present were not
// pulled and are not counted.
func (m *metrics) countPulls(results []preload.Result) {
	for _, r := range results {
		switch {
		case r.Status == preload.StatusPulled:
			m.pulls.WithLabelValues(resultPulled, "").Inc()
			m.pullDuration.Observe(r.Duration.Seconds())
		case r.Status == preload.StatusFailed && r.Attempts > 0:
			m.pulls.WithLabelValues(resultFailed, r.Reason.Label()).Inc()
		}
	}
}

// countingStore counts the pulls in flight by either way of pulling.
type countingStore struct {
	noderuntime.Store
	n *atomic.Int64
}

func (s countingStore) PullImage(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	s.n.Add(1)
	defer s.n.Add(-1)
	return s.Store.PullImage(ctx, ref, auth)
}

func (s countingStore) PullDirect(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, maxDownloads int) error {
	s.n.Add(1)
	defer s.n.Add(-1)
	return s.Store.PullDirect(ctx, ref, auth, maxDownloads)
}

// Handler serves /metrics, /healthz (the process is alive) and /readyz
// (a config is loaded and the runtime answered in the last sync).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{Registry: a.metrics.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case !a.configLoaded.Load():
			http.Error(w, "no valid config loaded from ConfigMap "+a.cmKey, http.StatusServiceUnavailable)
		case !a.runtimeOK.Load():
			http.Error(w, "the last sync did not get through to the container runtime", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	return mux
}
