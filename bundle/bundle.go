// Package bundle fetches images from a Store (their registries, or a
// node's runtime) into one OCI image layout archive: the file an
// air-gapped node imports from its archive directory. Each image keeps
// the index its reference names, byte for byte, with the manifests and
// blobs of the chosen platforms; blobs that images share are stored once;
// each image's name is recorded the way containerd reads it back on
// import. A lock inside the archive records every digest it holds.
package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kube-preloader/kube-preloader/artifact"
	"github.com/kube-preloader/kube-preloader/signature"
)

// Annotations on index.json entries that name an image. containerd's
// importer reads the first; ref.name holds the full reference too (as
// crane and skopeo write it), so that names stay unique in a bundle of
// many repositories and tools that read only the OCI annotation agree.
const (
	AnnotationImageName = "io.containerd.image.name"
	AnnotationRefName   = "org.opencontainers.image.ref.name"
)

// Source is one image to bundle.
type Source struct {
	// Name is recorded in the bundle: the reference pods use.
	Name string
	// From is the reference the store knows it by, when not Name: a
	// mirror's.
	From string
}

func (s Source) from() string {
	if s.From != "" {
		return s.From
	}
	return s.Name
}

// OriginRuntime is the lock's from of an image read from a node's
// runtime.
const OriginRuntime = "runtime"

// Options configure Write.
type Options struct {
	Platforms Platforms
	// Lock, when set, is rebuilt exactly: each image is fetched by the
	// digest the lock has for it, with the lock's manifests, whatever its
	// tag names now. Platforms is then ignored.
	Lock *Lock
	// Since, when set, makes a delta: the layers Since.Old has are left
	// out, every index, manifest and config is written.
	Since *Delta
	// Origin is the lock's from for every image (OriginRuntime); empty:
	// each source's reference.
	Origin string
	// Runtime is recorded in the lock when the store is a node's runtime.
	Runtime *LockRuntime
	// Progress receives a line per image and, while blobs stream, one
	// every ProgressEvery. Nil: no progress.
	Progress      io.Writer
	ProgressEvery time.Duration
	// Verify, when set, requires every image to be signed with cosign by
	// one of its keys, the signature read from the repository the image is
	// fetched from; the bundle carries the signatures, and the
	// attestations and SBOMs cosign keeps beside them.
	Verify *signature.Keys
}

// Delta is the older bundle a delta is written against.
type Delta struct {
	Old *Lock
	// File and Digest name Old's lock file in the new lock.
	File   string
	Digest digest.Digest
}

// image is what Write plans to write of one source.
type image struct {
	src  Source
	ref  string // as resolved: by digest under a lock
	desc ocispec.Descriptor
	raw  []byte // the index or manifest desc names
	// platform of a manifest with no index above it, from its config.
	platform  *ocispec.Platform
	manifests []manifest
	// attached are the cosign tags carried beside the image.
	attached []cosignTag
}

type manifest struct {
	platform  ocispec.Platform
	desc      ocispec.Descriptor
	raw       []byte
	config    ocispec.Descriptor
	rawConfig []byte
	layers    []ocispec.Descriptor
}

