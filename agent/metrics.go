package agent

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kube-preloader/kube-preloader/preload"
)

// metrics live in the agent's own registry, so that two agents in one
// process (tests) do not collide and nothing else's metrics leak in.
type metrics struct {
	reg          *prometheus.Registry
	desired      prometheus.Gauge
	present      prometheus.Gauge
	pulls        *prometheus.CounterVec
	pullDuration prometheus.Histogram
	pruned       *prometheus.CounterVec
	lastSuccess  prometheus.Gauge
	slotHeld     prometheus.Gauge
	slotWait     prometheus.Histogram
}

// reasonCredentials is the pulls_total reason of an image not pulled for
// a missing or unusable Secret or ServiceAccount; its status reason names
// the object, which would make one series per name.
const reasonCredentials = "credentials"

func newMetrics() *metrics {
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
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "preloader_pulls_total",
			Help: "Pull attempts by result (pulled, failed) and failure reason.",
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
			Help: "Images that left the config, by what prune did: removed, would remove (dryRun), kept: in use, failed.",
		}, []string{"action"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "preloader_last_successful_sync_timestamp_seconds",
			Help: "When a sync last found every image that applies present (Unix time).",
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
	m.reg.MustRegister(m.desired, m.present, m.pulls, m.pullDuration, m.pruned, m.lastSuccess, m.slotHeld, m.slotWait,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// countPulls records the pulls of one run; images found present were not
// pulled and are not counted.
func (m *metrics) countPulls(results []preload.Result, blocked map[string]string) {
	for _, r := range results {
		switch {
		case r.Status == preload.StatusPulled:
			m.pulls.WithLabelValues("pulled", "").Inc()
			m.pullDuration.Observe(r.Duration.Seconds())
		case r.Status == preload.StatusFailed && r.Attempts > 0:
			reason := r.Reason
			if _, ok := blocked[r.Image]; ok {
				reason = reasonCredentials
			}
			m.pulls.WithLabelValues("failed", reason).Inc()
		}
	}
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
