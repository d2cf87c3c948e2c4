package containerd

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"golang.org/x/sync/semaphore"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Option configures a Client.
type Option func(*Client)

// WithRegistryConfigPath makes pulls use the registry host configuration
// the CRI plugin uses: its config_path, directories separated by colons,
// each holding <host>/hosts.toml (mirrors, CAs, skip_verify). Without it,
// each registry is reached directly, as containerd does by default.
func WithRegistryConfigPath(path string) Option {
	return func(c *Client) { c.hostRoots = filepath.SplitList(path) }
}

// Pull pulls ref from its registry through the containerd client, as the
// CRI plugin's own local pull does (client.Pull, unpacked into the CRI's
// snapshotter, the node's hosts.toml, the pull's credentials for whichever
// host serves it), and records it as the CRI records its pulls: the
// reference, its repository at the manifest's digest and the image ID, each
// labelled managed by the CRI. So the kubelet cannot tell it from a CRI pull.
//
// Layer downloads of every Pull of this client share maxDownloads slots,
// unlike the runtime's limit for CRI pulls (containerd 2.x: 3 for the whole
// node; 1.6: 3 per image). A layer that concurrent pulls share is fetched
// and unpacked once while the others wait for it.
//
// The pull runs under a lease: an interrupted pull records no image, and
// its partial content goes to containerd's garbage collector. While it
// runs, its bytes count in Transferred. A blob download that waits the
// Watch's Stall for a byte cuts it, with an error that wraps ErrStalled.
func (c *Client) Pull(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, maxDownloads int) (err error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	ctx, release, err := c.lease(ctx, "pull")
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	defer func() { release(err) }()

	b := c.transfers.start(WatchFrom(ctx).Bytes)
	defer b.end()
	ctx, stalled, stop := cutStalls(ctx)
	defer stop()
	resolver := countingResolver{rangedResolver{
		Resolver: docker.NewResolver(docker.ResolverOptions{Hosts: withRangeTransport(c.hosts(ctx, auth))}),
		ranges:   c.ranges,
	}}
	labels := map[string]string{LabelCRIImage: criManaged}
	img, err := c.c.Pull(ctx, named.String(),
		client.WithResolver(resolver),
		client.WithPlatformMatcher(c.platform),
		client.WithPullUnpack,
		client.WithPullSnapshotter(c.snapshotter),
		client.WithPullLabels(labels),
		client.WithDownloadLimiter(c.downloadSlots(maxDownloads)),
		client.WithUnpackOpts([]client.UnpackOpt{client.WithUnpackDuplicationSuppressor(&c.shared)}),
		client.WithImageHandlerWrapper(c.countingHandler(b, c.needReservation(resolver, named.String(), reservationFrom(ctx)))),
	)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, stalled(err))
	}
	cfg, err := img.Config(ctx)
	if err != nil {
		return fmt.Errorf("pull %s: image config: %w", ref, err)
	}
	recs, err := criRecords([]string{named.String()}, img.Target(), cfg.Digest)
	if err != nil {
		return err
	}
	// The image is whole: record it even if ctx ends now, rather than leave
	// the reference without the digest and ID records the CRI would add.
	if err := c.record(context.WithoutCancel(ctx), recs); err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	return nil
}

// Reservation is asked, once a pull has read its manifest and before it
// downloads a layer, whether what the config and layers the content store
// lacks need on disk may be taken; an error fails the pull with it.
type Reservation func(ctx context.Context, need DiskNeed) error

type reservationKey struct{}

// WithReservation makes the pulls of ctx ask r before their downloads.
func WithReservation(ctx context.Context, r Reservation) context.Context {
	return context.WithValue(ctx, reservationKey{}, r)
}

func reservationFrom(ctx context.Context) Reservation {
	r, _ := ctx.Value(reservationKey{}).(Reservation)
	return r
}

// resolver reaches registries as a pull does: the node's hosts.toml
// (mirrors, CAs), auth for whichever host serves the image, and the
// proxy of HTTPS_PROXY and NO_PROXY (containerd's default transport).
func (c *Client) resolver(ctx context.Context, auth *runtimeapi.AuthConfig) remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{Hosts: c.hosts(ctx, auth)})
}

// hosts are the registry hosts of one pull, each configured once.
func (c *Client) hosts(ctx context.Context, auth *runtimeapi.AuthConfig) docker.RegistryHosts {
	return memoHosts(config.ConfigureHosts(ctx, config.HostOptions{
		HostDir:      c.hostDir,
		Credentials:  func(host string) (string, string, error) { return credentials(auth, host) },
		UpdateClient: guardTrailerReads,
	}))
}