// Write fetches every source's image from store and writes them to w as
// the tar stream of one OCI image layout, whose lock it returns.
func Write(ctx context.Context, w io.Writer, store Store, sources []Source, opts Options) (*Lock, error) {
	if opts.Lock == nil && !opts.Platforms.All && len(opts.Platforms.List) == 0 {
		return nil, fmt.Errorf("no platform to bundle")
	}
	lock := &Lock{Version: LockVersion, Platforms: strings.Split(opts.Platforms.String(), ","), Runtime: opts.Runtime}
	if opts.Lock != nil {
		names := make([]string, len(sources))
		for i, s := range sources {
			names[i] = s.Name
		}
		if err := opts.Lock.Match(names); err != nil {
			return nil, err
		}
		lock.Platforms = opts.Lock.Platforms
	}
	var old map[digest.Digest]bool
	if opts.Since != nil {
		old = opts.Since.Old.Layers()
		lock.Since = &LockSince{File: opts.Since.File, Digest: opts.Since.Digest}
	}

	p := &meter{w: opts.Progress, every: opts.ProgressEvery}
	var imgs []image
	var unsigned []error
	counted := map[digest.Digest]bool{}
	for i, s := range sources {
		img, err := plan(ctx, store, s, opts)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		if opts.Verify != nil {
			img.attached, err = attachments(ctx, store, s.Name, img.ref, img.desc.Digest, opts.Verify)
			var se *signatureError
			switch {
			case errors.As(err, &se):
				// Every image is checked, so that one run names all
				// those whose signature fails.
				unsigned = append(unsigned, err)
			case err != nil:
				return nil, err
			}
		}
		imgs = append(imgs, img)
		lock.Images = append(lock.Images, img.lock(opts.Origin))
		var size int64
		var names []string
		for _, m := range img.manifests {
			names = append(names, platforms.Format(m.platform))
			for _, l := range m.layers {
				if !counted[l.Digest] && !old[l.Digest] {
					counted[l.Digest] = true
					size += l.Size
				}
			}
		}
		p.total += size
		origin := s.from()
		if opts.Origin != "" {
			origin = opts.Origin
		}
		p.printf("bundle: [%d/%d] %s (%s from %s; %s): %s to fetch\n", i+1, len(sources), s.Name, img.desc.Digest, origin, strings.Join(names, ", "), mib(size))
		if len(img.attached) > 0 {
			p.printf("bundle: [%d/%d] %s: %s\n", i+1, len(sources), s.Name, carrying(s, img.attached))
		}
	}
	if len(unsigned) > 0 {
		return nil, fmt.Errorf("--verify-key: %d of %d images not signed by the keys:\n%w", len(unsigned), len(sources), errors.Join(unsigned...))
	}
	rawLock, err := lock.Marshal()
	if err != nil {
		return nil, err
	}

	tw := tar.NewWriter(w)
	if err := writeFile(tw, ocispec.ImageLayoutFile, []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	// The lock comes first, so that reading it needs only the start of
	// the archive (or of its first part).
	if err := writeFile(tw, LockEntry, rawLock); err != nil {
		return nil, err
	}
	bw := &blobWriter{tw: tw, written: map[digest.Digest]bool{}, skip: old, meter: p}
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	stop := p.start()
	defer stop()
	for _, img := range imgs {
		if err := bw.image(ctx, store, img); err != nil {
			return nil, fmt.Errorf("%s: %w", img.src.Name, err)
		}
		desc := img.desc
		desc.Platform = img.platform
		desc.Annotations = map[string]string{AnnotationImageName: img.src.Name, AnnotationRefName: img.src.Name}
		index.Manifests = append(index.Manifests, desc)
	}
	carried := map[string]bool{} // two tags of one image share its cosign tags
	for _, img := range imgs {
		for _, a := range img.attached {
			if carried[a.Name] {
				continue
			}
			carried[a.Name] = true
			if err := bw.attached(a); err != nil {
				return nil, fmt.Errorf("%s: %w", a.Name, err)
			}
			desc := a.Desc
			desc.Annotations = map[string]string{AnnotationImageName: a.Name, AnnotationRefName: a.Name}
			index.Manifests = append(index.Manifests, desc)
		}
	}
	data, err := json.Marshal(index)
	if err != nil {
		return nil, err
	}
	if err := writeFile(tw, ocispec.ImageIndexFile, data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	stop()
	summary := fmt.Sprintf("bundle: %d images, %d blobs, %s", len(imgs), len(bw.written)-bw.skipped, mib(p.done.Load()))
	if opts.Since != nil {
		summary += fmt.Sprintf("; %d layers left out, in %s", bw.skipped, opts.Since.File)
	}
	p.printf("%s\n", summary)
	return lock, nil
}

// plan resolves a source and reads its index, the chosen manifests and
// their configs: everything but the layers.
func plan(ctx context.Context, store Store, s Source, opts Options) (image, error) {
	img := image{src: s, ref: s.from()}
	var locked *LockImage
	if opts.Lock != nil {
		li, _ := opts.Lock.Image(s.Name)
		locked = &li
		ref, err := byDigest(s.from(), li.Digest)
		if err != nil {
			return img, err
		}
		img.ref = ref
	}
	desc, err := store.Resolve(ctx, img.ref)
	if err != nil {
		return img, fmt.Errorf("resolve %s: %w", img.ref, err)
	}
	if locked != nil && desc.Digest != locked.Digest {
		return img, fmt.Errorf("%s resolved to %s, the lock has %s", img.ref, desc.Digest, locked.Digest)
	}
	img.desc = ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}
	if img.raw, err = readSmall(ctx, store, img.ref, img.desc); err != nil {
		return img, err
	}
	if img.desc.Size == 0 {
		img.desc.Size = int64(len(img.raw))
	}

	switch {
	case images.IsIndexType(img.desc.MediaType):
		var idx ocispec.Index
		if err := json.Unmarshal(img.raw, &idx); err != nil {
			return img, fmt.Errorf("index %s: %w", img.desc.Digest, err)
		}
		chosen, err := choose(idx.Manifests, opts.Platforms, locked)
		if err != nil {
			return img, err
		}
		for _, d := range chosen {
			if !images.IsManifestType(d.MediaType) {
				return img, fmt.Errorf("index %s: %s is a %s, not an image manifest", img.desc.Digest, d.Digest, d.MediaType)
			}
			m, err := readManifest(ctx, store, img.ref, d)
			if err != nil {
				return img, err
			}
			if d.Platform != nil {
				m.platform = platforms.Normalize(*d.Platform)
			}
			img.manifests = append(img.manifests, m)
		}
	case images.IsManifestType(img.desc.MediaType):
		m, err := readManifest(ctx, store, img.ref, img.desc)
		if err != nil {
			return img, err
		}
		if m.platform.OS != "" {
			img.platform = &m.platform
			if opts.Lock == nil && !opts.Platforms.All && !anyMatch(opts.Platforms.List, m.platform) {
				return img, fmt.Errorf("no manifest for platform %s (the image has %s only)", opts.Platforms, platforms.Format(m.platform))
			}
		}
		img.manifests = []manifest{m}
	default:
		return img, fmt.Errorf("%s is a %s, not an image", img.desc.Digest, img.desc.MediaType)
	}
	if locked != nil {
		if err := img.check(*locked); err != nil {
			return img, err
		}
	}
	return img, nil
}

// choose picks an index's manifests: every one, the lock's, or for each
// platform asked for the one a node of that platform would pull.
func choose(children []ocispec.Descriptor, ps Platforms, locked *LockImage) ([]ocispec.Descriptor, error) {
	if locked != nil {
		var chosen []ocispec.Descriptor
		for _, lp := range locked.Platforms {
			i := indexOf(children, lp.Manifest.Digest)
			if i < 0 {
				return nil, fmt.Errorf("the lock's manifest %s (%s) is not in the index", lp.Manifest.Digest, lp.Platform)
			}
			chosen = append(chosen, children[i])
		}
		return chosen, nil
	}
	if ps.All {
		return children, nil
	}
	var chosen []ocispec.Descriptor
	var missing []string
	for _, p := range ps.List {
		match := platforms.Only(p)
		var candidates []ocispec.Descriptor
		for _, c := range children {
			if c.Platform == nil || match.Match(platforms.Normalize(*c.Platform)) {
				candidates = append(candidates, c)
			}
		}
		if len(candidates) == 0 {
			missing = append(missing, platforms.Format(p))
			continue
		}
		sort.SliceStable(candidates, func(i, j int) bool {
			a, b := candidates[i].Platform, candidates[j].Platform
			if a == nil || b == nil {
				return b == nil && a != nil
			}
			return match.Less(platforms.Normalize(*a), platforms.Normalize(*b))
		})
		if indexOf(chosen, candidates[0].Digest) < 0 {
			chosen = append(chosen, candidates[0])
		}
	}
	if len(missing) > 0 {
		var has []string
		for _, c := range children {
			if c.Platform != nil {
				has = append(has, platforms.Format(*c.Platform))
			}
		}
		return nil, fmt.Errorf("no manifest for platform %s (the image has %s); choose others with --platform, or --platform all", strings.Join(missing, ", "), strings.Join(has, ", "))
	}
	return chosen, nil
}

func indexOf(descs []ocispec.Descriptor, d digest.Digest) int {
	for i, c := range descs {
		if c.Digest == d {
			return i
		}
	}
	return -1
}

func anyMatch(ps []ocispec.Platform, p ocispec.Platform) bool {
	for _, q := range ps {
		if platforms.Only(q).Match(p) {
			return true
		}
	}
	return false
}

// readManifest reads a manifest and its config. A bundle is for
// containerd's import, which unpacks no artifact: one is refused here
// rather than on the node.
func readManifest(ctx context.Context, store Store, ref string, desc ocispec.Descriptor) (manifest, error) {
	m := manifest{desc: ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}}
	var err error
	if m.raw, err = readSmall(ctx, store, ref, m.desc); err != nil {
		return m, err
	}
	var om ocispec.Manifest
	if err := json.Unmarshal(m.raw, &om); err != nil {
		return m, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	shape := artifact.Shape{ConfigMediaType: om.Config.MediaType, ArtifactType: om.ArtifactType}
	if !artifact.Mountable("containerd", shape) {
		return m, &artifact.Error{Ref: ref, Shape: shape, Runtime: "containerd"}
	}
	m.config, m.layers = om.Config, om.Layers
	if m.rawConfig, err = readSmall(ctx, store, ref, om.Config); err != nil {
		return m, err
	}
	var cfg ocispec.Image
	if json.Unmarshal(m.rawConfig, &cfg) == nil && cfg.OS != "" {
		m.platform = platforms.Normalize(cfg.Platform)
	}
	return m, nil
}

// maxSmall bounds what is read into memory of an index, manifest or
// config.
const maxSmall = 16 << 20

// readSmall reads a whole index, manifest or config, checking its digest
// and size.
func readSmall(ctx context.Context, store Store, ref string, desc ocispec.Descriptor) ([]byte, error) {
	if desc.Size > maxSmall {
		return nil, fmt.Errorf("%s %s: %d bytes, more than %d", desc.MediaType, desc.Digest, desc.Size, maxSmall)
	}
	rc, err := store.Fetch(ctx, ref, desc)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxSmall+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", desc.Digest, err)
	}
	if desc.Size != 0 && int64(len(b)) != desc.Size {
		return nil, fmt.Errorf("fetch %s: got %d bytes, want %d", desc.Digest, len(b), desc.Size)
	}
	if got := desc.Digest.Algorithm().FromBytes(b); got != desc.Digest {
		return nil, fmt.Errorf("fetch %s: got content of digest %s", desc.Digest, got)
	}
	return b, nil
}

