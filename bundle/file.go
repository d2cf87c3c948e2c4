package bundle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
)

// PartName is the name of a split bundle's nth part (from 1).
func PartName(path string, n int) string { return fmt.Sprintf("%s.part-%03d", path, n) }

var partSuffix = regexp.MustCompile(`\.part-(\d{3,})$`)

// File is a bundle file being written: whole, or split byte-wise into
// parts of at most a size. Everything goes to temporary names beside the
// file until Commit, so that no half bundle is ever imported.
type File struct {
	path  string
	max   int64      // 0: one file
	parts []*os.File // open, until Commit or Abort
	count int        // parts started
	n     int64      // bytes in the last part
}

// Create starts writing the bundle path, split into parts of at most
// maxPartSize bytes unless it is 0.
func Create(path string, maxPartSize int64) (*File, error) {
	if maxPartSize == 0 {
		// A rename over a device (-o /dev/null) would replace the device
		// node.
		if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file", path)
		}
	}
	f := &File{path: path, max: maxPartSize}
	if err := f.next(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *File) next() error {
	name := filepath.Base(f.path)
	if f.max > 0 {
		name = filepath.Base(PartName(f.path, f.count+1))
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.path), "."+name+".*")
	if err != nil {
		return err
	}
	f.parts = append(f.parts, tmp)
	f.count++
	f.n = 0
	return nil
}

func (f *File) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		if f.max > 0 && f.n == f.max {
			if err := f.next(); err != nil {
				return written, err
			}
		}
		chunk := b
		if f.max > 0 && int64(len(chunk)) > f.max-f.n {
			chunk = chunk[:f.max-f.n]
		}
		n, err := f.parts[len(f.parts)-1].Write(chunk)
		written += n
		f.n += int64(n)
		if err != nil {
			return written, err
		}
		b = b[n:]
	}
	return written, nil
}

// Names are the files Commit puts in place: the bundle, or its parts.
func (f *File) Names() []string {
	if f.max == 0 {
		return []string{f.path}
	}
	names := make([]string, f.count)
	for i := range names {
		names[i] = PartName(f.path, i+1)
	}
	return names
}

// Commit puts the bundle in place, and its lock beside it as path.lock.
// Parts of an earlier bundle of the same name that this one does not
// overwrite are removed first (and the whole file, when this one is
// split, or the other way round): left there, they would be read as part
// of it. Parts are renamed last to first, so that the first part appears
// when the others are there.
func (f *File) Commit(lock []byte) error {
	for _, p := range f.parts {
		if err := p.Chmod(0o644); err != nil {
			return err
		}
		if err := p.Sync(); err != nil {
			return err
		}
		if err := p.Close(); err != nil {
			return err
		}
	}
	lockTmp, err := writeTemp(f.path+".lock", lock)
	if err != nil {
		return err
	}
	names := f.Names()
	if err := f.removeStale(names); err != nil {
		os.Remove(lockTmp)
		return err
	}
	for i := len(f.parts) - 1; i >= 0; i-- {
		if err := os.Rename(f.parts[i].Name(), names[i]); err != nil {
			os.Remove(lockTmp)
			return err
		}
	}
	f.parts = nil
	return os.Rename(lockTmp, f.path+".lock")
}

func (f *File) removeStale(keep []string) error {
	old, err := filepath.Glob(f.path + ".part-*")
	if err != nil {
		return err
	}
	if f.max > 0 {
		old = append(old, f.path)
	}
	var errs []error
	for _, o := range old {
		if o != f.path && !partSuffix.MatchString(o[len(f.path):]) || slices.Contains(keep, o) {
			continue
		}
		if err := os.Remove(o); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s of an earlier bundle: %w", o, err))
		}
	}
	return errors.Join(errs...)
}

// Abort removes what was written.
func (f *File) Abort() {
	for _, p := range f.parts {
		p.Close()
		os.Remove(p.Name())
	}
	f.parts = nil
}

func writeTemp(path string, data []byte) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return "", err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// partNumber is the number of a part file's name, or 0.
func partNumber(path string) int {
	m := partSuffix.FindStringSubmatch(path)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
