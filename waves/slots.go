// Package waves bounds how many nodes of a cluster pull from registries at
// once: each agent holds one of N coordination.k8s.io/v1 Leases, its slot,
// while it pulls, and nothing else coordinates them (no controller).
//
// A slot is a Lease named preloader-slot-I (I from 0 to N-1) in the agent's
// namespace whose spec.holderIdentity is the node holding it. The holder
// renews it every RenewEvery while its pulls run and clears the holder
// when they end; a holder that dies stops renewing, and after
// LeaseDuration anyone may take the slot. Taking one is an Update (or a
// Create) against the resourceVersion just read, so two nodes racing for
// one slot cannot both win: the API server refuses the second with a
// conflict.
//
// Rollout is one agent's side of it: the first nodes of an image new to
// the cluster (First), the slots (Slots), and the count of nodes behind a
// percentage.
package waves

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/kubeapi"
)

// SlotPrefix starts every slot Lease's name; LabelKind marks the Leases of
// the preloader by kind, so that waiting agents list only slots.
const (
	SlotPrefix = "preloader-slot-"
	LabelKind  = "preloader.io/lease"
	KindSlot   = "slot"
)

// Defaults: a dead holder's slot frees after 15 s, renewed every 5 s so that
// two renewals may fail (an API server restart) before the slot lapses.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewEvery    = 5 * time.Second
	// PollRate is what all the agents waiting for a slot together ask of
	// the API server, lists per second: each polls every nodes/PollRate
	// seconds (jittered, at least MinPoll, at most MaxPoll), so the rate
	// does not grow with the cluster until MaxPoll caps the interval.
	PollRate       = 5.0
	DefaultMinPoll = 2 * time.Second
	MaxPoll        = 5 * time.Minute
)

// Leases is the Lease API of one namespace.
type Leases = kubeapi.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]

// Size tells how many slots there are now, and of how many nodes (the
// population that may be waiting, which sets the poll interval).
type Size func(ctx context.Context) (slots, nodes int, err error)

// Slots hands out this node's slot. The zero durations take the defaults.
type Slots struct {
	Leases   Leases
	Identity string // the node's name, as the Lease's holderIdentity
	Size     Size

	LeaseDuration time.Duration
	RenewEvery    time.Duration
	MinPoll       time.Duration
	Log           *slog.Logger
}

// Held is a slot this node holds until Release, or until the context it was
// acquired with ends (then it lapses after the lease duration).
type Held struct {
	Name   string
	Waited time.Duration

	s      *Slots
	stop   context.CancelFunc
	done   chan struct{}
	lease  *coordinationv1.Lease // the last version written; owned by renew until done
	lostAt time.Time
}