// byDigest is ref's repository at d.
func byDigest(ref string, d digest.Digest) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("%s: %w", ref, err)
	}
	return named.Name() + "@" + d.String(), nil
}

// lock is the image's entry in the bundle's lock.
func (img image) lock(origin string) LockImage {
	li := LockImage{Name: img.src.Name, From: img.src.from(), Digest: img.desc.Digest, MediaType: img.desc.MediaType, Size: img.desc.Size}
	if origin != "" {
		li.From = origin
	}
	for _, m := range img.manifests {
		lp := LockPlatform{
			Platform: platforms.Format(m.platform),
			Manifest: LockBlob{Digest: m.desc.Digest, Size: m.desc.Size},
			Config:   LockBlob{Digest: m.config.Digest, Size: m.config.Size},
		}
		if m.platform.OS == "" {
			lp.Platform = "unknown"
		}
		for _, l := range m.layers {
			lp.Layers = append(lp.Layers, LockBlob{Digest: l.Digest, Size: l.Size})
		}
		li.Platforms = append(li.Platforms, lp)
	}
	for _, a := range img.attached {
		li.Signatures = append(li.Signatures, LockTag{Tag: a.Tag, Digest: a.Desc.Digest, Size: a.Desc.Size})
	}
	return li
}

// check compares what was read with the lock's entry: a lock edited by
// hand must not pass for the digests it names.
func (img image) check(want LockImage) error {
	got := img.lock("")
	if len(got.Platforms) != len(want.Platforms) {
		return fmt.Errorf("%s has %d manifests, the lock %d", img.desc.Digest, len(got.Platforms), len(want.Platforms))
	}
	for i, p := range got.Platforms {
		w := want.Platforms[i]
		if p.Config != w.Config || !equalBlobs(p.Layers, w.Layers) {
			return fmt.Errorf("manifest %s (%s) names other blobs than the lock has for it", p.Manifest.Digest, w.Platform)
		}
	}
	return nil
}

