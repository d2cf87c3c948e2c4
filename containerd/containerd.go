// Package containerd does on a containerd node what the CRI cannot: import
// image archives, record an image pulled from a mirror under its canonical
// name, and pin images against the kubelet's image garbage collection. It
// works in the CRI plugin's namespace and leaves images exactly as the CRI
// plugin's own pulls do, so that CRI ImageStatus finds them.
package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/kube-preloader/kube-preloader/archive"
)

// Namespace is the containerd namespace of the CRI plugin.
const Namespace = "k8s.io"

// Labels on image records. The CRI plugin of containerd 1.6 and 2.4 sets
// io.cri-containerd.image=managed on the tag, digest and ID records of every
// image it pulls (read from CRI-pulled images; 2.x adds it itself to images
// it did not pull), and treats io.cri-containerd.pinned=pinned as pinned.
const (
	LabelCRIImage = "io.cri-containerd.image"
	LabelPinned   = "io.cri-containerd.pinned"

	// LabelLease marks the preloader's own leases (value: what for), so
	// that they can be told from the CRI plugin's, which are otherwise
	// alike: a random ID and an expiry.
	LabelLease = "preloader.io/lease"

	criManaged = "managed"
	pinned     = "pinned"
)

// leaseExpiry bounds how long the content of an import that died half-way
// (a killed preloader) is kept before containerd's GC may collect it; as
// containerd's own default, long enough for any import to finish.
const leaseExpiry = 24 * time.Hour

// Client is a containerd client in the CRI plugin's namespace.
type Client struct {
	c           *client.Client
	snapshotter string
	platform    platforms.MatchComparer
	hostRoots   []string // the CRI's registry config_path

	shared     keyedMutex // blobs and snapshots that concurrent pulls share
	mu         sync.Mutex
	downloads  *semaphore.Weighted
	downloadsN int
	orphans    []leases.Lease // leases whose delete failed
	transfers  transfers      // the bytes of the pulls in flight
	ranges     *ranges        // blobs its pulls read in ranges, and their buffers
	// exportLease holds what Resolve resolved; nil until it resolves.
	exportMu    sync.Mutex
	exportLease *leases.Lease
}

// New connects to containerd at address. Images are unpacked into
// snapshotter, which must be the one the CRI plugin uses, or its
// containers would find no snapshots.
func New(ctx context.Context, address, snapshotter string, opts ...Option) (*Client, error) {
	c, err := client.New(address, client.WithDefaultNamespace(Namespace), client.WithTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("containerd %s: %w", address, err)
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Version(vctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("containerd %s: %w", address, err)
	}
	cl := &Client{c: c, snapshotter: snapshotter, platform: platforms.Default(), ranges: newRanges()}
	for _, o := range opts {
		o(cl)
	}
	return cl, nil
}

// Close lets go of what Resolve held and closes the connection.
func (c *Client) Close() error {
	return errors.Join(c.releaseExport(), c.c.Close())
}

// Import writes the blobs of images (as archive.Inspect found them in an
// archive) into containerd's content store, unpacks the images and records
// each under its names. Everything is written under a lease and the images
// are recorded only once all of them are unpacked, so a failure leaves no
// image behind and its content to containerd's garbage collector.
//
// The blobs are written with their digests, so the content store checks
// them and skips those it has, and several at a time from a plain tar;
// each layer is applied as soon as its blob is in and the layer below it
// applied, two at a time, while the other blobs are still being written. containerd's own importer (client.Import, as
// `ctr images import` uses it) writes every tar entry one at a time,
// unchecked, before any unpacking; integration/bench compares the two.
//
// Layers the archive lacks (a delta's) must be in the content store
// already: they are checked before anything is written, and held by the
// import's lease while it runs.
func (c *Client) Import(ctx context.Context, contents *archive.Contents, want []archive.Image) (err error) {
	absent, err := c.checkAbsent(ctx, want)
	if err != nil {
		return err
	}
	ctx, release, err := c.lease(ctx, "import")
	if err != nil {
		return err
	}
	defer func() { release(err) }()
	if err := c.holdContent(ctx, absent); err != nil {
		return err
	}

	var records []images.Image
	for _, img := range want {
		recs, err := criRecords(img.Names, img.Target, img.Config)
		if err != nil {
			return err
		}
		records = append(records, recs...)
	}

	var blobs []ocispec.Descriptor
	for _, img := range want {
		for _, b := range img.Blobs {
			if !slices.Contains(absent, b.Digest) {
				blobs = append(blobs, b)
			}
		}
	}
	u := c.newUnpacker(want)
	cs := c.c.ContentStore()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		for _, d := range absent {
			if err := u.written(gctx, d); err != nil {
				return err
			}
		}
		err := contents.Each(gctx, blobs, func(desc ocispec.Descriptor, r io.Reader) error {
			if err := content.WriteBlob(gctx, cs, "preloader-"+desc.Digest.String(), r, desc); err != nil {
				return fmt.Errorf("write blob %s: %w", desc.Digest, err)
			}
			return u.written(gctx, desc.Digest)
		})
		if err != nil {
			return err
		}
		return u.allWritten()
	})
	for range unpackWorkers {
		g.Go(func() error { return u.run(gctx) })
	}
	if err := g.Wait(); err != nil {
		return streamCut(err)
	}
	if !u.done() {
		return errors.New("some images were left unpacked")
	}
	return c.record(ctx, records)
}

