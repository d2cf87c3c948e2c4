package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/kubeapi"
)

// LeaseName is the controller's Lease, in its ConfigMap's namespace.
const LeaseName = "preloader-controller"

// Defaults of the election, as client-go's leader election sets them for
// the cluster's own controllers, scaled down: a dead leader is replaced
// after 15 s; the leader renews every 5 s, so that two renewals may fail
// before it gives up; a standby looks every 2 s.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewEvery    = 5 * time.Second
	DefaultRetryEvery    = 2 * time.Second
)

// ErrLostLeadership is what Elector.Run returns when another replica took
// the Lease or this one could not renew it in time: its work has been
// stopped, and the process should end so that it starts afresh as a
// standby.
var ErrLostLeadership = errors.New("lost leadership")

// Elector runs work in at most one of the replicas that share a Lease.
//
// A replica leads while it holds the Lease: spec.holderIdentity is its
// identity and it renews spec.renewTime. Every write is an Update (or a
// Create) against the resourceVersion just read, so two replicas racing
// cannot both win. A standby takes the Lease when its holder has not
// renewed it for the lease duration, measured on the standby's own clock
// from when it last saw the Lease change, so that clock skew between
// replicas does not matter.
type Elector struct {
	Leases   kubeapi.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
	Name     string // the Lease
	Identity string // this replica: its pod name

	// Zero durations take the defaults.
	LeaseDuration, RenewEvery, RetryEvery time.Duration
	Log                                   *slog.Logger

	observed     string // resourceVersion last seen
	observedTime time.Time
}

func (e *Elector) defaults() (lease, renew, retry time.Duration, log *slog.Logger) {
	lease, renew, retry, log = e.LeaseDuration, e.RenewEvery, e.RetryEvery, e.Log
	if lease <= 0 {
		lease = DefaultLeaseDuration
	}
	if renew <= 0 {
		renew = min(DefaultRenewEvery, lease/3)
	}
	if retry <= 0 {
		retry = min(DefaultRetryEvery, renew)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return
}

// Run waits until this replica leads, then runs work with a context that
// ends when leadership is lost. It returns work's error, ErrLostLeadership,
// or ctx's error when ctx ends first; on ctx's end a held Lease is
// released, so that a standby takes over at once instead of after the
// lease duration.
func (e *Elector) Run(ctx context.Context, work func(context.Context) error) error {
	leaseDur, renewEvery, retry, log := e.defaults()
	lease, err := e.acquire(ctx, leaseDur, retry, log)
	if err != nil {
		return err
	}
	log.Info("leading", "lease", e.Name, "identity", e.Identity)

	wctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	done := make(chan error, 1)
	go func() { done <- work(wctx) }()

	t := time.NewTicker(renewEvery)
	defer t.Stop()
	lastRenew := time.Now()
	for {
		select {
		case err := <-done:
			e.release(lease, log)
			return err
		case <-ctx.Done():
			<-done
			e.release(lease, log)
			return ctx.Err()
		case <-t.C:
		}
		l, err := e.renew(ctx, lease)
		switch {
		case ctx.Err() != nil:
			continue
		case errors.Is(err, ErrLostLeadership):
		case err != nil && time.Since(lastRenew) < leaseDur-retry:
			// The API server may be restarting; the Lease holds until
			// shortly before a standby may take it.
			log.Warn("cannot renew the leader Lease; retrying", "lease", e.Name, "err", err)
			continue
		case err != nil:
			err = fmt.Errorf("%w: not renewed for %s: %w", ErrLostLeadership, time.Since(lastRenew).Round(time.Second), err)
		default:
			lease, lastRenew = l, time.Now()
			continue
		}
		stop(err)
		<-done
		log.Error("lost leadership; stopping", "lease", e.Name, "err", err)
		return err
	}
}

// acquire polls the Lease every retry until this replica holds it.
func (e *Elector) acquire(ctx context.Context, leaseDur, retry time.Duration, log *slog.Logger) (*coordinationv1.Lease, error) {
	waiting := false
	for {
		l, err := e.tryAcquire(ctx, leaseDur)
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case err != nil:
			log.Warn("cannot read or take the leader Lease; retrying", "lease", e.Name, "err", err)
		case l != nil:
			return l, nil
		case !waiting:
			waiting = true
			log.Info("standing by: another replica leads", "lease", e.Name)
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// tryAcquire takes the Lease if it is free, lapsed or already ours; nil
// without an error when another replica holds it.
func (e *Elector) tryAcquire(ctx context.Context, leaseDur time.Duration) (*coordinationv1.Lease, error) {
	now := time.Now()
	old, err := e.Leases.Get(ctx, e.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		l, err := e.Leases.Create(ctx, e.hold(nil, leaseDur, now), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil, nil
		}
		return l, err
	case err != nil:
		return nil, err
	}
	if old.ResourceVersion != e.observed {
		e.observed, e.observedTime = old.ResourceVersion, now
	}
	if h := holder(old); h != "" && h != e.Identity && now.Before(e.observedTime.Add(duration(old, leaseDur))) {
		return nil, nil
	}
	l, err := e.Leases.Update(ctx, e.hold(old, leaseDur, now), metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return nil, nil // another replica wrote it first
	}
	return l, err
}

// hold is old (nil: a new Lease) held by this replica from now.
func (e *Elector) hold(old *coordinationv1.Lease, leaseDur time.Duration, now time.Time) *coordinationv1.Lease {
	id := e.Identity
	secs := int32(leaseDur / time.Second)
	t := metav1.NewMicroTime(now)
	if old == nil {
		return &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: e.Name, Labels: map[string]string{"app.kubernetes.io/name": "preloader"}},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &id, LeaseDurationSeconds: &secs, AcquireTime: &t, RenewTime: &t},
		}
	}
	l := old.DeepCopy()
	if holder(l) != id {
		n := int32(1)
		if l.Spec.LeaseTransitions != nil {
			n += *l.Spec.LeaseTransitions
		}
		l.Spec.LeaseTransitions, l.Spec.AcquireTime = &n, &t
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &id, &secs, &t
	return l
}

// renew writes a new renewTime on the version last written. A conflict
// means someone else wrote the Lease: read who holds it now.
func (e *Elector) renew(ctx context.Context, lease *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	l := lease.DeepCopy()
	for range 3 {
		if h := holder(l); h != e.Identity {
			return nil, fmt.Errorf("%w: %q holds the Lease", ErrLostLeadership, h)
		}
		now := metav1.NewMicroTime(time.Now())
		l.Spec.RenewTime = &now
		out, err := e.Leases.Update(ctx, l, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			return out, err
		}
		if l, err = e.Leases.Get(ctx, e.Name, metav1.GetOptions{}); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("renewing %s: conflicts", e.Name)
}

// release clears the holder so that a standby need not wait out the lease
// duration. Best effort: the Lease lapses by itself if it fails.
func (e *Elector) release(lease *coordinationv1.Lease, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l := lease.DeepCopy()
	l.Spec.HolderIdentity = nil
	if _, err := e.Leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		log.Warn("cannot release the leader Lease; it lapses by itself", "lease", e.Name, "err", err)
		return
	}
	log.Info("released the leader Lease", "lease", e.Name)
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func duration(l *coordinationv1.Lease, def time.Duration) time.Duration {
	if l.Spec.LeaseDurationSeconds != nil {
		return time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	return def
}