func equalBlobs(a, b []LockBlob) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// blobWriter writes each blob once.
type blobWriter struct {
	tw      *tar.Writer
	written map[digest.Digest]bool
	skip    map[digest.Digest]bool // layers a delta leaves out
	skipped int
	meter   *meter
}

// image writes an image's blobs that are not written yet: per manifest
// its layers, config, then the manifest, and last the index, each exactly
// as the store served it, so that digests hold.
func (bw *blobWriter) image(ctx context.Context, store Store, img image) error {
	for _, m := range img.manifests {
		for _, l := range m.layers {
			if bw.written[l.Digest] {
				continue
			}
			if bw.skip[l.Digest] {
				bw.written[l.Digest] = true // counted once, not written
				bw.skipped++
				continue
			}
			rc, err := store.Fetch(ctx, img.ref, l)
			if err != nil {
				return fmt.Errorf("layer %s: %w", l.Digest, err)
			}
			err = bw.blob(l, ctxReader{ctx, io.TeeReader(rc, bw.meter)})
			rc.Close()
			if err != nil {
				return fmt.Errorf("layer %s: %w", l.Digest, err)
			}
		}
		if err := bw.small(m.config, m.rawConfig); err != nil {
			return err
		}
		if err := bw.small(m.desc, m.raw); err != nil {
			return err
		}
	}
	if images.IsIndexType(img.desc.MediaType) {
		return bw.small(img.desc, img.raw)
	}
	return nil
}

