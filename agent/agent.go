// Package agent is `preloader agent`: it keeps one node's images present as
// the agent's ConfigMap says, and reports on its own Node object.
//
// Everything that decides or writes runs in one goroutine, the sync loop.
// Informers only wake it up (a channel of one, so bursts coalesce), and a
// timer wakes it every resync or, after a failure, on an exponential backoff.
// At rest a sync costs one CRI ListImages and nothing else: no ImageStatus,
// no API request.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/kube-preloader/kube-preloader/credprovider"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/waves"
)

// ConfigKey is the ConfigMap key that holds the config.
const ConfigKey = "images.yaml"

// DefaultMetricsAddr is where `preloader agent` serves /metrics, /healthz
// and /readyz unless told otherwise, as manifests/base/daemonset.yaml sets it:
// the agent runs on the host network, and 9741 is clear of the kubelet
// (10248, 10250), node-exporter (9100) and the usual 8080 and 9090.
const DefaultMetricsAddr = ":9741"

// Event reasons, stable for `kubectl get events --field-selector reason=…`.
const (
	ReasonInvalidConfig      = "InvalidConfig"
	ReasonConfigMissing      = "ConfigMapMissing"
	ReasonImagesReady        = "ImagesReady"
	ReasonPreloadFailed      = failure.EventReason // the image's failure.Reason is in the message
	ReasonRuntimeUnavailable = "RuntimeUnavailable"
	ReasonSandboxUnknown     = "SandboxImageUnknown"
	ReasonKubeletRefuses     = "KubeletRefusesImages"
	ReasonImagesPruned       = "ImagesPruned"
)

// Options configure an Agent.
type Options struct {
	// Client talks to the API server.
	Client kubeapi.Interface
	// Store is this node's container runtime.
	Store noderuntime.Store
	// Namespace and ConfigMap name the agent's ConfigMap. The namespace is
	// also where pullSecrets and serviceAccounts are looked up.
	Namespace string
	ConfigMap string
	// NodeName is the Node the agent preloads for and reports on.
	NodeName string
	// MetricsAddr, if not empty, is where Run serves /metrics, /healthz and
	// /readyz. Handler serves the same without a listener.
	MetricsAddr string
	// KubeletConfig and KubeletConfigDir are the node kubelet's --config
	// and --config-dir as the agent sees them, read every sync for its
	// credential verification policy (KEP-2535). Empty KubeletConfig: the
	// policy is not read and status does not show it.
	KubeletConfig    string
	KubeletConfigDir string
	// TaintKey is the key of the taint the agent removes from its Node once
	// the node is ready (it never adds one); empty:
	// nodestatus.TaintNotReady. A key with a cluster-autoscaler
	// startup-taint prefix makes it a taint the autoscaler expects to go.
	TaintKey string
	// CredentialProviders are the node kubelet's credential provider
	// plugins, asked after the image's pull Secrets as the kubelet asks
	// them after a pod's; nil: none.
	CredentialProviders *credprovider.Plugins
	// Log receives the agent's logs; nil discards them.
	Log *slog.Logger
}

// Agent keeps one node's images present. Create it with New, start it
// with Run.
type Agent struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	creds   credentials
	// tokens are the service account tokens of credential providers with
	// tokenAttributes.
	tokens *saTokens
	cmKey  string // namespace/name of the ConfigMap in its informer's store
	// taintKey is the taint the agent removes once ready.
	taintKey string

	informers  []cache.SharedIndexInformer
	configMaps cache.SharedIndexInformer
	nodes      cache.SharedIndexInformer

	// wake asks the sync loop for a sync; a buffer of one coalesces any
	// number of changes that arrive while a sync runs into one more sync.
	wake chan struct{}

	// recorder is set by Run before any sync.
	recorder record.EventRecorder

	// pending is the view of the Node that our last patch produced, until
	// the node informer shows it: the sync loop trusts it over a cache
	// that has not caught up, and the node handler recognises the echo of
	// our own write instead of waking a sync for it.
	pending atomic.Pointer[pendingWrite]
	// lastWriteAt is when the agent last wrote its Node (Unix ns), which
	// spaces the writes that show progress.
	lastWriteAt atomic.Int64

	// pulls is every run's pulls in flight, for the progress the status
	// shows.
	pulls *preload.Pulls

	// configLoaded and runtimeOK feed /readyz.
	configLoaded atomic.Bool
	runtimeOK    atomic.Bool

	started atomic.Bool
	syncs   atomic.Int64 // syncs started, for tests
	// onSynced, if set, is called by the sync loop after each sync: tests
	// read counters there, knowing no sync runs meanwhile.
	onSynced func()
	// testResync, if set, replaces the config's resync, which the config
	// bounds to at least a second.
	testResync time.Duration
	// rollout coordinates this agent's registry pulls with the other
	// nodes' through Leases. Only the sync loop uses it.
	rollout *waves.Rollout

	state syncState // owned by the sync loop
}

