package preload

import "github.com/kube-preloader/kube-preloader/noderuntime"

// Each part of the engine reaches the runtime through its role alone, so
// that what the part can do to the node reads from its type; only the
// Engine's Store, set by the wiring, holds them all.

// puller is what pulling, and choosing the path of pullVia auto, ask of
// the runtime.
func (e *Engine) puller() noderuntime.Puller { return e.Store }

// presence is the CRI's answer to which images the node has, the one
// that decides an image is present.
func (e *Engine) presence() noderuntime.Presence { return e.Store }

// importer is what importing archives, and recording a mirror's image
// under its name, ask of the runtime.
func (e *Engine) importer() noderuntime.Importer { return e.Store }

// pinner is what pinning asks of the runtime.
func (e *Engine) pinner() noderuntime.Pinner { return e.Store }

// pruneStore is what recording and pruning the owner's images ask of the
// runtime: the records, presence as the kubelet sees it, and the images
// the node's containers use, which prune keeps.
type pruneStore interface {
	noderuntime.Records
	noderuntime.Presence
	noderuntime.Containers
}

func (e *Engine) pruner() pruneStore { return e.Store }

// refresher is what refreshing moved tags asks of the runtime.
func (e *Engine) refresher() noderuntime.Refresher { return e.Store }

// budgeter is what the disk budget asks of the runtime.
func (e *Engine) budgeter() noderuntime.Budgeter { return e.Store }

// signatures is what verify asks of the runtime before a pull.
func (e *Engine) signatures() noderuntime.Signatures { return e.Store }
