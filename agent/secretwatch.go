package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/tools/cache"

	"github.com/kube-preloader/kube-preloader/kubeapi"
)

// Denied watches are tried again after deniedRetryMin, doubling up to
// deniedRetryMax: a grant is picked up within minutes, and an agent of
// every node asking for a Secret it may not read costs the API server
// little. Variables, so that tests can shorten them.
var (
	deniedRetryMin = 30 * time.Second
	deniedRetryMax = 5 * time.Minute
)

// settleTimeout bounds how long a sync waits for new watches to list
// their Secret before it pulls without them (the images blocked, retried
// at the next sync).
const settleTimeout = 10 * time.Second

// secretWatches watches the Secrets of other namespaces that the config's
// images name ("NAMESPACE/NAME", from workload selections with
// usePullSecrets), each alone, by a metadata.name field selector: RBAC
// resourceNames then allow its list and watch, so the platform team
// grants each Secret by name and the agent reads nothing else there.
// Watches start when the config first needs a Secret and stop when it no
// longer does; at rest they cost no request.
type secretWatches struct {
	client kubeapi.Interface
	// wake asks for a sync when a watched Secret changes.
	wake func()
	log  *slog.Logger

	mu      sync.Mutex
	watches map[string]*secretWatch // by NAMESPACE/NAME
	// running counts the watches' goroutines, which end with the context
	// want was given: Run waits for them.
	running sync.WaitGroup
}

type secretWatch struct {
	ns, name string
	inf      cache.SharedIndexInformer
	stop     context.CancelFunc
	// settled is closed once the Secret was listed, or the list was
	// denied.
	settled    chan struct{}
	settleOnce sync.Once

	mu       sync.Mutex
	denied   error // the API server's refusal, nil if none
	deniedAt time.Time
	retry    time.Duration // the wait before trying a denied watch again
}

func (w *secretWatch) settle() { w.settleOnce.Do(func() { close(w.settled) }) }

// want makes the watches those of keys (NAMESPACE/NAME): it starts the
// missing ones, stops the others, and starts again a denied watch whose
// retry is due.
func (s *secretWatches) want(ctx context.Context, keys []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watches == nil {
		s.watches = map[string]*secretWatch{}
	}
	wanted := map[string]bool{}
	for _, k := range keys {
		wanted[k] = true
		w := s.watches[k]
		if w == nil {
			ns, name, _ := splitQualified(k)
			s.watches[k] = s.start(ctx, ns, name, deniedRetryMin)
			continue
		}
		w.mu.Lock()
		due := w.denied != nil && time.Since(w.deniedAt) >= w.retry
		retry := min(2*w.retry, deniedRetryMax)
		w.mu.Unlock()
		if due {
			s.watches[k] = s.start(ctx, w.ns, w.name, retry)
		}
	}
	for k, w := range s.watches {
		if !wanted[k] {
			w.stop()
			delete(s.watches, k)
			s.log.Info("stopped watching a workload pull secret", "secret", k)
		}
	}
}

// start runs the informer of one Secret; retry is the wait before it is
// tried again if the API server denies it.
func (s *secretWatches) start(ctx context.Context, ns, name string, retry time.Duration) *secretWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &secretWatch{ns: ns, name: name, stop: cancel, settled: make(chan struct{}), retry: retry}
	w.inf = kubeapi.NewInformer(s.client, s.client.Secrets(ns), &corev1.Secret{}, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
	})
	key := ns + "/" + name
	wake := func(any) { s.wake() }
	// The name filter repeats the field selector, for lists that ignore
	// field selectors (fake clientsets do).
	_, _ = w.inf.AddEventHandler(cache.FilteringResourceEventHandler{FilterFunc: hasKey(key), Handler: cache.ResourceEventHandlerFuncs{
		AddFunc:    wake,
		UpdateFunc: func(any, any) { s.wake() },
		DeleteFunc: wake,
	}})
	// A denied list is not retried by the informer's own backoff, which
	// would ask every 30 s from every node, but at the agent's pace.
	// Other errors are the informer's to retry. The errors name the
	// Secret, never its content.
	_ = w.inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		if !apierrors.IsForbidden(err) && !apierrors.IsUnauthorized(err) {
			s.log.Warn("cannot watch a workload pull secret", "secret", key, "err", err)
			return
		}
		w.mu.Lock()
		w.denied, w.deniedAt = err, time.Now()
		w.mu.Unlock()
		cancel()
		w.settle()
		s.log.Warn("may not read a workload pull secret", "secret", key, "retryIn", retry)
	})
	s.running.Go(func() { w.inf.RunWithContext(ctx) })
	s.running.Go(func() {
		if cache.WaitForCacheSync(ctx.Done(), w.inf.HasSynced) {
			w.settle()
		}
	})
	s.log.Info("watching a workload pull secret", "secret", key)
	return w
}

// wait waits, at most timeout, until every watch listed its Secret or was
// denied.
func (s *secretWatches) wait(ctx context.Context, timeout time.Duration) {
	s.mu.Lock()
	var settled []chan struct{}
	for _, w := range s.watches {
		settled = append(settled, w.settled)
	}
	s.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	for _, ch := range settled {
		select {
		case <-ch:
		case <-ctx.Done():
			return
		case <-t.C:
			return
		}
	}
}

// get returns the Secret NAMESPACE/NAME, or why it cannot: the problem
// names the Secret and, when the agent may not read it, what to grant.
func (s *secretWatches) get(ns, name string) (*corev1.Secret, string) {
	key := ns + "/" + name
	s.mu.Lock()
	w := s.watches[key]
	s.mu.Unlock()
	if w == nil {
		return nil, fmt.Sprintf("secret %s not watched", key) // want runs before every resolve
	}
	w.mu.Lock()
	denied := w.denied
	w.mu.Unlock()
	switch {
	case denied != nil:
		return nil, fmt.Sprintf("secret %s: forbidden to the agent; grant it with the chart value workloadPullSecrets: {%s: [%s]}, or a Role in %s allowing get, list and watch on this Secret (resourceNames) bound to the agent's ServiceAccount",
			key, ns, name, ns)
	case !w.inf.HasSynced():
		return nil, fmt.Sprintf("secret %s not read from the API server yet", key)
	}
	obj, ok, err := w.inf.GetStore().GetByKey(key)
	if err != nil || !ok {
		return nil, fmt.Sprintf("secret %s not found", key)
	}
	sec, ok := obj.(*corev1.Secret)
	if !ok {
		return nil, fmt.Sprintf("secret %s not found", key)
	}
	return sec, ""
}

// watching says whether any watch runs, so that a config that dropped
// the last Secret stops it.
func (s *secretWatches) watching() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.watches) > 0
}
