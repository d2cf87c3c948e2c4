package preload

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/containerd/platforms"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/artifact"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// criVisibleTimeout bounds the wait for the CRI to show an image recorded
// through containerd's API: the CRI plugin learns of it from an event.
const criVisibleTimeout = 10 * time.Second

// importArchives imports every archive an image names and every archive
// in cfg.ArchiveDir, each file once. It returns results by image name for
// images (those with an archive, and those an archive in the directory
// provided), and results for the archives' other images.
func (e *Engine) importArchives(ctx context.Context, cfg *config.Config, images []config.Image, ids map[string]string) (byName map[string]Result, extra []Result) {
	files, wanted := archiveFiles(cfg, images)
	if len(files) == 0 {
		return nil, nil
	}
	listed := make(map[string]bool, len(images))
	for _, img := range images {
		listed[img.Name] = true
	}
	byName = make(map[string]Result)
	for _, f := range files {
		for _, r := range e.importArchive(ctx, cfg, f, wanted[f], ids) {
			if listed[r.Image] {
				byName[r.Image] = r
			} else {
				extra = append(extra, r)
			}
		}
	}
	return byName, extra
}

// archiveFiles lists the archives to import, as paths relative to
// cfg.ArchiveDir: those images name, then the rest of the directory's
// files, sorted. The parts of a split archive (FILE.part-001, …) are the
// one archive FILE. Hidden files (an upload in progress) and the files
// carried beside archives (carriedBeside) are left out.
func archiveFiles(cfg *config.Config, images []config.Image) (files []string, wanted map[string][]config.Image) {
	wanted = make(map[string][]config.Image)
	for _, img := range images {
		if img.Archive == "" {
			continue
		}
		f := filepath.Clean(img.Archive)
		if whole, _, ok := archive.PartOf(f); ok {
			f = whole
		}
		if _, ok := wanted[f]; !ok {
			files = append(files, f)
		}
		wanted[f] = append(wanted[f], img)
	}
	entries, err := os.ReadDir(cfg.ArchiveDir)
	if err != nil {
		// No directory, no archives: the default directory exists only
		// where someone put archives. Anything else shows when an image
		// names an archive in it.
		return files, wanted
	}
	var rest []string
	for _, d := range entries {
		name := d.Name()
		if d.IsDir() || strings.HasPrefix(name, ".") || carriedBeside(name) {
			continue
		}
		if whole, _, ok := archive.PartOf(name); ok {
			name = whole
		}
		if _, ok := wanted[name]; !ok && !slices.Contains(rest, name) {
			rest = append(rest, name)
		}
	}
	sort.Strings(rest)
	return append(files, rest...), wanted
}

// carriedBeside tells the files that travel with archives and are none: a
// bundle's lock (FILE.lock), checksums and detached signatures.
func carriedBeside(name string) bool {
	switch filepath.Ext(name) {
	case ".lock", ".sha256", ".sha512", ".sig", ".asc":
		return true
	}
	return name == "SHA256SUMS" || name == "SHA512SUMS"
}

