// Package controller is `preloader controller`: the one cluster-level
// component. It derives the images of the workloads that images.yaml's
// `workloads:` section selects and publishes them in the key
// workloads.yaml of the agents' ConfigMap, so that the agents read one
// object and never watch the cluster's workloads themselves.
//
// The controller informs on the five workload kinds across the cluster,
// on its ConfigMap (by name) and, once a selection asks for pull secrets,
// on ServiceAccounts. Cluster-wide even when every selection names its
// namespaces: the selection changes with the ConfigMap, without a restart,
// and one watch per kind costs the API server less than one per kind and
// namespace. A change of any of them, debounced, recomputes the
// list; the key is written only when its bytes change, as a merge patch
// of that one key under its own field manager, so images.yaml and every
// other key stay as their owners (helm, `preloader warm`) wrote them. At
// rest it writes nothing.
package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// ConfigKey is the agents' config in their ConfigMap, where `workloads:` is.
const ConfigKey = "images.yaml"

// FieldManager owns workloads.yaml in the ConfigMap's managedFields.
const FieldManager = "preloader-controller"

// DefaultDebounce gathers the changes of a rollout (a Deployment and its
// status, several workloads applied together) into one write.
const DefaultDebounce = time.Second

// Client is the API the controller uses.
type Client interface {
	kubeapi.Interface
	kubeapi.Workloads
}

// Options configure a controller.
type Options struct {
	Client    Client
	Namespace string // the agents' ConfigMap's
	ConfigMap string
	Identity  string // this replica, the leader Lease's holderIdentity
	Log       *slog.Logger

	// Zero values take the defaults; tests shorten them.
	Debounce                              time.Duration
	LeaseDuration, RenewEvery, RetryEvery time.Duration
}

// Run elects a leader among the replicas and, while this one leads, keeps
// workloads.yaml in step. It returns when ctx ends (nil) or leadership is
// lost (ErrLostLeadership): the caller exits, and the replica restarts as
// a standby.
func Run(ctx context.Context, o Options) error {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	e := &Elector{
		Leases: o.Client.Leases(o.Namespace), Name: LeaseName, Identity: o.Identity,
		LeaseDuration: o.LeaseDuration, RenewEvery: o.RenewEvery, RetryEvery: o.RetryEvery, Log: o.Log,
	}
	err := e.Run(ctx, func(ctx context.Context) error { return newPublisher(o).run(ctx) })
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// publisher is the leader's work.
type publisher struct {
	o     Options
	log   *slog.Logger
	kick  chan struct{}
	cm    cache.SharedIndexInformer
	kinds []cache.SharedIndexInformer
	sa    cache.SharedIndexInformer // started once a selection has usePullSecrets

	lastBad  string // the last invalid images.yaml logged, so it is logged once
	selected bool   // the last config had a selection
}

func newPublisher(o Options) *publisher {
	return &publisher{o: o, log: o.Log, kick: make(chan struct{}, 1)}
}

func (s *publisher) run(ctx context.Context) error {
	c := s.o.Client
	s.cm = kubeapi.NewInformer(c, c.ConfigMaps(s.o.Namespace), &corev1.ConfigMap{}, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", s.o.ConfigMap).String()
	})
	s.kinds = []cache.SharedIndexInformer{
		kubeapi.NewInformer(c, c.Deployments(""), &appsv1.Deployment{}, nil),
		kubeapi.NewInformer(c, c.StatefulSets(""), &appsv1.StatefulSet{}, nil),
		kubeapi.NewInformer(c, c.DaemonSets(""), &appsv1.DaemonSet{}, nil),
		kubeapi.NewInformer(c, c.Jobs(""), &batchv1.Job{}, nil),
		kubeapi.NewInformer(c, c.CronJobs(""), &batchv1.CronJob{}, nil),
	}
	for _, inf := range append([]cache.SharedIndexInformer{s.cm}, s.kinds...) {
		if err := inf.SetTransform(slim); err != nil {
			return fmt.Errorf("informer: %w", err)
		}
		if _, err := inf.AddEventHandler(s.handler()); err != nil {
			return fmt.Errorf("informer: %w", err)
		}
		go inf.RunWithContext(ctx)
	}
	synced := []cache.InformerSynced{s.cm.HasSynced}
	for _, inf := range s.kinds {
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return ctx.Err()
	}
	s.log.Info("watching workloads", "configmap", s.o.Namespace+"/"+s.o.ConfigMap, "key", workloads.Key)

	debounce := s.o.Debounce
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	s.poke()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.kick:
		}
		// Let the rest of a burst arrive, then compute once.
		t := time.NewTimer(debounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		select {
		case <-s.kick:
		default:
		}
		if err := s.once(ctx); err != nil && ctx.Err() == nil {
			// A failed write is retried on the next change, and
			// after a pause, so an API server that is away is not
			// hammered.
			s.log.Warn("cannot publish the workloads' images; retrying", "err", err)
			go func() {
				select {
				case <-ctx.Done():
				case <-time.After(5 * debounce):
					s.poke()
				}
			}()
		}
	}
}

func (s *publisher) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// handler pokes the loop on every change that can change the list: not a
// workload's status, which moves all the time and changes no image, but
// a Job's end, which takes its images out.
func (s *publisher) handler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { s.poke() },
		UpdateFunc: func(old, cur any) {
			if changes(old, cur) {
				s.poke()
			}
		},
		DeleteFunc: func(any) { s.poke() },
	}
}

