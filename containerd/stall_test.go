package containerd

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// step is one Read of a fakeBlob: wait for a value of hold (a channel
// the test holds open) or return n bytes at once.
type step struct {
	n    int
	hold bool
}

// fakeBlob answers Reads by its steps, then EOF; a held step blocks until
// the test ends, as a registry that stopped sending does.
type fakeBlob struct {
	steps []step
	held  chan struct{}
	pos   int64
}

func (f *fakeBlob) Read(p []byte) (int, error) {
	if len(f.steps) == 0 {
		return 0, io.EOF
	}
	s := f.steps[0]
	f.steps = f.steps[1:]
	if s.hold {
		<-f.held
		return 0, errors.New("released")
	}
	f.pos += int64(s.n)
	return s.n, nil
}

func (f *fakeBlob) Seek(offset int64, _ int) (int64, error) { f.pos = offset; return offset, nil }
func (f *fakeBlob) Close() error                            { return nil }

func TestStallReader(t *testing.T) {
	const stall = 100 * time.Millisecond
	tests := []struct {
		name  string
		seek  int64
		steps []step
		// pause is what the consumer spends between Reads (writing to a
		// slow disk): not time the download waits.
		pause    time.Duration
		wantStop string // "" if the pull must not be cut
	}{
		{name: "body stops after its first bytes", steps: []step{{n: 4096}, {n: 4096}, {hold: true}}, wantStop: "at 8192 of 1048576 bytes: no bytes for 100ms"},
		{name: "stops before the first byte", steps: []step{{hold: true}}, wantStop: "at 0 of 1048576 bytes"},
		{name: "empty reads are part of the wait", steps: []step{{n: 10}, {n: 0}, {n: 0}, {hold: true}}, wantStop: "at 10 of 1048576 bytes"},
		{name: "a resumed download counts from where it resumed", seek: 65536, steps: []step{{n: 1}, {hold: true}}, wantStop: "at 65537 of 1048576 bytes"},
		{name: "slow consumer is no stall", steps: []step{{n: 1}, {n: 1}, {n: 1}}, pause: 3 * stall},
		{name: "steady body", steps: []step{{n: 1}, {n: 1}, {n: 1}, {n: 1}, {n: 1}, {n: 1}}, pause: stall / 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, stalled, stop := cutStalls(WithWatch(context.Background(), Watch{Stall: stall}))
			defer stop()
			fb := &fakeBlob{steps: tt.steps, held: make(chan struct{})}
			defer close(fb.held)
			desc := ocispec.Descriptor{Digest: blobDesc([]byte("x")).Digest, Size: 1 << 20}
			rc := watchStall(ctx, desc, fb)
			if tt.seek > 0 {
				if _, err := rc.(io.Seeker).Seek(tt.seek, io.SeekStart); err != nil {
					t.Fatal(err)
				}
			}
			ended := make(chan struct{})
			go func() {
				defer close(ended)
				buf := make([]byte, 8192)
				for {
					if _, err := rc.Read(buf); err != nil {
						return
					}
					time.Sleep(tt.pause)
				}
			}()
			if tt.wantStop == "" {
				<-ended
				if err := context.Cause(ctx); err != nil {
					t.Fatalf("pull cut: %v", err)
				}
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("a held download was not cut")
			}
			err := stalled(context.Canceled)
			if !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), tt.wantStop) || !strings.Contains(err.Error(), desc.Digest.String()) {
				t.Errorf("err = %v, want ErrStalled naming the blob and %q", err, tt.wantStop)
			}
		})
	}
}

// TestStallReaderOff: without a stall timeout, or for a fetch outside a
// pull that watches, readers are handed over untouched.
func TestStallReaderOff(t *testing.T) {
	fb := &fakeBlob{}
	for _, ctx := range []context.Context{context.Background(), WithWatch(context.Background(), Watch{})} {
		ctx, stalled, stop := cutStalls(ctx)
		if rc := watchStall(ctx, ocispec.Descriptor{}, fb); rc != io.ReadCloser(fb) {
			t.Errorf("reader wrapped without a stall timeout")
		}
		if err := stalled(context.Canceled); err != context.Canceled {
			t.Errorf("stalled(canceled) = %v", err)
		}
		stop()
	}
}
