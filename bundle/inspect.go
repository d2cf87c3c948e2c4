package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// ReadLock reads the lock of a bundle: path is a bundle (plain, gzip or
// zstd, whatever its name), the first part of a split one (or the name
// its parts share), or a lock file itself.
func ReadLock(path string) (*Lock, error) {
	if strings.HasSuffix(path, ".lock") {
		l, _, err := LoadLock(path)
		return l, err
	}
	r, err := openBundle(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	br := bufio.NewReader(r)
	head, _ := br.Peek(512)
	var stream io.Reader = br
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		defer zr.Close()
		stream = zr
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		defer zr.Close()
		stream = zr
	case len(head) < 262 || string(head[257:262]) != "ustar":
		// Not an archive: a lock file by another name.
		data, err := io.ReadAll(io.LimitReader(br, maxSmall))
		if err != nil {
			return nil, err
		}
		l, err := ParseLock(data)
		if err != nil {
			return nil, fmt.Errorf("%s is neither a bundle (tar, gzip or zstd) nor a lock: %s:%w", path, path, err)
		}
		return l, nil
	}
	tr := tar.NewReader(stream)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s has no %s: written by an older preloader, or not by preloader bundle", path, LockEntry)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if strings.TrimPrefix(hdr.Name, "./") != LockEntry {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(tr, maxSmall))
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, LockEntry, err)
		}
		l, err := ParseLock(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %s:%w", path, LockEntry, err)
		}
		return l, nil
	}
}

// openBundle opens a bundle file, or its parts one after the other.
func openBundle(path string) (io.ReadCloser, error) {
	base := path
	if n := partNumber(path); n > 0 {
		if n != 1 {
			return nil, fmt.Errorf("%s is part %d: give the first part, %s", path, n, PartName(strings.TrimSuffix(path, partSuffix.FindString(path)), 1))
		}
		base = strings.TrimSuffix(path, partSuffix.FindString(path))
	} else if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if _, perr := os.Stat(PartName(path, 1)); perr != nil {
			return nil, err
		}
	} else {
		return os.Open(path)
	}
	return &parts{base: base}, nil
}

// parts reads a split bundle's parts in order, up to the first one
// missing.
type parts struct {
	base string
	n    int
	cur  *os.File
}

func (p *parts) Read(b []byte) (int, error) {
	for {
		if p.cur == nil {
			f, err := os.Open(PartName(p.base, p.n+1))
			if errors.Is(err, os.ErrNotExist) && p.n > 0 {
				return 0, io.EOF
			}
			if err != nil {
				return 0, err
			}
			p.cur, p.n = f, p.n+1
		}
		n, err := p.cur.Read(b)
		if errors.Is(err, io.EOF) {
			p.cur.Close()
			p.cur = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (p *parts) Close() error {
	if p.cur != nil {
		return p.cur.Close()
	}
	return nil
}