func changes(old, cur any) bool {
	o, ok1 := workloads.Of(old)
	c, ok2 := workloads.Of(cur)
	om, err1 := meta.Accessor(old)
	cm, err2 := meta.Accessor(cur)
	if !ok1 || !ok2 || err1 != nil || err2 != nil {
		return true // the ConfigMap, a ServiceAccount
	}
	return om.GetGeneration() == 0 || om.GetGeneration() != cm.GetGeneration() ||
		!maps.Equal(o.Labels, c.Labels) || o.Done != c.Done || o.Owned != c.Owned
}

// once computes the list and writes it if its bytes changed.
func (s *publisher) once(ctx context.Context) error {
	obj, ok, err := s.cm.GetStore().GetByKey(s.o.Namespace + "/" + s.o.ConfigMap)
	if err != nil || !ok {
		s.log.Warn("the ConfigMap does not exist; waiting for it", "configmap", s.o.Namespace+"/"+s.o.ConfigMap)
		return nil
	}
	cm := obj.(*corev1.ConfigMap)
	cfg, err := config.Parse(ConfigKey, []byte(cm.Data[ConfigKey]))
	if err != nil {
		// The agents report it (Events, status); the published list
		// stays as it was, as the agents keep their last good config.
		if msg := err.Error(); msg != s.lastBad {
			s.lastBad = msg
			s.log.Error("invalid "+ConfigKey+"; keeping "+workloads.Key+" as it is", "err", err)
		}
		return nil
	}
	s.lastBad = ""

	current, has := cm.Data[workloads.Key]
	if len(cfg.Workloads) == 0 {
		if s.selected {
			s.log.Info("no workloads selected; removing " + workloads.Key)
		}
		s.selected = false
		if !has {
			return nil
		}
		return s.patch(ctx, nil)
	}
	s.selected = true
	var sa func(ns, name string) *corev1.ServiceAccount
	if usesPullSecrets(cfg.Workloads) {
		if sa, err = s.serviceAccounts(ctx); err != nil {
			return err
		}
	}
	var ws []workloads.Workload
	for _, inf := range s.kinds {
		for _, obj := range inf.GetStore().List() {
			if w, ok := workloads.Of(obj); ok {
				ws = append(ws, w)
			}
		}
	}
	list := workloads.Derive(cfg.Workloads, ws, sa)
	data := workloads.Encode(list)
	if has && current == data {
		return nil
	}
	if err := s.patch(ctx, &data); err != nil {
		return err
	}
	s.log.Info("published the workloads' images", "key", workloads.Key, "images", len(list.Images))
	return nil
}

// patch sets the key to data (nil: removes it), and nothing else.
func (s *publisher) patch(ctx context.Context, data *string) error {
	body, err := json.Marshal(map[string]any{"data": map[string]*string{workloads.Key: data}})
	if err != nil {
		return err
	}
	_, err = s.o.Client.ConfigMaps(s.o.Namespace).Patch(ctx, s.o.ConfigMap, types.MergePatchType, body, metav1.PatchOptions{FieldManager: FieldManager})
	if err != nil {
		return fmt.Errorf("patching %s of ConfigMap %s/%s: %w", workloads.Key, s.o.Namespace, s.o.ConfigMap, err)
	}
	return nil
}

func usesPullSecrets(sel []config.Workload) bool {
	for _, w := range sel {
		if w.UsePullSecrets {
			return true
		}
	}
	return false
}

// serviceAccounts starts the ServiceAccount informer the first time a
// selection needs it, and returns its lookup.
func (s *publisher) serviceAccounts(ctx context.Context) (func(ns, name string) *corev1.ServiceAccount, error) {
	if s.sa == nil {
		c := s.o.Client
		s.sa = kubeapi.NewInformer(c, c.ServiceAccounts(""), &corev1.ServiceAccount{}, nil)
		if err := s.sa.SetTransform(slim); err != nil {
			return nil, err
		}
		if _, err := s.sa.AddEventHandler(s.handler()); err != nil {
			return nil, err
		}
		go s.sa.RunWithContext(ctx)
		if !cache.WaitForCacheSync(ctx.Done(), s.sa.HasSynced) {
			return nil, ctx.Err()
		}
	}
	store := s.sa.GetStore()
	return func(ns, name string) *corev1.ServiceAccount {
		obj, ok, err := store.GetByKey(ns + "/" + name)
		if err != nil || !ok {
			return nil
		}
		return obj.(*corev1.ServiceAccount)
	}, nil
}

// slim drops what the controller never reads before an object is cached:
// managed fields, annotations (kubectl's last-applied copy of the whole
// object among them) and status are most of a workload's size. A Job keeps
// its conditions, which say whether it ended.
func slim(obj any) (any, error) {
	if _, cm := obj.(*corev1.ConfigMap); cm {
		obj.(*corev1.ConfigMap).ManagedFields = nil
		return obj, nil
	}
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
		m.SetAnnotations(nil)
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		o.Status = appsv1.DeploymentStatus{}
	case *appsv1.StatefulSet:
		o.Status = appsv1.StatefulSetStatus{}
	case *appsv1.DaemonSet:
		o.Status = appsv1.DaemonSetStatus{}
	case *batchv1.CronJob:
		o.Status = batchv1.CronJobStatus{}
	case *batchv1.Job:
		o.Status = batchv1.JobStatus{Conditions: o.Status.Conditions}
	}
	return obj, nil
}
