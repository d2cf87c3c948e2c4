package containerd

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/containerd/v2/pkg/rootfs"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/archive"
)

// unpackWorkers is how many layers an import applies at once. Applying is
// the runtime's CPU (the native snapshotter copies the parent's whole tree
// into each new snapshot) and the import's longest part: one per core of
// the 2-core nodes the benchmark runs on, beside the blob writes.
const unpackWorkers = 2

// unpacker applies the layers of an import's images into the snapshotter
// as their blobs arrive: a layer as soon as its blob is written and the
// layer below it applied, each chain once however many images share it,
// rather than image by image once each image's blobs are all in. An image
// is finished (its content labelled for the GC, its config pointing to its
// snapshot) once all of its blobs are in and its top layer is applied;
// what Image.Unpack does, in the same order of effects.
type unpacker struct {
	c      *Client
	want   []archive.Image
	sn     snapshots.Snapshotter
	differ diff.Applier
	cs     content.Store

	mu       sync.Mutex
	byBlob   map[digest.Digest][]*chainNode
	waiting  map[digest.Digest][]int // the images that have a blob
	pending  int                     // chains not yet applied
	blobless int                     // chains whose blob is not written
	missing  []int                   // per image: blobs not yet written
	unready  []int                   // per image: chains not yet applied
	finished int                     // images finished
	work     chan *chainNode
}

// chainNode is one layer of one or more images, identified by its chain ID.
type chainNode struct {
	layer    rootfs.Layer
	chain    []digest.Digest // diff IDs up to and including this layer
	image    int             // the first image that has it, for messages
	images   []int           // the images that have it
	children []*chainNode
	blobIn   bool
	below    bool // the layer below is applied, or there is none
}

func (c *Client) newUnpacker(want []archive.Image) *unpacker {
	u := &unpacker{
		c:       c,
		want:    want,
		sn:      c.c.SnapshotService(c.snapshotter),
		differ:  c.c.DiffService(),
		cs:      c.c.ContentStore(),
		byBlob:  make(map[digest.Digest][]*chainNode),
		waiting: make(map[digest.Digest][]int),
		missing: make([]int, len(want)),
		unready: make([]int, len(want)),
	}
	nodes := make(map[digest.Digest]*chainNode)
	for i, img := range want {
		for _, b := range img.Blobs {
			if !slices.Contains(u.waiting[b.Digest], i) {
				u.waiting[b.Digest] = append(u.waiting[b.Digest], i)
				u.missing[i]++
			}
		}
		var parent *chainNode
		var chain []digest.Digest
		for _, l := range img.Layers {
			chain = append(chain[:len(chain):len(chain)], l.DiffID)
			id := identity.ChainID(chain)
			n, ok := nodes[id]
			if !ok {
				n = &chainNode{
					layer: rootfs.Layer{
						Blob: l.Blob,
						Diff: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: l.DiffID},
					},
					chain: chain,
					image: i,
					below: parent == nil,
				}
				nodes[id] = n
				u.byBlob[l.Blob.Digest] = append(u.byBlob[l.Blob.Digest], n)
				if parent != nil {
					parent.children = append(parent.children, n)
				}
			}
			if len(n.images) == 0 || n.images[len(n.images)-1] != i {
				n.images = append(n.images, i)
				u.unready[i]++
			}
			parent = n
		}
	}
	u.pending, u.blobless = len(nodes), len(nodes)
	// Every chain is queued at most once: the channel never blocks.
	u.work = make(chan *chainNode, len(nodes))
	if u.pending == 0 {
		close(u.work)
	}
	return u
}

// written notes that blob d is in the content store, queues the layers
// that wait only for it, and finishes the images that waited for it last.
func (u *unpacker) written(ctx context.Context, d digest.Digest) error {
	u.mu.Lock()
	var done []int
	for _, i := range u.waiting[d] {
		if u.missing[i]--; u.missing[i] == 0 && u.unready[i] == 0 {
			done = append(done, i)
		}
	}
	for _, n := range u.byBlob[d] {
		n.blobIn = true
		u.blobless--
		if n.below {
			u.work <- n
		}
	}
	u.mu.Unlock()
	return u.finish(ctx, done)
}