// importArchive imports one archive unless the runtime already has all of
// its images, by config digest. It returns a result for each image of
// wanted and each name the archive records, or for the file when it
// cannot be read and no image names it.
func (e *Engine) importArchive(ctx context.Context, cfg *config.Config, file string, wanted []config.Image, ids map[string]string) []Result {
	start := time.Now()
	dir := cfg.ArchiveDir
	path := filepath.Join(dir, file)
	fail := func(reason failure.Reason, err error) []Result {
		e.log().Warn("archive failed", "archive", path, "reason", reason, "err", err)
		r := Result{Image: path, Source: path, Status: StatusFailed, Reason: reason, Error: err.Error(), Duration: time.Since(start)}
		if len(wanted) == 0 {
			return []Result{r}
		}
		var rs []Result
		for _, img := range wanted {
			r.Image = img.Name
			rs = append(rs, r)
		}
		return rs
	}
	if err := e.importer().Can(noderuntime.OpImport); err != nil {
		return fail(failure.Unsupported, fmt.Errorf("archive %s: %w", path, err))
	}
	a, err := archive.Open(dir, file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fail(failure.NotFound, err)
		}
		return fail(failure.Archive, err)
	}
	defer a.Close()
	contents, err := archive.Inspect(ctx, a, platforms.DefaultSpec())
	var art *artifact.Error
	switch {
	case errors.As(err, &art):
		return fail(failure.Unsupported, err)
	case err != nil:
		return fail(failure.Archive, err)
	}
	imgs, unavailable := contents.Images, contents.Unavailable

	var results []Result
	result := func(name string, status Status, reason failure.Reason, err error) {
		r := Result{Image: name, Status: status, Source: path, Reason: reason, Duration: time.Since(start)}
		if err != nil {
			r.Error = err.Error()
			e.log().Warn("archive failed", "archive", path, "image", name, "reason", reason, "err", err)
		}
		results = append(results, r)
	}
	// An image that names this archive is found in it by name, or is its
	// only image, whatever the archive calls it.
	for _, w := range wanted {
		switch {
		case slices.ContainsFunc(imgs, func(i archive.Image) bool { return slices.Contains(i.Names, w.Name) }):
		case slices.ContainsFunc(unavailable, func(u *archive.PlatformError) bool { return slices.Contains(u.Names, w.Name) }):
		case len(imgs) == 1 && len(unavailable) == 0:
			imgs[0].Names = append(imgs[0].Names, w.Name)
		case len(imgs) == 0 && len(unavailable) == 1:
			unavailable[0].Names = append(unavailable[0].Names, w.Name)
		default:
			result(w.Name, StatusFailed, failure.Archive, fmt.Errorf("archive %s holds %d images and none is named %s (it has %s)", path, len(imgs)+len(unavailable), w.Name, archiveNames(imgs, unavailable)))
		}
	}
	// An image without the node's platform fails by name; the archive's
	// other images are imported.
	for _, u := range unavailable {
		err := fmt.Errorf("archive %s: %w", path, u)
		if len(u.Names) == 0 {
			result(fmt.Sprintf("%s (%s)", path, u.Digest), StatusFailed, failure.Archive, err)
		}
		for _, n := range u.Names {
			result(n, StatusFailed, failure.Archive, err)
		}
	}
	imgs = e.verifyArchived(ctx, path, contents, imgs, func(name string, err error) {
		result(name, StatusFailed, failure.Signature, err)
	})
	var named []archive.Image
	present := true
	for _, img := range imgs {
		if len(img.Names) == 0 {
			result(fmt.Sprintf("%s (%s)", path, img.Config), StatusFailed, failure.Archive,
				fmt.Errorf("archive %s: image %s has no name; name it in the archive, or give it one with `archive:` on an image entry", path, img.Config))
			continue
		}
		named = append(named, img)
		for _, n := range img.Names {
			present = present && ids[presenceKey(n)] == img.Config.String()
		}
	}
	if len(named) == 0 {
		return results
	}
	if present {
		for _, img := range named {
			for _, n := range img.Names {
				result(n, StatusPresent, failure.Reason{}, nil)
			}
		}
		return results
	}

	if err := e.importRetrying(ctx, cfg.Retry, path, contents, named); err != nil {
		reason := importReason(ctx, err)
		if errors.Is(err, archive.ErrIncomplete) {
			err = fmt.Errorf("archive %s: %w", path, err)
		} else {
			err = fmt.Errorf("archive %s: import: %w", path, err)
		}
		for _, img := range named {
			for _, n := range img.Names {
				result(n, StatusFailed, reason, err)
			}
		}
		return results
	}
	e.log().Info("imported", "archive", path, "compression", a.Compression, "images", len(named), "seconds", time.Since(start).Seconds())
	for _, img := range named {
		for _, n := range img.Names {
			status := StatusImported
			if ids[presenceKey(n)] == img.Config.String() {
				status = StatusPresent
			}
			if err := e.awaitCRI(ctx, n, img.Config.String()); err != nil {
				result(n, StatusFailed, failure.Import, fmt.Errorf("archive %s: %w", path, err))
				continue
			}
			result(n, status, failure.Reason{}, nil)
		}
	}
	return results
}

// importRetrying imports, and imports again with backoff while containerd
// is unavailable (restarting): an air-gapped node has no registry to fall
// back on, and its containerd is usually back within seconds. Anything
// else is final, as a bad or oversized archive stays so.
func (e *Engine) importRetrying(ctx context.Context, retry config.Retry, path string, contents *archive.Contents, imgs []archive.Image) error {
	backoff := retry.Backoff()
	for attempt := 1; ; attempt++ {
		err := e.importer().Import(ctx, contents, imgs)
		if err == nil || importReason(ctx, err) != failure.Runtime || attempt == e.MaxAttempts {
			return err
		}
		wait := backoff.Step()
		e.log().Info("import failed, retrying", "archive", path, "reason", failure.Runtime, "attempt", attempt, "retryIn", wait.Round(time.Millisecond).String(), "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// awaitCRI waits until CRI ImageStatus of ref reports image id: the CRI
// plugin updates its image cache from containerd's events, shortly after
// an image is recorded through containerd's API.
func (e *Engine) awaitCRI(ctx context.Context, ref, id string) error {
	ctx, cancel := context.WithTimeout(ctx, criVisibleTimeout)
	defer cancel()
	var got *runtimeapi.Image
	var err error
	for {
		got, err = e.presence().ImageStatus(ctx, ref)
		if err == nil && got != nil && (id == "" || got.Id == id) {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("CRI ImageStatus(%s) does not show it after %s", ref, criVisibleTimeout)
			}
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// importReason tells the runtime's troubles from the rest.
func importReason(ctx context.Context, err error) failure.Reason {
	if cerr := ctx.Err(); cerr != nil {
		// The run ended (SIGTERM, --timeout): whatever containerd's cut
		// stream said ("error getting writer status: EOF"), that is why
		// the import stopped, and nothing is retried.
		err = cerr
	}
	if errors.Is(err, archive.ErrCorrupt) || errors.Is(err, archive.ErrIncomplete) {
		// A layer found corrupt as it was written, or a delta's layers
		// that the node lacks.
		return failure.Archive
	}
	switch reason, _ := Classify(err); reason {
	case failure.Runtime, failure.NoSpace, failure.Canceled, failure.Timeout:
		return reason
	}
	return failure.Import
}

// imageIDs maps every reference the runtime lists to its image ID.
func imageIDs(images []*runtimeapi.Image) map[string]string {
	ids := make(map[string]string)
	for _, img := range images {
		for _, t := range img.RepoTags {
			ids[t] = img.Id
		}
		for _, d := range img.RepoDigests {
			ids[d] = img.Id
		}
	}
	return ids
}

func archiveNames(imgs []archive.Image, unavailable []*archive.PlatformError) string {
	var names []string
	for _, img := range imgs {
		names = append(names, img.Names...)
	}
	for _, u := range unavailable {
		names = append(names, u.Names...)
	}
	if len(names) == 0 {
		return "no names"
	}
	return strings.Join(names, ", ")
}