// New checks opts and sets up the informers; nothing runs until Run.
func New(opts Options) (*Agent, error) {
	switch {
	case opts.Client == nil:
		return nil, errors.New("agent: Options.Client is required")
	case opts.Store == nil:
		return nil, errors.New("agent: Options.Store is required")
	case opts.Namespace == "" || opts.ConfigMap == "":
		return nil, errors.New("agent: Options.Namespace and Options.ConfigMap are required")
	case opts.NodeName == "":
		return nil, errors.New("agent: Options.NodeName is required")
	}
	if opts.TaintKey == "" {
		opts.TaintKey = nodestatus.TaintNotReady
	}
	if err := nodestatus.CheckTaintKey(opts.TaintKey); err != nil {
		return nil, fmt.Errorf("agent: taint key: %w", err)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		opts:     opts,
		log:      log.With("node", opts.NodeName),
		metrics:  newMetrics(opts.Store),
		cmKey:    opts.Namespace + "/" + opts.ConfigMap,
		taintKey: opts.TaintKey,
		wake:     make(chan struct{}, 1),
		pulls:    &preload.Pulls{},
	}
	a.rollout = &waves.Rollout{Leases: opts.Client.Leases(opts.Namespace), Nodes: opts.Client.Nodes(), Identity: opts.NodeName, Log: a.log}

	// The ConfigMap and the Node are each watched alone (a field selector
	// on the name, so a node in a big cluster receives nothing but its own
	// object), Secrets and ServiceAccounts across the namespace; Secrets
	// of other namespaces one by one, as the config names them
	// (secretWatches).
	byName := func(name string) func(*metav1.ListOptions) {
		return func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}
	}
	c := opts.Client
	a.configMaps = kubeapi.NewInformer(c, c.ConfigMaps(opts.Namespace), &corev1.ConfigMap{}, byName(opts.ConfigMap))
	a.nodes = kubeapi.NewInformer(c, c.Nodes(), &corev1.Node{}, byName(opts.NodeName))
	secrets := kubeapi.NewInformer(c, c.Secrets(opts.Namespace), &corev1.Secret{}, nil)
	serviceAccounts := kubeapi.NewInformer(c, c.ServiceAccounts(opts.Namespace), &corev1.ServiceAccount{}, nil)
	a.informers = []cache.SharedIndexInformer{a.configMaps, a.nodes, secrets, serviceAccounts}
	a.creds = credentials{
		namespace:       opts.Namespace,
		secrets:         corelisters.NewSecretLister(secrets.GetIndexer()),
		serviceAccounts: corelisters.NewServiceAccountLister(serviceAccounts.GetIndexer()),
		elsewhere:       &secretWatches{client: c, wake: a.Wake, log: a.log},
	}
	a.tokens = &saTokens{client: c, namespace: opts.Namespace, serviceAccounts: a.creds.serviceAccounts, now: time.Now}

	// The name filters repeat the field selectors: they cost nothing and
	// keep the agent right where a List ignores field selectors (fake
	// clientsets do).
	wake := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.Wake() },
		UpdateFunc: func(any, any) { a.Wake() },
		DeleteFunc: func(any) { a.Wake() },
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{a.configMaps, cache.FilteringResourceEventHandler{FilterFunc: hasKey(a.cmKey), Handler: wake}},
		{a.nodes, cache.FilteringResourceEventHandler{FilterFunc: hasKey(opts.NodeName), Handler: cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { a.Wake() },
			UpdateFunc: func(oldObj, newObj any) {
				o, ok1 := oldObj.(*corev1.Node)
				n, ok2 := newObj.(*corev1.Node)
				if !ok1 || !ok2 || a.nodeChanged(o, n) {
					a.Wake()
				}
			},
			DeleteFunc: func(any) { a.Wake() },
		}}},
		// Any Secret or ServiceAccount change may fix an image that failed
		// for want of credentials; at rest the resulting sync costs one
		// ListImages, so there is no point in working out which ones matter.
		{secrets, wake},
		{serviceAccounts, wake},
	}
	for _, h := range handlers {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			return nil, fmt.Errorf("agent: informer handler: %w", err)
		}
	}
	return a, nil
}

