package containerd

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Resolve returns what the node's image record ref points to: the index
// or manifest the CRI recorded when it pulled ref (or the preloader when
// it imported it), so that a bundle made from the node names the digest
// the registry served. ref is read as the kubelet hands it to the CRI,
// which records docker.io/library/nginx:latest for nginx.
//
// What it resolves is held against containerd's garbage collector until
// Close: the kubelet's image GC may remove the image while it is read.
func (c *Client) Resolve(ctx context.Context, ref string) (ocispec.Descriptor, error) {
	desc, err := c.exporter().resolve(ctx, ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := c.hold(ctx, desc); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%s: %w", ref, err)
	}
	return desc, nil
}

// hold adds desc to the lease of what Resolve resolved: the collector
// keeps a leased blob and what its labels reference, as the image record
// kept them.
func (c *Client) hold(ctx context.Context, desc ocispec.Descriptor) error {
	c.exportMu.Lock()
	defer c.exportMu.Unlock()
	ls := c.c.LeasesService()
	if c.exportLease == nil {
		l, err := ls.Create(ctx, leases.WithRandomID(), leases.WithExpiration(leaseExpiry), leases.WithLabel(LabelLease, "export"))
		if err != nil {
			return fmt.Errorf("lease: %w", err)
		}
		c.exportLease = &l
	}
	if err := ls.AddResource(ctx, *c.exportLease, leases.Resource{ID: desc.Digest.String(), Type: "content"}); err != nil {
		return fmt.Errorf("lease %s: %w", desc.Digest, err)
	}
	return nil
}

// releaseExport deletes the lease of what Resolve resolved.
func (c *Client) releaseExport() error {
	c.exportMu.Lock()
	defer c.exportMu.Unlock()
	if c.exportLease == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.c.LeasesService().Delete(ctx, *c.exportLease)
	c.exportLease = nil
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("release the lease of exported images: %w", err)
	}
	return nil
}

// Fetch reads one blob of the image ref from containerd's content store,
// as it is there: the bundle's writer checks its digest. A blob the node
// lacks is a *MissingError, which wraps errdefs.ErrNotFound: containerd
// keeps an image's index but usually only the manifests and blobs of the
// platforms it pulled, and may keep no compressed layers at all.
func (c *Client) Fetch(ctx context.Context, ref string, desc ocispec.Descriptor) (io.ReadCloser, error) {
	return c.exporter().fetch(ctx, ref, desc)
}

func (c *Client) exporter() exporter {
	return exporter{images: c.c.ImageService(), content: c.c.ContentStore()}
}

// exporter reads images out of an image and a content store: containerd's
// through the client, a local content store in the unit tests.
type exporter struct {
	images interface {
		Get(ctx context.Context, name string) (images.Image, error)
	}
	content interface {
		content.Provider
		content.InfoProvider
	}
}

// MissingError is an image, or one blob of it, that the node does not
// hold. It unwraps to errdefs.ErrNotFound.
type MissingError struct {
	Image string // as the CRI records it
	// Blob is the blob the node lacks; nil: the image itself.
	Blob *ocispec.Descriptor
	// Platform is the blob's, when it is a manifest of an index.
	Platform *ocispec.Platform
	// Held are the platforms of the image's index the node has
	// manifests of; set only when Platform is.
	Held []string
}

func (e *MissingError) Error() string {
	switch {
	case e.Blob == nil:
		return fmt.Sprintf("%s is not on this node", e.Image)
	case e.Platform != nil:
		held := ""
		if len(e.Held) > 0 {
			held = " (it holds " + strings.Join(e.Held, ", ") + " only)"
		}
		return fmt.Sprintf("this node holds no %s manifest of %s%s: containerd keeps the platforms it pulled; bundle %s from the registry",
			platforms.FormatAll(*e.Platform), e.Image, held, platforms.FormatAll(*e.Platform))
	case images.IsManifestType(e.Blob.MediaType) || images.IsIndexType(e.Blob.MediaType):
		return fmt.Sprintf("%s: manifest %s is not in containerd's content store", e.Image, e.Blob.Digest)
	default:
		// containerd's CRI removes layers it has unpacked where its config
		// sets discard_unpacked_layers.
		return fmt.Sprintf("%s: blob %s (%s) is not in containerd's content store (containerd discards the layers it unpacked where its CRI config sets discard_unpacked_layers): bundle the image from the registry",
			e.Image, e.Blob.Digest, e.Blob.MediaType)
	}
}