func (s *Slots) defaults() (lease, renew, minPoll time.Duration, log *slog.Logger) {
	lease, renew, minPoll, log = s.LeaseDuration, s.RenewEvery, s.MinPoll, s.Log
	if lease <= 0 {
		lease = DefaultLeaseDuration
	}
	if renew <= 0 {
		renew = min(DefaultRenewEvery, lease/3)
	}
	if minPoll <= 0 {
		minPoll = DefaultMinPoll
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return
}

// SlotName is the Lease of slot i.
func SlotName(i int) string { return SlotPrefix + strconv.Itoa(i) }

// slotIndex is the i of a slot Lease's name; -1 for any other name.
func slotIndex(name string) int {
	s, ok := strings.CutPrefix(name, SlotPrefix)
	if !ok {
		return -1
	}
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 || SlotName(i) != name {
		return -1
	}
	return i
}

// Acquire waits until this node holds a slot and keeps it renewed until
// Release or until ctx ends; it returns an error only when ctx ends. API
// errors are logged and waited out: pulling anyway while the API server
// is away would let every node at the registry at once. The wait is a poll of the slot Leases (one
// List each round), jittered and sized to the cluster: see PollRate.
func (s *Slots) Acquire(ctx context.Context) (*Held, error) {
	leaseDur, _, minPoll, log := s.defaults()
	start := time.Now()
	logged := false
	for {
		slots, nodes, err := s.Size(ctx)
		var lease *coordinationv1.Lease
		next := time.Duration(-1)
		if err != nil {
			err = fmt.Errorf("counting nodes: %w", err)
		} else {
			lease, next, err = s.tryOnce(ctx, slots, leaseDur)
		}
		switch {
		case err != nil && ctx.Err() != nil:
			return nil, ctx.Err()
		case err != nil:
			// A failed list or write is one more reason to wait, not to
			// give up: the API server may be restarting.
			log.Warn("cannot take a pull slot; retrying", "err", err)
		case lease != nil:
			h := &Held{Name: lease.Name, Waited: time.Since(start), s: s, lease: lease, done: make(chan struct{})}
			var rctx context.Context
			rctx, h.stop = context.WithCancel(ctx)
			go h.renew(rctx)
			log.Info("holding a pull slot", "lease", lease.Name, "slots", slots, "waited", h.Waited.Round(time.Millisecond).String())
			return h, nil
		case next == 0:
			// Lost a race for a free slot: look again soon, after a
			// pause that lets a stale watch cache catch up and the
			// racers spread out.
			if err := sleep(ctx, rand.N(minPoll/4+1)); err != nil {
				return nil, err
			}
			continue
		}
		if !logged {
			logged = true
			log.Info("waiting for a pull slot", "slots", slots, "nodes", nodes)
		}
		wait := pollInterval(nodes, minPoll)
		if next > 0 && next < wait {
			wait = next // a slot lapses sooner than our turn to look
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// pollInterval is one waiter's delay: nodes/PollRate in [MinPoll, MaxPoll],
// drawn from [d/2, 3d/2) so that waiters spread out instead of polling in
// step after the same release.
func pollInterval(nodes int, minPoll time.Duration) time.Duration {
	d := time.Duration(float64(nodes) / PollRate * float64(time.Second))
	d = min(max(d, minPoll), MaxPoll)
	return d/2 + rand.N(d)
}

// tryOnce lists the slots and tries to take a free one. It returns the
// Lease taken; else, when all are held, how long until the first lapses
// (-1: none will by itself soon) or 0 when another node took the one we
// tried first, so that looking again is worth it at once.
func (s *Slots) tryOnce(ctx context.Context, slots int, leaseDur time.Duration) (*coordinationv1.Lease, time.Duration, error) {
	// ResourceVersion 0: from the API server's watch cache, not etcd. A
	// stale answer costs one conflict, never two holders.
	list, err := s.Leases.List(ctx, metav1.ListOptions{LabelSelector: LabelKind + "=" + KindSlot, ResourceVersion: "0"})
	if err != nil {
		return nil, -1, fmt.Errorf("listing slot leases: %w", err)
	}
	now := time.Now()
	byIndex := map[int]*coordinationv1.Lease{}
	for i := range list.Items {
		l := &list.Items[i]
		if idx := slotIndex(l.Name); idx >= 0 {
			byIndex[idx] = l
		}
	}
	var free []int
	next := time.Duration(-1)
	for i := range slots {
		l := byIndex[i]
		if l != nil && holder(l) == s.Identity {
			// Ours already: this agent restarted while holding it.
			free = []int{i}
			break
		}
		if left := remaining(l, now, leaseDur); left <= 0 {
			free = append(free, i)
		} else if next < 0 || left < next {
			next = left
		}
	}
	if len(free) == 0 {
		return nil, next, nil
	}
	// A random free slot, so that waiters who saw the same list mostly
	// try different ones.
	i := free[rand.N(len(free))]
	taken, err := s.take(ctx, byIndex[i], SlotName(i), leaseDur, now)
	switch {
	case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err):
		return nil, 0, nil
	case err != nil:
		return nil, -1, fmt.Errorf("taking slot %s: %w", SlotName(i), err)
	}
	return taken, 0, nil
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// remaining is how long l stays held: 0 or less if free or lapsed. The
// lease's own duration counts, so agents configured differently agree.
func remaining(l *coordinationv1.Lease, now time.Time, leaseDur time.Duration) time.Duration {
	if l == nil || holder(l) == "" || l.Spec.RenewTime == nil {
		return 0
	}
	d := leaseDur
	if l.Spec.LeaseDurationSeconds != nil {
		d = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	return l.Spec.RenewTime.Add(d).Sub(now)
}

// take makes this node the holder of slot name, from the version old that
// was read (nil: the Lease does not exist yet).
func (s *Slots) take(ctx context.Context, old *coordinationv1.Lease, name string, leaseDur time.Duration, now time.Time) (*coordinationv1.Lease, error) {
	id := s.Identity
	secs := int32(leaseDur / time.Second)
	t := metav1.NewMicroTime(now)
	if old == nil {
		return s.Leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{LabelKind: KindSlot, "app.kubernetes.io/name": "preloader"}},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: &id, LeaseDurationSeconds: &secs, AcquireTime: &t, RenewTime: &t,
			},
		}, metav1.CreateOptions{})
	}
	l := old.DeepCopy()
	if holder(l) != id {
		transitions := int32(0)
		if l.Spec.LeaseTransitions != nil {
			transitions = *l.Spec.LeaseTransitions
		}
		transitions++
		l.Spec.LeaseTransitions = &transitions
		l.Spec.AcquireTime = &t
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &id, &secs, &t
	return s.Leases.Update(ctx, l, metav1.UpdateOptions{})
}

// renew keeps the slot until ctx ends (Release, or the agent's end).
func (h *Held) renew(ctx context.Context) {
	defer close(h.done)
	leaseDur, every, _, log := h.s.defaults()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l, err := h.renewOnce(ctx, leaseDur)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errLost):
			// Not renewed within the lease duration, and another node
			// took it: the pulls go on (stopping them would waste what
			// they fetched), one node over the limit until they end.
			log.Warn("lost the pull slot to another node; pulls continue", "lease", h.Name)
			h.lostAt = time.Now()
			return
		case err != nil:
			log.Warn("cannot renew the pull slot", "lease", h.Name, "err", err)
		default:
			h.lease = l
		}
	}
}