// checkAbsent checks that the content store has every layer the archive
// lacks, and returns their digests. The error names each image's missing
// layers and wraps archive.ErrIncomplete.
func (c *Client) checkAbsent(ctx context.Context, want []archive.Image) ([]digest.Digest, error) {
	cs := c.c.ContentStore()
	var (
		absent  []digest.Digest
		known   = make(map[digest.Digest]bool)
		missing []string
	)
	for _, img := range want {
		var lacks []string
		for _, d := range img.Absent {
			has, ok := known[d.Digest]
			if !ok {
				_, err := cs.Info(ctx, d.Digest)
				switch {
				case err == nil:
					has = true
					absent = append(absent, d.Digest)
				case !errdefs.IsNotFound(err):
					return nil, fmt.Errorf("image %s: layer %s: %w", describe(img), d.Digest, err)
				}
				known[d.Digest] = has
			}
			if !has {
				lacks = append(lacks, d.Digest.String())
			}
		}
		if len(lacks) > 0 {
			missing = append(missing, fmt.Sprintf("image %s lacks %s", describe(img), strings.Join(lacks, ", ")))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: layers neither in the archive nor in the node's content store (a delta imports only where the images it was made since are): %s",
			archive.ErrIncomplete, strings.Join(missing, "; "))
	}
	return absent, nil
}

// holdContent adds blobs the import uses but does not write to its lease,
// so that the garbage collector leaves them while it runs, even if the
// images that hold them are removed meanwhile.
func (c *Client) holdContent(ctx context.Context, blobs []digest.Digest) error {
	id, ok := leases.FromContext(ctx)
	if !ok || len(blobs) == 0 {
		return nil
	}
	ls := c.c.LeasesService()
	for _, d := range blobs {
		if err := ls.AddResource(ctx, leases.Lease{ID: id}, leases.Resource{ID: d.String(), Type: "content"}); err != nil {
			return fmt.Errorf("lease layer %s: %w", d, err)
		}
	}
	return nil
}

// streamCut marks as unavailable a write that containerd cut: a gRPC
// stream the server drops without a status (containerd killed or
// restarted mid-import) ends in a bare io.EOF from Send, which the content
// proxy turns into an unknown error with the text "EOF" ("failed to send
// write: EOF", "error getting writer status: EOF"). An archive's own
// truncation is io.ErrUnexpectedEOF, "unexpected EOF", and is not matched.
func streamCut(err error) error {
	cut := errors.Is(err, io.EOF) || (errdefs.IsUnknown(err) && strings.HasSuffix(err.Error(), ": EOF"))
	if cut && !errdefs.IsUnavailable(err) {
		return fmt.Errorf("%w (containerd closed the stream: %w)", err, errdefs.ErrUnavailable)
	}
	return err
}

