package archive

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// partSep separates a bundle's file name from the number of one of its
// parts: FILE.part-001, FILE.part-002, … (three digits, more past 999).
const partSep = ".part-"

// ErrIncomplete is what an archive reports when it is split into parts
// and not all of them are there yet.
var ErrIncomplete = errors.New("incomplete")

// PartOf tells whether name is one part of a split archive: it returns the
// archive's file name and the part's number. A number written otherwise
// than the writer writes it (part-01, part-0001) is not a part.
func PartOf(name string) (file string, n int, ok bool) {
	i := strings.LastIndex(name, partSep)
	if i <= 0 {
		return "", 0, false
	}
	digits := name[i+len(partSep):]
	n, err := strconv.Atoi(digits)
	if err != nil || n < 1 || digits != partName("", n)[len(partSep):] {
		return "", 0, false
	}
	return name[:i], n, true
}

func partName(file string, n int) string { return fmt.Sprintf("%s%s%03d", file, partSep, n) }

// source is what an archive is read from: one file, or the parts of one.
type source interface {
	io.ReadSeeker
	io.ReaderAt
	io.Closer
}

// openParts opens the parts of rel (a path below root's directory) as one
// file, or returns nil, nil if it has none. A gap in the numbering is
// reported naming the missing part; a set that ends early shows when the
// archive is read.
func openParts(root *os.Root, dir, rel string) (*parts, error) {
	d, err := root.Open(filepath.Dir(rel))
	if err != nil {
		return nil, nil
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, nil
	}
	base := filepath.Base(rel)
	var nums []int
	for _, n := range names {
		if f, num, ok := PartOf(n); ok && f == base {
			nums = append(nums, num)
		}
	}
	if len(nums) == 0 {
		return nil, nil
	}
	sort.Ints(nums)
	path := filepath.Join(dir, rel)
	var missing []string
	for want := 1; want <= nums[len(nums)-1]; want++ {
		if !slices.Contains(nums, want) {
			missing = append(missing, filepath.Base(partName(path, want)))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s missing (the directory has %d of its parts, up to %s)",
			ErrIncomplete, partList(missing), len(nums), filepath.Base(partName(path, nums[len(nums)-1])))
	}
	p := &parts{}
	for _, num := range nums {
		name := partName(rel, num)
		f, err := root.Open(name)
		if err == nil {
			var fi os.FileInfo
			if fi, err = f.Stat(); err == nil && !fi.Mode().IsRegular() {
				err = errors.New("not a regular file")
			}
			if err == nil {
				p.files = append(p.files, part{f: f, path: filepath.Join(dir, name), start: p.size, size: fi.Size()})
				p.size += fi.Size()
				continue
			}
			f.Close()
		}
		p.Close()
		return nil, fmt.Errorf("part %s: %w", filepath.Join(dir, name), err)
	}
	return p, nil
}

func partList(names []string) string {
	if len(names) == 1 {
		return "part " + names[0] + " is"
	}
	if len(names) > 5 {
		names = append(names[:5:5], fmt.Sprintf("and %d more", len(names)-5))
	}
	return "parts " + strings.Join(names, ", ") + " are"
}

// parts reads the parts of an archive as their concatenation.
type parts struct {
	files []part
	size  int64
	pos   int64
}

type part struct {
	f     *os.File
	path  string
	start int64 // of the part in the concatenation
	size  int64
}

// next names the part after the last, the one an archive that ends early
// waits for, and the last, which may be still being copied.
func (p *parts) next() (missing, last string) {
	l := p.files[len(p.files)-1]
	file, n, _ := PartOf(filepath.Base(l.path))
	return partName(file, n+1), filepath.Base(l.path)
}

func (p *parts) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	i := sort.Search(len(p.files), func(i int) bool { return p.files[i].start+p.files[i].size > off })
	total := 0
	for ; len(b) > 0 && i < len(p.files); i++ {
		pt := p.files[i]
		want := min(int64(len(b)), pt.start+pt.size-off)
		n, err := pt.f.ReadAt(b[:want], off-pt.start)
		total += n
		off += int64(n)
		b = b[n:]
		if err != nil && (err != io.EOF || int64(n) < want) {
			if err == io.EOF {
				// The part shrank since it was opened.
				err = io.ErrUnexpectedEOF
			}
			return total, err
		}
	}
	if len(b) > 0 {
		return total, io.EOF
	}
	return total, nil
}

func (p *parts) Read(b []byte) (int, error) {
	n, err := p.ReadAt(b, p.pos)
	p.pos += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

func (p *parts) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += p.pos
	case io.SeekEnd:
		offset += p.size
	default:
		return 0, errors.New("invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("negative position")
	}
	p.pos = offset
	return offset, nil
}

func (p *parts) Close() error {
	var errs []error
	for _, pt := range p.files {
		errs = append(errs, pt.f.Close())
	}
	return errors.Join(errs...)
}