var errLost = errors.New("slot taken by another node")

func (h *Held) renewOnce(ctx context.Context, leaseDur time.Duration) (*coordinationv1.Lease, error) {
	l := h.lease.DeepCopy()
	for range 3 {
		if holder(l) != h.s.Identity {
			return nil, errLost
		}
		now := metav1.NewMicroTime(time.Now())
		l.Spec.RenewTime = &now
		out, err := h.s.Leases.Update(ctx, l, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			return out, err
		}
		// Someone wrote it: read who holds it now.
		if l, err = h.s.Leases.Get(ctx, h.Name, metav1.GetOptions{}); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("renewing %s: conflicts", h.Name)
}

// Release stops renewing and frees the slot for the next node. ctx bounds
// the one write; the slot lapses by itself if it fails.
func (h *Held) Release(ctx context.Context) error {
	h.stop()
	<-h.done
	if !h.lostAt.IsZero() {
		return nil
	}
	l := h.lease.DeepCopy()
	for range 3 {
		if holder(l) != h.s.Identity {
			return nil
		}
		l.Spec.HolderIdentity = nil
		_, err := h.s.Leases.Update(ctx, l, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			if err != nil {
				return fmt.Errorf("releasing slot %s: %w", h.Name, err)
			}
			return nil
		}
		if l, err = h.s.Leases.Get(ctx, h.Name, metav1.GetOptions{}); err != nil {
			return fmt.Errorf("releasing slot %s: %w", h.Name, err)
		}
	}
	return fmt.Errorf("releasing slot %s: conflicts", h.Name)
}