// CollectGarbage has containerd collect what no image or lease holds,
// and returns once it has: a lease deleted with SynchronousDelete runs
// the collector before the delete returns. After a pull failed for want
// of space, that frees what the failed pull wrote before the next starts;
// containerd would collect it a moment later, in the background.
func (c *Client) CollectGarbage(ctx context.Context) error {
	ls := c.c.LeasesService()
	lease, err := ls.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Minute), leases.WithLabel(LabelLease, "gc"))
	if err != nil {
		return fmt.Errorf("collect garbage: %w", err)
	}
	if err := ls.Delete(ctx, lease, leases.SynchronousDelete); err != nil {
		return fmt.Errorf("collect garbage: %w", err)
	}
	return nil
}

// Tag records the image recorded as source (a mirror reference the CRI
// pulled) under name too, as the CRI would have recorded a pull of name.
func (c *Client) Tag(ctx context.Context, name, source string) error {
	src, err := c.c.ImageService().Get(ctx, source)
	if err != nil {
		return fmt.Errorf("tag %s: %w", source, err)
	}
	cfg, err := images.Config(ctx, c.c.ContentStore(), src.Target, c.platform)
	if err != nil {
		return fmt.Errorf("tag %s: %w", source, err)
	}
	target := ocispec.Descriptor{MediaType: src.Target.MediaType, Digest: src.Target.Digest, Size: src.Target.Size}
	recs, err := criRecords([]string{name}, target, cfg.Digest)
	if err != nil {
		return err
	}
	if err := c.record(ctx, recs); err != nil {
		return fmt.Errorf("tag %s as %s: %w", source, name, err)
	}
	return nil
}

// criRecords are the image records the CRI plugin creates for a pull: each
// reference, its repository at the target's digest, and the image ID.
func criRecords(names []string, target ocispec.Descriptor, id digest.Digest) ([]images.Image, error) {
	labels := map[string]string{LabelCRIImage: criManaged}
	seen := make(map[string]bool)
	var recs []images.Image
	add := func(name string) {
		if !seen[name] {
			seen[name] = true
			recs = append(recs, images.Image{Name: name, Target: target, Labels: labels})
		}
	}
	for _, n := range names {
		ref, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			return nil, fmt.Errorf("image name %q: %w", n, err)
		}
		if d, ok := ref.(reference.Digested); ok && d.Digest() != target.Digest {
			return nil, fmt.Errorf("image name %s: the image's digest is %s", n, target.Digest)
		}
		add(n)
		add(ref.Name() + "@" + target.Digest.String())
	}
	add(id.String())
	return recs, nil
}

// record creates or updates image records, leaving labels other than the
// CRI's own (pins) as they are. Records that already say the same are not
// touched, so a repeated import sends the CRI no events. If one fails, the
// records this call created are deleted again.
func (c *Client) record(ctx context.Context, recs []images.Image) error {
	is := c.c.ImageService()
	var created []string
	for _, r := range recs {
		_, err := is.Create(ctx, r)
		if err == nil {
			created = append(created, r.Name)
			continue
		}
		if !errdefs.IsAlreadyExists(err) {
			return errors.Join(fmt.Errorf("create image %s: %w", r.Name, err), c.remove(ctx, created))
		}
		old, err := is.Get(ctx, r.Name)
		if err != nil {
			return errors.Join(fmt.Errorf("image %s: %w", r.Name, err), c.remove(ctx, created))
		}
		if old.Target.Digest == r.Target.Digest && old.Labels[LabelCRIImage] == criManaged {
			continue
		}
		if _, err := is.Update(ctx, r, "target", "labels."+LabelCRIImage); err != nil {
			return errors.Join(fmt.Errorf("update image %s: %w", r.Name, err), c.remove(ctx, created))
		}
	}
	return nil
}

func (c *Client) remove(ctx context.Context, names []string) error {
	var errs []error
	for _, n := range names {
		if err := c.c.ImageService().Delete(context.WithoutCancel(ctx), n); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("roll back image %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

func describe(img archive.Image) string {
	if len(img.Names) > 0 {
		return img.Names[0]
	}
	return img.Config.String()
}
