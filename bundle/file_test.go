package bundle_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kube-preloader/kube-preloader/archive/archivetest"
	"github.com/kube-preloader/kube-preloader/bundle"
)

// A split bundle is FILE.part-001… whose concatenation is the bundle,
// written under temporary names until Commit; parts of an earlier bundle
// of the same name do not survive; the lock is read from any form.
func TestFilePartsAndReadLock(t *testing.T) {
	reg := newTestRegistry(t)
	reg.index("app:1", 50, "linux/amd64", "linux/arm64")
	data, lock, err := write(t, reg.host, bundle.Options{Platforms: platformsOf(t, "all")}, bundle.Source{Name: reg.host + "/app:1"})
	if err != nil {
		t.Fatal(err)
	}
	rawLock, _ := lock.Marshal()
	dir := t.TempDir()
	path := filepath.Join(dir, "images.tar")
	// An earlier bundle in five parts, and one whole.
	for _, name := range []string{"images.tar", "images.tar.part-001", "images.tar.part-005", "images.tar.part-1000", "images.tar.part-x"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	const max = 4000
	f, err := bundle.Create(path, max)
	if err != nil {
		t.Fatal(err)
	}
	for chunk := range slices.Chunk(data, 1500) {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 5+(len(data)+max-1)/max {
		t.Errorf("before Commit: %d files, want the old ones and one temporary per part", len(entries))
	}
	if err := f.Commit(rawLock); err != nil {
		t.Fatal(err)
	}
	if names := f.Names(); len(names) != (len(data)+max-1)/max || names[0] != bundle.PartName(path, 1) {
		t.Errorf("Names after Commit: %q", names)
	}
	var joined []byte
	want := (len(data) + max - 1) / max
	for i := 1; i <= want; i++ {
		b, err := os.ReadFile(bundle.PartName(path, i))
		if err != nil {
			t.Fatal(err)
		}
		if i < want && len(b) != max {
			t.Errorf("part %d: %d bytes, want %d", i, len(b), max)
		}
		joined = append(joined, b...)
	}
	if !bytes.Equal(joined, data) {
		t.Errorf("the parts joined are not the bundle (%d bytes, want %d)", len(joined), len(data))
	}
	var names []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	wantNames := []string{"images.tar.lock", "images.tar.part-x"}
	for i := 1; i <= want; i++ {
		wantNames = append(wantNames, filepath.Base(bundle.PartName(path, i)))
	}
	slices.Sort(wantNames)
	if !slices.Equal(names, wantNames) {
		t.Errorf("files after Commit: %q, want %q", names, wantNames)
	}
	if got, _ := os.ReadFile(path + ".lock"); !bytes.Equal(got, rawLock) {
		t.Errorf("the lock beside the bundle is not its lock:\n%s", got)
	}

	gz, err := archivetest.Compress(data, "gzip")
	if err != nil {
		t.Fatal(err)
	}
	zst, err := archivetest.Compress(data, "zstd")
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{"plain.tar": data, "b.tgz": gz, "b.tar.zst": zst, "noext": zst, "lockfile": rawLock} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{path, bundle.PartName(path, 1), path + ".lock", "plain.tar", "b.tgz", "b.tar.zst", "noext", "lockfile"} {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		got, err := bundle.ReadLock(p)
		if err != nil {
			t.Errorf("ReadLock(%s): %v", filepath.Base(p), err)
			continue
		}
		if b, _ := got.Marshal(); !bytes.Equal(b, rawLock) {
			t.Errorf("ReadLock(%s) = %s", filepath.Base(p), b)
		}
	}
	if _, err := bundle.ReadLock(bundle.PartName(path, 2)); err == nil {
		t.Error("ReadLock of part 2: want an error asking for the first part")
	}

	// Written whole again: the parts go.
	f, err = bundle.Create(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(rawLock); err != nil {
		t.Fatal(err)
	}
	if parts, _ := filepath.Glob(path + ".part-0*"); len(parts) != 0 {
		t.Errorf("parts of the split bundle left beside the whole one: %q", parts)
	}
}
