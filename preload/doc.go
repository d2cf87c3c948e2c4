// Package preload is the engine that makes a node's images present, from a
// config the [config] package has parsed.
//
// [Plan] keeps the images that apply to a node and [ResolveSandbox] adds
// the pod-infra image the runtime uses. [Engine.Run] then imports archives,
// pulls what is still missing (through the CRI or containerd's client, with
// retries, mirrors and the disk budget), checks tags for refresh, pins the
// images and records who brought them; [Engine.Prune] removes what the
// config dropped. The engine reaches the node's runtime only through
// package noderuntime, so one code path serves containerd and the CRI-only
// runtimes.
package preload
