package daemons

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"io"
	"testing"
)

// TestCompressibleLayer: the layer's digests are those of the bytes it
// hands out, its tar holds one file of the asked size, gzip about halves
// it, and the seed alone decides the blob.
func TestCompressibleLayer(t *testing.T) {
	const size = 4 << 20
	dir := t.TempDir()
	layer := func(seed string) *fileLayer {
		t.Helper()
		l, err := CompressibleLayer(dir, seed, size)
		if err != nil {
			t.Fatal(err)
		}
		return l.(*fileLayer)
	}
	l := layer("a")
	sum := func(open func() (io.ReadCloser, error)) (string, int64) {
		t.Helper()
		rc, err := open()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		h := sha256.New()
		n, err := io.Copy(h, rc)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("sha256:%x", h.Sum(nil)), n
	}
	if got, n := sum(l.Compressed); got != l.digest.String() || n != l.size {
		t.Errorf("compressed: %s, %d bytes; layer says %s, %d", got, n, l.digest, l.size)
	}
	if got, _ := sum(l.Uncompressed); got != l.diffID.String() {
		t.Errorf("uncompressed: %s; layer says DiffID %s", got, l.diffID)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var files []int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, h.Size)
	}
	if len(files) != 1 || files[0] != size {
		t.Errorf("tar holds files of sizes %v, want one of %d", files, size)
	}
	if ratio := float64(l.size) / size; ratio < 0.45 || ratio > 0.6 {
		t.Errorf("compressed to %.2f of its size, want about half", ratio)
	}
	if again := layer("a"); again.digest != l.digest {
		t.Errorf("same seed, blobs %s and %s", l.digest, again.digest)
	}
	if other := layer("b"); other.digest == l.digest {
		t.Errorf("seeds a and b give the same blob %s", l.digest)
	}
}