// allWritten checks, once every blob is written, that no layer still
// waits for one: the workers would wait for it forever.
func (u *unpacker) allWritten() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.blobless > 0 {
		return fmt.Errorf("%d layers have no blob among the images' blobs", u.blobless)
	}
	return nil
}

// run applies queued layers until every chain is applied.
func (u *unpacker) run(ctx context.Context) error {
	for {
		select {
		case n, ok := <-u.work:
			if !ok {
				return nil
			}
			if err := u.apply(ctx, n); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// apply applies one layer as Image.Unpack does, records the blob's
// uncompressed digest, queues the layers above it whose blobs are in and
// finishes the images it completes.
func (u *unpacker) apply(ctx context.Context, n *chainNode) error {
	applied, err := rootfs.ApplyLayerWithOpts(ctx, n.layer, n.chain[:len(n.chain)-1], u.sn, u.differ, nil, nil)
	if err != nil {
		return fmt.Errorf("image %s: unpack into snapshotter %s: apply layer %s: %w", describe(u.want[n.image]), u.c.snapshotter, n.layer.Blob.Digest, err)
	}
	if applied {
		info := content.Info{Digest: n.layer.Blob.Digest, Labels: map[string]string{labels.LabelUncompressed: n.layer.Diff.Digest.String()}}
		if _, err := u.cs.Update(ctx, info, "labels."+labels.LabelUncompressed); err != nil {
			return fmt.Errorf("image %s: label layer %s: %w", describe(u.want[n.image]), n.layer.Blob.Digest, err)
		}
	}
	u.mu.Lock()
	for _, child := range n.children {
		child.below = true
		if child.blobIn {
			u.work <- child
		}
	}
	var done []int
	for _, i := range n.images {
		if u.unready[i]--; u.unready[i] == 0 && u.missing[i] == 0 {
			done = append(done, i)
		}
	}
	if u.pending--; u.pending == 0 {
		close(u.work)
	}
	u.mu.Unlock()
	return u.finish(ctx, done)
}

// finish labels the content of images whose blobs are all in and layers
// all applied, so that their records will keep it, and points each
// config to the image's snapshot, as Image.Unpack does last.
func (u *unpacker) finish(ctx context.Context, imgs []int) error {
	for _, i := range imgs {
		img := u.want[i]
		if err := u.c.labelContent(ctx, img.Target); err != nil {
			return fmt.Errorf("image %s: %w", describe(img), err)
		}
		var chain []digest.Digest
		for _, l := range img.Layers {
			chain = append(chain, l.DiffID)
		}
		key := "containerd.io/gc.ref.snapshot." + u.c.snapshotter
		info := content.Info{Digest: img.Config, Labels: map[string]string{key: identity.ChainID(chain).String()}}
		if _, err := u.cs.Update(ctx, info, "labels."+key); err != nil {
			return fmt.Errorf("image %s: label config: %w", describe(img), err)
		}
		u.mu.Lock()
		u.finished++
		u.mu.Unlock()
	}
	return nil
}

// done tells whether every image is finished.
func (u *unpacker) done() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.finished == len(u.want)
}

// labelContent labels target's content for the platform so that the image
// record keeps it. Of an index it follows the one best manifest for the
// platform, as a pull and archive.Inspect do: only that one was written.
func (c *Client) labelContent(ctx context.Context, target ocispec.Descriptor) error {
	cs := c.c.ContentStore()
	children := images.LimitManifests(images.FilterPlatforms(images.ChildrenHandler(cs), c.platform), c.platform, 1)
	if err := images.Walk(ctx, images.SetChildrenLabels(cs, children), target); err != nil {
		return fmt.Errorf("label content: %w", err)
	}
	return nil
}