func (e *MissingError) Unwrap() error { return errdefs.ErrNotFound }

func (x exporter) resolve(ctx context.Context, ref string) (ocispec.Descriptor, error) {
	name, err := recordName(ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	img, err := x.images.Get(ctx, name)
	if errdefs.IsNotFound(err) {
		return ocispec.Descriptor{}, &MissingError{Image: name}
	}
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", name, err)
	}
	return img.Target, nil
}

func (x exporter) fetch(ctx context.Context, ref string, desc ocispec.Descriptor) (io.ReadCloser, error) {
	name, err := recordName(ref)
	if err != nil {
		return nil, err
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("%s: blob %q: %w", name, desc.Digest, err)
	}
	ra, err := x.content.ReaderAt(ctx, desc)
	if errdefs.IsNotFound(err) {
		return nil, x.missing(ctx, name, desc)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: blob %s: %w", name, desc.Digest, err)
	}
	if ra.Size() != desc.Size {
		ra.Close()
		return nil, fmt.Errorf("%s: blob %s is %d bytes in containerd's content store, want %d", name, desc.Digest, ra.Size(), desc.Size)
	}
	// Each read of containerd's remote content store is a request of its
	// own: read it in large ones, not in the caller's (io.Copy's 32 KiB).
	return readCloser{Reader: bufio.NewReaderSize(content.NewReader(ra), readSize), Closer: ra}, nil
}

// readSize is what one read of a blob asks of containerd: the content
// service streams it back in messages of 1 MiB.
const readSize = 4 << 20

// missing is the error of a blob desc of the image name that the content
// store lacks; a manifest is named by its platform, which the index the
// node holds tells when desc does not.
func (x exporter) missing(ctx context.Context, name string, desc ocispec.Descriptor) error {
	e := &MissingError{Image: name, Blob: &desc, Platform: desc.Platform}
	if !images.IsManifestType(desc.MediaType) && desc.Platform == nil {
		return e
	}
	idx, err := x.index(ctx, name)
	if err != nil {
		return e
	}
	for _, m := range idx.Manifests {
		if m.Platform == nil {
			continue
		}
		if m.Digest == desc.Digest && e.Platform == nil {
			e.Platform = m.Platform
		}
		if _, err := x.content.Info(ctx, m.Digest); err == nil {
			e.Held = append(e.Held, platforms.FormatAll(*m.Platform))
		}
	}
	return e
}

// index is the index the image record name points to.
func (x exporter) index(ctx context.Context, name string) (ocispec.Index, error) {
	img, err := x.images.Get(ctx, name)
	if err != nil {
		return ocispec.Index{}, err
	}
	if !images.IsIndexType(img.Target.MediaType) {
		return ocispec.Index{}, fmt.Errorf("%s is a %s, not an index", name, img.Target.MediaType)
	}
	data, err := content.ReadBlob(ctx, x.content, img.Target)
	if err != nil {
		return ocispec.Index{}, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return ocispec.Index{}, fmt.Errorf("index of %s: %w", name, err)
	}
	return idx, nil
}

// recordName is the name the CRI plugin records a pull of ref under: the
// kubelet passes ref as the pod names it, and the plugin normalizes it.
func recordName(ref string) (string, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("image name %q: %w", ref, err)
	}
	return named.String(), nil
}

type readCloser struct {
	io.Reader
	io.Closer
}
