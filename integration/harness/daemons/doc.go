// Package daemons starts the real daemons of the integration tests and of
// `make demo`: containerd with its CRI plugin (Debian's 1.6 or a built 2.x),
// CRI-O, and a distribution registry with optional htpasswd auth and TLS, plus
// synthetic test images. It leaves out the Kubernetes clients of package
// harness, which re-exports it, so that the demo does not compile them.
// Everything listens on 127.0.0.1, lives in its own temporary directory and
// is torn down by t.Cleanup.
//
//	ctrd := daemons.StartContainerd(t, daemons.ContainerdOptions{
//		Flavor:       daemons.Containerd2, // default Containerd2
//		SandboxImage: "registry.k8s.io/pause:3.10",
//		Snapshotter:  "native", // the default
//	})
//	ctrd.Endpoint   // "unix:///tmp/ctrdNNN/c.sock", for CRI clients (or ctrd.Conn(t))
//	ctrd.Address    // the socket path, for the containerd Go client
//	ctrd.ConfigPath // registry config_path; TrustIn writes <host>/hosts.toml here
//	ctrd.Stop(); ctrd.Start(); ctrd.Kill() // Start reuses root and state
//
//	crio := daemons.StartCRIO(t, daemons.CRIOOptions{
//		PauseImage: "registry.k8s.io/pause:3.10",
//		Registries: []*daemons.Registry{reg}, // CA in CertsDir, or insecure in registries.conf.d
//	})
//	crio.Endpoint, crio.CertsDir, crio.RegistriesConfDir, crio.CgroupParent
//
//	reg := daemons.StartRegistry(t, daemons.RegistryOptions{Username: "alice", Password: "…", TLS: true})
//	reg.Host, reg.URL, reg.CACertPath
//	reg.Stop(); reg.Start() // same port, same storage
//	reg.TrustIn(ctrd)       // scheme and CA for containerd's CRI
//	reg.Transport(), reg.Authenticator() // for go-containerregistry clients
//
//	imgs := daemons.PushTestImages(t, reg, []daemons.ImageSpec{
//		{Repo: "team/app", Tag: "1.0", BaseLayers: 2, OwnLayers: 1, LayerSize: 64 << 10},
//	})
//	imgs[0].Ref, imgs[0].DigestRef, imgs[0].Digest, imgs[0].Size, imgs[0].Layers
//
//	big, err := daemons.CompressibleLayer(t.TempDir(), "seed", 512<<20) // streamed to a file; gzip halves it
//	daemons.ImageSpec{Repo: "team/big", Prebuilt: []v1.Layer{big}}
//
//	daemons.Require(t, "containerd", "/usr/bin/containerd")
//
// # Prerequisites
//
// The Start functions call Require for root and their binaries. Missing ones
// skip the test, or fail it when CI=true or PRELOADER_REQUIRE_INTEGRATION=1,
// so that CI never passes by skipping. scripts/install-deps.sh installs them.
//
// Start, Stop and Kill report through the t given to the Start function:
// call them from that test's goroutine.
//
// # One config for containerd 1.6 and 2.x
//
// StartContainerd writes a version 2 config. 1.6 reads it as is and ignores
// sections of plugins it does not have; 2.x migrates it in memory (logging a
// warning about it): sandbox_image becomes
// plugins."io.containerd.cri.v1.images".pinned_images.sandbox, registry and
// snapshotter move to that plugin, cni and restrict_oom_score_adj to
// io.containerd.cri.v1.runtime. Differences that matter:
//
//   - 2.x pulls for the CRI through the transfer service, which unpacks only
//     into the snapshotters of its unpack_config, by default overlayfs alone:
//     with the native snapshotter every CRI PullImage fails with "no unpack
//     platforms defined" unless plugins."io.containerd.transfer.v1.local"
//     has an unpack_config entry for native, which the harness writes.
//   - 2.x enables NRI on the host-wide /var/run/nri/nri.sock; disabled.
//   - 2.x has shim.v1.manager socket_dir (set to Dir/s); 1.6 always puts shim
//     sockets in /run/containerd/s (only when containers run).
//   - enable_cdi is gone in 2.x (CDI is always on); cdi_spec_dirs points into
//     Dir so the host's /etc/cdi is not read.
//   - On this cgroup v1 host 2.x adds a third Status condition,
//     ContainerdHasNoDeprecationWarnings, which is false (cgroup v1
//     deprecation). RuntimeReady and NetworkReady are true on both.
//
// # Where the sandbox image shows (measured with 1.6.20 and 2.4.2)
//
// CRI Status(verbose=true) Info keys are, on both: "config", "golang",
// "cniconfig", "lastCNILoadStatus", "lastCNILoadStatus.default".
//
//   - 1.6: Info["config"] is the whole CRI plugin config as JSON, with
//     top-level "sandboxImage" (also "registry"{"configPath"},
//     "containerd"{"snapshotter"}, "containerdRootDir", "rootDir", ...).
//     ImageStatus/ListImages report Pinned=false for every image, the
//     sandbox image included.
//   - 2.x: Info["config"] is only the runtime config (top-level keys such as
//     "containerd", "cni", "cdiSpecDirs", "restrictOOMScoreAdj", "rootDir");
//     there is no sandboxImage, registry or snapshotter anywhere in Status,
//     and the introspection service exports only DiscardUnpackedLayers and
//     RegistryConfigPath for the io.containerd.cri.v1/images plugin. What
//     2.x does expose: an image the CRI pulled by exactly the configured
//     sandbox reference gets the label io.cri-containerd.pinned=pinned, and
//     ImageStatus/ListImages then report Pinned=true (also when asked by
//     digest). Images pulled through the containerd client get the label only
//     if the puller sets it. 2.4.2's built-in default is
//     registry.k8s.io/pause:3.10.2.
//
// # Timing (2 shared cores)
//
// containerd answers the CRI about 0.2 s after start (either flavor), the
// registry about 0.1 s; TestHarness runs both flavors in about 2.5 s.
package daemons
