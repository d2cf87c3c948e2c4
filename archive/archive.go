// Package archive reads image archives as users bring them to air-gapped
// nodes: `docker save` output (the classic layout and Docker 25's combined
// OCI layout) and OCI image layouts, as plain tar, gzip or zstd, in one
// file or split byte-wise into numbered parts. It checks an archive's
// structure and metadata before anything is imported and says
// what it holds, and checks the layers as the import reads them; the
// import itself is the containerd package's job.
package archive

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Compressions of the outer file, detected by content, never by name.
const (
	Plain = "none"
	Gzip  = "gzip"
	Zstd  = "zstd"
)

// File is an image archive open for reading.
type File struct {
	Path        string
	Compression string
	// Parts are the files it is read from when it is split into parts
	// (Path itself does not exist then), in order.
	Parts []string

	f     source
	parts *parts
}

// Open opens name, a path relative to dir or an absolute path below it,
// refusing anything that resolves outside dir, symbolic links included: the
// node's archive directory is the only place archives are read from.
//
// When name does not exist but its parts do (name.part-001, …), Open reads
// them as one file; a gap in their numbering is an error that wraps
// ErrIncomplete and names the missing part.
func Open(dir, name string) (*File, error) {
	rel := name
	if filepath.IsAbs(name) {
		var err error
		if rel, err = filepath.Rel(dir, name); err != nil {
			return nil, fmt.Errorf("archive %s: outside archiveDir %s", name, dir)
		}
	}
	path := filepath.Join(dir, rel)
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	defer root.Close()
	f, err := root.Open(rel)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			p, perr := openParts(root, dir, rel)
			switch {
			case perr != nil:
				return nil, fmt.Errorf("archive %s: %w", path, perr)
			case p != nil:
				return newFile(path, p, p)
			}
			return nil, fmt.Errorf("archive %s: %w", path, os.ErrNotExist)
		}
		// os.Root reports escapes (.., symlinks pointing out) as a generic
		// error; say what it means here.
		if _, statErr := os.Stat(path); statErr == nil {
			return nil, fmt.Errorf("archive %s: resolves outside archiveDir %s: %w", path, dir, err)
		}
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errors.New("not a regular file")
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	return newFile(path, f, nil)
}

func newFile(path string, f source, p *parts) (*File, error) {
	a := &File{Path: path, f: f, parts: p}
	if p != nil {
		for _, pt := range p.files {
			a.Parts = append(a.Parts, pt.path)
		}
	}
	var err error
	if a.Compression, err = detect(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	return a, nil
}

// Close closes the file.
func (a *File) Close() error { return a.f.Close() }

// Tar returns the archive's tar stream from its start, decompressed. Close
// it before the next call.
func (a *File) Tar() (io.ReadCloser, error) {
	if _, err := a.f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("archive %s: %w", a.Path, err)
	}
	if a.Compression == Plain {
		return io.NopCloser(a.f), nil
	}
	// A large buffer: the decompressors read in small pieces.
	br := bufio.NewReaderSize(a.f, 1<<20)
	switch a.Compression {
	case Gzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("archive %s: gzip: %w", a.Path, err)
		}
		return zr, nil
	case Zstd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(1<<30))
		if err != nil {
			return nil, fmt.Errorf("archive %s: zstd: %w", a.Path, err)
		}
		return zr.IOReadCloser(), nil
	}
	return nil, fmt.Errorf("archive %s: unknown compression %q", a.Path, a.Compression)
}

var magics = []struct {
	magic       []byte
	compression string
	unsupported bool
}{
	{[]byte{0x1f, 0x8b}, Gzip, false},
	{[]byte{0x28, 0xb5, 0x2f, 0xfd}, Zstd, false},
	{[]byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, "xz", true},
	{[]byte("BZh"), "bzip2", true},
}

// detect reads the magic bytes at the start of the file.
func detect(f io.ReaderAt) (string, error) {
	head := make([]byte, 6)
	n, err := f.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return "", err
	}
	head = head[:n]
	for _, m := range magics {
		if bytes.HasPrefix(head, m.magic) {
			if m.unsupported {
				return "", fmt.Errorf("compressed with %s; use plain tar, gzip or zstd", m.compression)
			}
			return m.compression, nil
		}
	}
	return Plain, nil
}
