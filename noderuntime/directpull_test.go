package noderuntime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pullVia auto takes containerd's client on containerd 2.x unless the
// node's containerd config asks of CRI pulls what the client would skip.
func TestDirectPull(t *testing.T) {
	verifiers := t.TempDir()
	os.WriteFile(filepath.Join(verifiers, "cosign-verify"), []byte("#!/bin/sh\n"), 0o755)
	const runc = `"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":"overlayfs"}`
	for _, tt := range []struct {
		name, runtime, version, status, file string
		direct                               bool
		why                                  string
	}{
		{name: "containerd 2.x", runtime: "containerd", version: "v2.4.2", status: `{"containerd":{` + runc + `}}}`, direct: true, why: "3 download slots"},
		{name: "containerd 1.6", runtime: "containerd", version: "1.6.20~ds1", status: `{"containerd":{"snapshotter":"overlayfs"},"registry":{"configPath":""}}`, why: "pulls as fast through its CRI"},
		{name: "CRI-O", runtime: "cri-o", version: "1.37.0", status: `{}`, why: "runtime is cri-o 1.37.0"},
		{
			name: "a runtime handler with a snapshotter of its own", runtime: "containerd", version: "2.4.2",
			status: `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"snapshotter":"overlayfs"},"kata":{"snapshotter":"devmapper"}}}}`,
			why:    "runtime handler kata unpacks into snapshotter devmapper",
		},
		{
			name: "discarded layers", runtime: "containerd", version: "2.4.2", status: `{"containerd":{` + runc + `}}}`,
			file: "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\ndiscard_unpacked_layers = true\n",
			why:  "discard_unpacked_layers",
		},
		{
			name: "discarded layers, version 2 file", runtime: "containerd", version: "2.4.2", status: `{"containerd":{` + runc + `}}}`,
			file: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndiscard_unpacked_layers = true\n",
			why:  "discard_unpacked_layers",
		},
		{
			name: "image verifiers", runtime: "containerd", version: "2.4.2", status: `{"containerd":{` + runc + `}}}`,
			file: "version = 3\n[plugins.\"io.containerd.image-verifier.v1.bindir\"]\nbin_dir = \"" + verifiers + "\"\n",
			why:  "image verifiers in " + verifiers,
		},
		{
			name: "an empty verifier directory verifies nothing", runtime: "containerd", version: "2.4.2", status: `{"containerd":{` + runc + `}}}`,
			file:   "version = 3\n[plugins.\"io.containerd.image-verifier.v1.bindir\"]\nbin_dir = \"" + t.TempDir() + "\"\n",
			direct: true, why: "3 download slots",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := discoverWith(t, tt.runtime, tt.version, tt.status, tt.file)
			if err != nil {
				t.Fatal(err)
			}
			direct, why := f.DirectPull()
			if direct != tt.direct || !strings.Contains(why, tt.why) {
				t.Errorf("DirectPull = %v, %q; want %v, saying %q", direct, why, tt.direct, tt.why)
			}
		})
	}
}
