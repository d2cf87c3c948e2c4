package containerd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// infos is a content store's Info: the blobs it holds, by digest.
type infos map[digest.Digest]content.Info

func (i infos) Info(_ context.Context, d digest.Digest) (content.Info, error) {
	if info, ok := i[d]; ok {
		return info, nil
	}
	return content.Info{}, fmt.Errorf("content %s: %w", d, errdefs.ErrNotFound)
}

func ingest(kind string, d ocispec.Descriptor, off int64) content.Status {
	return content.Status{Ref: kind + "-" + d.Digest.String(), Offset: off, Total: d.Size}
}

// TestFollow feeds a followed CRI pull what containerd's content store
// shows, tick by tick, and checks what the pull's watcher sees.
func TestFollow(t *testing.T) {
	const stall = 2 * time.Second
	start := time.Unix(1000, 0)
	config := ocispec.Descriptor{Digest: digest.FromString("config"), Size: 100}
	layer1 := ocispec.Descriptor{Digest: digest.FromString("layer1"), Size: 1000}
	layer2 := ocispec.Descriptor{Digest: digest.FromString("layer2"), Size: 5000}
	other := ocispec.Descriptor{Digest: digest.FromString("another pull's"), Size: 700}
	base := ocispec.Descriptor{Digest: digest.FromString("base"), Size: 9000}
	blobs := []ocispec.Descriptor{config, base, layer1, layer2}

	type tick struct {
		at      time.Duration // after start
		ingests []content.Status
		in      []ocispec.Descriptor // committed by now
	}
	tests := []struct {
		name     string
		before   []content.Status
		ticks    []tick
		wantStop string // "" if the pull must not be cut
		wantDone int64
	}{
		{
			name: "downloads that move",
			ticks: []tick{
				{at: 1 * time.Second, ingests: []content.Status{ingest("layer", layer1, 10), ingest("layer", layer2, 10)}},
				{at: 2 * time.Second, ingests: []content.Status{ingest("layer", layer1, 500), ingest("layer", layer2, 20)}},
				{at: 3 * time.Second, ingests: []content.Status{ingest("layer", layer2, 30)}, in: []ocispec.Descriptor{layer1}},
				{at: 4 * time.Second, ingests: []content.Status{ingest("layer", layer2, 40)}},
				{at: 9 * time.Second, ingests: []content.Status{ingest("layer", layer2, 4000)}},
			},
			wantDone: 100 + 1000 + 4000, // the config was in before the manifest was read
		},
		{
			name: "a layer stops mid-blob",
			ticks: []tick{
				{at: 1 * time.Second, ingests: []content.Status{ingest("layer", layer1, 10), ingest("layer", layer2, 300)}},
				{at: 2 * time.Second, ingests: []content.Status{ingest("layer", layer1, 20), ingest("layer", layer2, 300)}},
				{at: 3 * time.Second, ingests: []content.Status{ingest("layer", layer1, 30), ingest("layer", layer2, 300)}},
			},
			wantStop: layer2.Digest.String() + ": download stalled at 300 of 5000 bytes: no bytes for 2s",
		},
		{
			name: "waiting for a download slot, then unpacking",
			ticks: []tick{
				{at: 1 * time.Second, ingests: []content.Status{ingest("layer", layer1, 10)}},
				{at: 2 * time.Second, ingests: []content.Status{ingest("layer", layer1, 999)}},
				{at: 3 * time.Second, in: []ocispec.Descriptor{layer1}},
				{at: 9 * time.Second, ingests: []content.Status{ingest("layer", layer2, 1)}, in: []ocispec.Descriptor{layer1}},
				{at: 10 * time.Second, in: []ocispec.Descriptor{layer1, layer2}},
				{at: 60 * time.Second, in: []ocispec.Descriptor{layer1, layer2}},
			},
			wantDone: 100 + 1000 + 5000,
		},
		{
			name:   "an earlier attempt's ingest waits for its slot",
			before: []content.Status{ingest("layer", layer2, 2500)},
			ticks: []tick{
				{at: 1 * time.Second, ingests: []content.Status{ingest("layer", layer1, 10), ingest("layer", layer2, 2500)}},
				{at: 5 * time.Second, ingests: []content.Status{ingest("layer", layer1, 600), ingest("layer", layer2, 2500)}},
				{at: 6 * time.Second, ingests: []content.Status{ingest("layer", layer1, 900), ingest("layer", layer2, 2500)}},
			},
			wantDone: 100 + 900 + 2500,
		},
		{
			name:   "an earlier attempt's ingest resumed, stopped at once",
			before: []content.Status{ingest("layer", layer2, 2500)},
			ticks: []tick{
				{at: 1 * time.Second, ingests: []content.Status{ingest("layer", layer2, 2500)}, in: []ocispec.Descriptor{layer1}},
				{at: 2 * time.Second, ingests: []content.Status{ingest("layer", layer2, 2500)}},
				{at: 3 * time.Second, ingests: []content.Status{ingest("layer", layer2, 2500)}},
			},
			wantStop: layer2.Digest.String() + ": download stalled at 2500 of 5000 bytes",
		},
		{
			name:   "an earlier attempt's ingest taken up, then stopped",
			before: []content.Status{ingest("layer", layer2, 2500)},
			ticks: []tick{
				{at: 1 * time.Second, ingests: []content.Status{ingest("layer", layer2, 2500)}},
				{at: 2 * time.Second, ingests: []content.Status{ingest("layer", layer2, 2600)}},
				{at: 4 * time.Second, ingests: []content.Status{ingest("layer", layer2, 2600)}},
			},
			wantStop: layer2.Digest.String() + ": download stalled at 2600 of 5000 bytes",
		},
		{
			name: "the store says when the ingest was last written",
			ticks: []tick{
				{at: 1 * time.Second, ingests: []content.Status{{Ref: "layer-" + layer1.Digest.String(), Offset: 64, UpdatedAt: start.Add(200 * time.Millisecond)}}},
				{at: 2500 * time.Millisecond, ingests: []content.Status{{Ref: "layer-" + layer1.Digest.String(), Offset: 64, UpdatedAt: start.Add(200 * time.Millisecond)}}},
			},
			wantStop: layer1.Digest.String() + ": download stalled at 64 of 1000 bytes: no bytes for 2.3s",
		},
		{
			name: "another pull's download stops",
			ticks: []tick{
				{at: 1 * time.Second, ingests: []content.Status{ingest("layer", other, 1), ingest("layer", layer1, 1)}},
				{at: 5 * time.Second, ingests: []content.Status{ingest("layer", other, 1), ingest("layer", layer1, 1000)}},
			},
			wantDone: 100 + 1000,
		},
		{
			name: "the config stops",
			ticks: []tick{
				{at: 1 * time.Second, ingests: []content.Status{{Ref: "config-" + config.Digest.String(), Offset: 0, Expected: config.Digest}}},
				{at: 3 * time.Second, ingests: []content.Status{{Ref: "config-" + config.Digest.String(), Offset: 0, Expected: config.Digest}}},
			},
			wantStop: config.Digest.String() + ": download stalled at 0 of 100 bytes",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Client
			var watch Bytes
			f := newFollow(c.transfers.start(&watch), stall, tt.before)
			store := infos{base.Digest: {Digest: base.Digest, CreatedAt: start.Add(-time.Hour)}}
			if !strings.Contains(tt.name, "config stops") {
				store[config.Digest] = content.Info{Digest: config.Digest, CreatedAt: start.Add(time.Second / 2)}
			}
			if err := f.expect(context.Background(), store, start, blobs); err != nil {
				t.Fatal(err)
			}
			if _, total := watch.Load(); total != 100+1000+5000 {
				t.Errorf("total = %d, want the config and the two layers the node lacked, 6100", total)
			}
			var stalled error
			for _, tk := range tt.ticks {
				for _, d := range tk.in {
					store[d.Digest] = content.Info{Digest: d.Digest, CreatedAt: start.Add(tk.at)}
				}
				absent, err := f.observe(start.Add(tk.at), tk.ingests)
				for _, fb := range absent {
					if _, err := store.Info(context.Background(), fb.desc.Digest); err == nil {
						f.committed(fb)
					}
				}
				if err != nil {
					stalled = err
					break
				}
			}
			switch {
			case tt.wantStop == "" && stalled != nil:
				t.Fatalf("cut: %v", stalled)
			case tt.wantStop != "" && (!errors.Is(stalled, ErrStalled) || !strings.Contains(stalled.Error(), tt.wantStop)):
				t.Fatalf("stalled = %v, want ErrStalled with %q", stalled, tt.wantStop)
			case tt.wantStop != "":
				return
			}
			if done, _ := watch.Load(); done != tt.wantDone {
				t.Errorf("done = %d, want %d", done, tt.wantDone)
			}
			if _, d, _ := c.Transferred(); d != tt.wantDone {
				t.Errorf("client's Transferred done = %d, want %d", d, tt.wantDone)
			}
		})
	}
}