// hasKey filters informer events to the object with the given store key,
// including deletions whose final state is unknown.
func hasKey(key string) func(any) bool {
	return func(obj any) bool {
		k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		return err == nil && k == key
	}
}

// Wake asks for a sync as soon as the current one, if any, is done.
func (a *Agent) Wake() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Run watches the ConfigMap, the Node, Secrets and ServiceAccounts and keeps
// the node's images present until ctx ends. It returns nil when ctx ends,
// an error only when it cannot start (such as a metrics address in use).
//
// A config change while a sync runs does not cancel it: the sync is
// bounded (one attempt per image, each within pullTimeout), cancelling
// would throw away partial downloads, and a ConfigMap edited often could
// otherwise starve pulls for good. The change is picked up by a sync that
// starts as soon as the running one ends. Only ctx cancels pulls.
func (a *Agent) Run(ctx context.Context) error {
	if !a.started.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}

	var lis net.Listener
	if a.opts.MetricsAddr != "" {
		var err error
		if lis, err = net.Listen("tcp", a.opts.MetricsAddr); err != nil {
			return fmt.Errorf("metrics address: %w", err)
		}
	}

	// The broadcaster is shut down last, once the sync loop, the only
	// source of Events, has returned; the informers stop with runCtx,
	// whose deferred cancel runs before the Shutdowns that wait for them.
	broadcaster := record.NewBroadcaster()
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(kubeapi.EventSink(a.opts.Client))
	a.recorder = broadcaster.NewRecorder(kubeapi.Scheme, corev1.EventSource{Component: "preloader", Host: a.opts.NodeName})

	var informers sync.WaitGroup
	defer informers.Wait()
	defer a.creds.elsewhere.running.Wait()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	if lis != nil {
		srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("metrics server stopped", "err", err)
			}
		}()
		defer srv.Close()
		a.log.Info("serving metrics", "addr", lis.Addr().String())
	}

	synced := make([]cache.InformerSynced, len(a.informers))
	for i, inf := range a.informers {
		informers.Go(func() { inf.RunWithContext(runCtx) })
		synced[i] = inf.HasSynced
	}
	a.log.Info("waiting for the API server", "configmap", a.cmKey)
	if !cache.WaitForCacheSync(runCtx.Done(), synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("informers did not sync")
	}
	a.log.Info("started", "configmap", a.cmKey, "runtime", a.opts.Store.Facts().Name)
	a.loop(runCtx)
	a.log.Info("stopped")
	return nil
}

// loop runs syncs one at a time: at once, whenever woken, and when the
// delay the last sync asked for has passed.
func (a *Agent) loop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		case <-timer.C:
		}
		// Since Go 1.23 Reset and Stop leave no stale tick in timer.C.
		if next := a.sync(ctx); next > 0 {
			timer.Reset(next)
		} else {
			timer.Stop()
		}
		if a.onSynced != nil {
			a.onSynced()
		}
	}
}