// lease starts a lease of the preloader's, labelled with what it is for,
// and returns the context that holds it and its release. Release deletes
// the lease; after a failure synchronously, so that containerd has
// collected what was written before the next attempt needs the space. A
// lease that cannot be deleted (containerd was down) is deleted when the
// next one starts, rather than hold partial content for the 24 h of its
// expiry.
func (c *Client) lease(ctx context.Context, what string) (context.Context, func(error), error) {
	ls := c.c.LeasesService()
	c.mu.Lock()
	orphans := c.orphans
	c.orphans = nil
	c.mu.Unlock()
	for _, l := range orphans {
		if err := ls.Delete(ctx, l); err != nil && !errdefs.IsNotFound(err) {
			c.orphan(l)
		}
	}
	l, err := ls.Create(ctx, leases.WithRandomID(), leases.WithExpiration(leaseExpiry), leases.WithLabel(LabelLease, what))
	if err != nil {
		return nil, nil, fmt.Errorf("lease: %w", err)
	}
	release := func(err error) {
		var opts []leases.DeleteOpt
		if err != nil {
			opts = append(opts, leases.SynchronousDelete)
		}
		if err := ls.Delete(context.WithoutCancel(ctx), l, opts...); err != nil && !errdefs.IsNotFound(err) {
			c.orphan(l)
		}
	}
	return leases.WithLease(ctx, l.ID), release, nil
}

func (c *Client) orphan(l leases.Lease) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.orphans = append(c.orphans, l)
}

// memoHosts answers every question of one pull about a host with the same
// hosts: ConfigureHosts builds a new HTTP client and authorizer on each
// call, so the manifest's resolution and the blobs' fetcher would each open
// their own connections and each be refused once before authenticating.
func memoHosts(hosts docker.RegistryHosts) docker.RegistryHosts {
	var mu sync.Mutex
	memo := make(map[string][]docker.RegistryHost)
	return func(host string) ([]docker.RegistryHost, error) {
		mu.Lock()
		defer mu.Unlock()
		if h, ok := memo[host]; ok {
			return h, nil
		}
		h, err := hosts(host)
		if err == nil {
			memo[host] = h
		}
		return h, err
	}
}

// hostDir finds <host>/hosts.toml in the first config_path root that has
// one, as the CRI plugin does.
func (c *Client) hostDir(host string) (string, error) {
	for _, root := range c.hostRoots {
		dir, err := config.HostDirFromRoot(root)(host)
		if (err != nil && !errdefs.IsNotFound(err)) || dir != "" {
			return dir, err
		}
	}
	return "", nil
}

// downloadSlots returns the limiter of layer downloads, a new one when the
// configured number changed; pulls under the old one finish with it.
func (c *Client) downloadSlots(n int) *semaphore.Weighted {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n < 1 {
		n = 1
	}
	if c.downloads == nil || c.downloadsN != n {
		c.downloads, c.downloadsN = semaphore.NewWeighted(int64(n)), n
	}
	return c.downloads
}

// credentials returns what auth holds for host, as the CRI plugin's
// ParseAuth does: the pull's credentials go to every host that serves it
// (mirrors too) unless auth names its server. Unlike ParseAuth, no error
// quotes the credentials.
func credentials(auth *runtimeapi.AuthConfig, host string) (string, string, error) {
	if auth == nil {
		return "", "", nil
	}
	if auth.ServerAddress != "" {
		u, err := url.Parse(auth.ServerAddress)
		if err != nil {
			return "", "", errors.New("credentials: server address is not a URL")
		}
		if u.Host != host {
			return "", "", nil
		}
	}
	switch {
	case auth.Username != "":
		return auth.Username, auth.Password, nil
	case auth.IdentityToken != "":
		return "", auth.IdentityToken, nil
	case auth.Auth != "":
		decoded, err := base64.StdEncoding.DecodeString(auth.Auth)
		if err != nil {
			return "", "", errors.New("credentials: auth is not base64")
		}
		user, pass, ok := strings.Cut(string(decoded), ":")
		if !ok {
			return "", "", errors.New("credentials: auth is not user:password")
		}
		return user, strings.Trim(pass, "\x00"), nil
	}
	return "", "", nil
}

// keyedMutex serializes work on one key (a blob, a snapshot chain) across
// the concurrent pulls of a client, as the CRI plugin's unpack duplication
// suppressor does; containerd's own implementation is internal.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	held  chan struct{}
	users int
}

func (m *keyedMutex) Lock(ctx context.Context, key string) error {
	m.mu.Lock()
	if m.locks == nil {
		m.locks = make(map[string]*keyLock)
	}
	l := m.locks[key]
	if l == nil {
		l = &keyLock{held: make(chan struct{}, 1)}
		m.locks[key] = l
	}
	l.users++
	m.mu.Unlock()
	select {
	case l.held <- struct{}{}:
		return nil
	case <-ctx.Done():
		m.release(key, l)
		return ctx.Err()
	}
}

func (m *keyedMutex) Unlock(key string) {
	m.mu.Lock()
	l := m.locks[key]
	m.mu.Unlock()
	<-l.held
	m.release(key, l)
}

func (m *keyedMutex) release(key string, l *keyLock) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l.users--; l.users == 0 {
		delete(m.locks, key)
	}
}
