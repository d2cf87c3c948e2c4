package config

import (
	"math"
	"time"

	corev1 "k8s.io/api/core/v1"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Config is the desired state of one node's image store, as written in the
// ConfigMap key images.yaml or the file given to `preloader once`.
type Config struct {
	Images       []Image
	SandboxImage string // SandboxAuto, SandboxNone, or a normalized reference
	ArchiveDir   string
	Concurrency  int    // images pulled at once; 0: by the pull path (PullConcurrency)
	PullVia      string // PullViaAuto, PullViaCRI or PullViaContainerd
	MaxDownloads int
	PullTimeout  time.Duration
	// StallTimeout cuts a download that receives no bytes this long, as
	// a transient failure, long before PullTimeout would.
	StallTimeout time.Duration
	Retry        Retry
	Resync       time.Duration
	Pin          bool
	// Prune removes images the preloader brought that left the list:
	// PruneOff, PruneOn, or PruneDryRun to say what it would remove.
	Prune string
	// Refresh is how often a present tag reference is checked against its
	// registry (0: never); each image's own Refresh overrides it.
	Refresh time.Duration
	// DiskBudget bounds how full pulls may make the image filesystem.
	DiskBudget Budget
	// Rollout coordinates the agents' pulls across the cluster; `once`
	// ignores it.
	Rollout Rollout
	// Workloads select the workloads whose images `preloader controller`
	// adds for the agents; `once` ignores them.
	Workloads []Workload
	// Verify, when it has keys, makes imports and pulls refuse an image
	// without a valid cosign signature by one of them.
	Verify Verify
}

// Verify is the signature check of imports and pulls.
type Verify struct {
	// Keys are files of cosign public keys (absolute paths), read when a
	// run starts so that a mounted ConfigMap's update is taken.
	Keys []string
}

// On says whether images must be signed.
func (v Verify) On() bool { return len(v.Keys) > 0 }

// Retry bounds the exponential backoff between attempts of one image.
type Retry struct {
	InitialDelay time.Duration
	MaxDelay     time.Duration
}

// Backoff is the one retry schedule of pulls, imports and the agent's
// syncs: the delay doubles from InitialDelay to MaxDelay, and each wait is
// drawn from [d/2, d), so that the nodes of a cluster whose registry went
// down do not come back at it all at once, and no wait exceeds MaxDelay.
func (r Retry) Backoff() wait.Backoff {
	half := max(r.InitialDelay/2, time.Millisecond/2)
	return wait.Backoff{Duration: half, Factor: 2, Jitter: 1, Cap: max(r.MaxDelay/2, half), Steps: math.MaxInt32}
}

// Image is one entry of the images list.
type Image struct {
	// Ref is the reference as the user wrote it, for messages.
	Ref string
	// Name is the reference normalized the way the kubelet passes it to the
	// runtime: docker.io/library/nginx:latest for "nginx"; a digest
	// reference keeps its digest (and its tag, if written).
	Name           string
	PullSecrets    []string
	ServiceAccount string
	NodeSelector   map[string]string
	// NodeAffinity, when set, are node selector terms (ORed) the node must
	// match too: a derived image's placement (package workloads).
	NodeAffinity []corev1.NodeSelectorTerm
	// Workloads name the workloads a derived image comes from; none for
	// the entries of images.yaml.
	Workloads []string
	Archive   string
	Mirror    string
	// NoPrune (prune: false) keeps the image on the node when it leaves
	// the list, whatever Config.Prune says.
	NoPrune bool
	// Refresh is how often the tag is checked against its registry and
	// pulled again when it moved (0: never): the image's own refresh, else
	// the config's. Digest references are never refreshed.
	Refresh    time.Duration
	refreshSet bool
	// Line is where the entry starts in the config file.
	Line int
	// Guess is a sandbox image no config names, which the engine adds
	// (preload.Sandbox.Guess): pulled with one attempt, and its failure
	// reported without counting against the run (preload.Count).
	Guess bool
}

const (
	SandboxAuto = "auto"
	SandboxNone = "none"

	PruneOff    = ""
	PruneOn     = "true"
	PruneDryRun = "dryRun"

	PullViaAuto       = "auto"
	PullViaCRI        = "cri"
	PullViaContainerd = "containerd"

	defaultConcurrency = 3
)

// PullConcurrency is how many images are pulled at once through via: the
// config's concurrency if it sets one; through containerd's client enough
// to fill the node's download slots (each image spends much of its pull on
// round trips and unpacking, integration/bench), never fewer than through
// the CRI; through the CRI 3, which containerd 2.x's three node-wide
// download slots make the most that helps.
func (c *Config) PullConcurrency(via string) int {
	switch {
	case c.Concurrency > 0:
		return c.Concurrency
	case via == PullViaContainerd:
		return max(defaultConcurrency, c.MaxDownloads)
	}
	return defaultConcurrency
}

// Defaults returns the values of every key the config leaves out.
func Defaults() Config {
	return Config{
		SandboxImage: SandboxAuto,
		ArchiveDir:   "/var/lib/preloader/archives",
		PullVia:      PullViaAuto,
		MaxDownloads: 8,
		PullTimeout:  15 * time.Minute,
		StallTimeout: 30 * time.Second,
		Retry:        Retry{InitialDelay: 2 * time.Second, MaxDelay: 5 * time.Minute},
		Resync:       5 * time.Minute,
		Pin:          true,
		DiskBudget:   DefaultBudget(),
		Rollout:      DefaultRollout(),
	}
}