func (bw *blobWriter) small(desc ocispec.Descriptor, raw []byte) error {
	if bw.written[desc.Digest] {
		return nil
	}
	return bw.blob(ocispec.Descriptor{Digest: desc.Digest, Size: int64(len(raw))}, bytes.NewReader(raw))
}

// blob writes one blob, checking its size and digest as it goes: a bad
// blob fails the bundle instead of landing in it.
func (bw *blobWriter) blob(desc ocispec.Descriptor, r io.Reader) error {
	d := desc.Digest
	hdr := &tar.Header{Name: ocispec.ImageBlobsDir + "/" + d.Algorithm().String() + "/" + d.Encoded(), Mode: 0o644, Size: desc.Size, Typeflag: tar.TypeReg}
	if err := bw.tw.WriteHeader(hdr); err != nil {
		return err
	}
	v := d.Verifier()
	n, err := io.Copy(bw.tw, io.TeeReader(io.LimitReader(r, desc.Size+1), v))
	switch {
	case err != nil:
		return err
	case n != desc.Size:
		return fmt.Errorf("got %d bytes, want %d", n, desc.Size)
	case !v.Verified():
		return fmt.Errorf("content does not match its digest")
	}
	bw.written[d] = true
	return nil
}

func writeFile(tw *tar.Writer, name string, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}
