package harness

import "github.com/kube-preloader/kube-preloader/integration/harness/daemons"

// The daemons every test starts live in package daemons, which `make demo`
// builds without the Kubernetes clients of this package; they are named
// here too so that a test needs one import.

type (
	T                 = daemons.T
	Flavor            = daemons.Flavor
	ContainerdOptions = daemons.ContainerdOptions
	Containerd        = daemons.Containerd
	CRIOOptions       = daemons.CRIOOptions
	CRIO              = daemons.CRIO
	RegistryOptions   = daemons.RegistryOptions
	Registry          = daemons.Registry
	ImageSpec         = daemons.ImageSpec
	TestImage         = daemons.TestImage
	MountNamespace    = daemons.MountNamespace
)

const (
	Containerd16       = daemons.Containerd16
	Containerd2        = daemons.Containerd2
	Containerd2Version = daemons.Containerd2Version
	CRIOVersion        = daemons.CRIOVersion
	RegistryBinary     = daemons.RegistryBinary
)

var (
	Strict            = daemons.Strict
	Require           = daemons.Require
	CacheDir          = daemons.CacheDir
	StartContainerd   = daemons.StartContainerd
	StartCRIO         = daemons.StartCRIO
	StartRegistry     = daemons.StartRegistry
	PushTestImages    = daemons.PushTestImages
	CompressibleLayer = daemons.CompressibleLayer
	DropBookkeeping   = daemons.DropBookkeeping
	LogTail           = daemons.LogTail
)
