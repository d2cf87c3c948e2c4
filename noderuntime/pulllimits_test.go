package noderuntime

import (
	"testing"
)

// On containerd 2.x the advice names the table whose keys bound CRI pulls
// (the transfer service's, or the CRI's own with use_local_image_pull)
// and only the keys that hold a big layer to one connection.
func TestCRIPullAdvice(t *testing.T) {
	const runc = `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":"overlayfs"}}}}`
	for _, tt := range []struct {
		name, runtime, version, file string
		ranges                       bool
		advice                       string
	}{
		{name: "no config file: containerd's defaults", runtime: "containerd", version: "2.4.2",
			advice: `[plugins."io.containerd.transfer.v1.local"] concurrent_layer_fetch_buffer = 16777216 (now 0: one connection per layer), max_concurrent_downloads = 8 (now 3 on the node)`},
		{name: "more downloads, no ranges", runtime: "containerd", version: "2.4.2",
			file:   "version = 3\n[plugins.\"io.containerd.transfer.v1.local\"]\nmax_concurrent_downloads = 10\n",
			advice: `[plugins."io.containerd.transfer.v1.local"] concurrent_layer_fetch_buffer = 16777216 (now 0: one connection per layer)`},
		{name: "ranges on", runtime: "containerd", version: "2.4.2", ranges: true,
			file: "version = 2\n[plugins.\"io.containerd.transfer.v1.local\"]\nconcurrent_layer_fetch_buffer = 8388608\n"},
		{name: "ranges on, one download at a time", runtime: "containerd", version: "2.4.2",
			file:   "version = 3\n[plugins.\"io.containerd.transfer.v1.local\"]\nconcurrent_layer_fetch_buffer = 8388608\nmax_concurrent_downloads = 1\n",
			advice: `[plugins."io.containerd.transfer.v1.local"] max_concurrent_downloads = 8 (now 1 on the node)`},
		{name: "the CRI's own pull: its keys, not the transfer service's", runtime: "containerd", version: "2.4.2",
			file:   "version = 3\n[plugins.\"io.containerd.transfer.v1.local\"]\nconcurrent_layer_fetch_buffer = 8388608\n[plugins.\"io.containerd.cri.v1.images\"]\nuse_local_image_pull = true\nmax_concurrent_downloads = 5\n",
			advice: `[plugins."io.containerd.cri.v1.images"] concurrent_layer_fetch_buffer = 16777216 (now 0: one connection per layer), max_concurrent_downloads = 8 (now 5 on the node)`},
		{name: "the CRI's own pull, version 2 download limit migrated", runtime: "containerd", version: "2.4.2", ranges: true,
			file: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nmax_concurrent_downloads = 6\n[plugins.\"io.containerd.cri.v1.images\"]\nuse_local_image_pull = true\nconcurrent_layer_fetch_buffer = 4194304\n"},
		{name: "containerd 1.6", runtime: "containerd", version: "1.6.20~ds1"},
		{name: "CRI-O", runtime: "cri-o", version: "1.37.0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status := runc
			if tt.version == "1.6.20~ds1" {
				status = `{"containerd":{"snapshotter":"overlayfs"},"registry":{"configPath":""}}`
			}
			f, err := discoverWith(t, tt.runtime, tt.version, status, tt.file)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.CRIPull.Advice(); got != tt.advice {
				t.Errorf("advice %q, want %q", got, tt.advice)
			}
			if got := f.CRIPull.RangedFetch(); got != tt.ranges {
				t.Errorf("ranged fetch %v, want %v", got, tt.ranges)
			}
		})
	}
}
