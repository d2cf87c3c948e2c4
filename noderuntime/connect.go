package noderuntime

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	ctrdlog "github.com/containerd/log"

	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/cri"
)

// Options say where the runtime is; empty fields are found.
type Options struct {
	// CRIEndpoint: else $CONTAINER_RUNTIME_ENDPOINT, else the first of
	// cri.DefaultEndpoints that answers.
	CRIEndpoint string
	// ContainerdAddress: else where containerd's CRI says it is, else the
	// CRI endpoint, which containerd serves on its own socket.
	ContainerdAddress string
	Log               *slog.Logger
}

// Connect finds the runtime and, when it is containerd, connects to the
// containerd behind its CRI. A runtime that does not answer, or a
// containerd that does not, is a *cri.UnreachableError.
func Connect(ctx context.Context, opts Options) (Store, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := cri.Connect(ctx, opts.CRIEndpoint)
	if err != nil {
		return nil, err
	}
	log.Info("connected", "endpoint", c.Endpoint, "runtime", c.RuntimeName, "version", c.RuntimeVersion)
	s, err := connect(ctx, c, opts, log)
	if err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

func connect(ctx context.Context, c *cri.Client, opts Options, log *slog.Logger) (Store, error) {
	f, ctrd, err := connectContainerd(ctx, c, opts)
	if err != nil {
		return nil, err
	}
	if ctrd == nil {
		log.Info("no archive import, mirrors or pinning", "reason", fmt.Sprintf("runtime is %s, not containerd", f.runtime()))
		return &criStore{Client: c, facts: f}, nil
	}
	log.Info("connected to containerd", "address", f.ContainerdAddress, "layout", f.Layout, "config", orNone(f.ContainerdConfig), "snapshotter", f.Snapshotter, "registryConfigPath", f.RegistryConfigPath)
	f.GzipTool, f.GzipToolKnown = gzipTool(f.ContainerdAddress)
	adviseSettings(log, f)
	return &containerdStore{criStore: criStore{Client: c, facts: f}, ctrd: ctrd}, nil
}

// ConnectContainerd finds the runtime as Connect does and returns the
// containerd behind its CRI, for op, which only containerd does; another
// runtime is an *UnsupportedError. The CRI is asked only to find it.
func ConnectContainerd(ctx context.Context, opts Options, op Op) (*containerd.Client, Facts, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := cri.Connect(ctx, opts.CRIEndpoint)
	if err != nil {
		return nil, Facts{}, err
	}
	defer c.Close()
	log.Info("connected", "endpoint", c.Endpoint, "runtime", c.RuntimeName, "version", c.RuntimeVersion)
	f, ctrd, err := connectContainerd(ctx, c, opts)
	if err != nil {
		return nil, Facts{}, err
	}
	if ctrd == nil {
		return nil, f, &UnsupportedError{Op: op, Runtime: f.runtime(), Instead: instead[op]}
	}
	log.Info("connected to containerd", "address", f.ContainerdAddress, "layout", f.Layout, "config", orNone(f.ContainerdConfig))
	return ctrd, f, nil
}

// connectContainerd discovers the runtime behind c and, when it is
// containerd, connects to it; for another runtime the client is nil.
func connectContainerd(ctx context.Context, c *cri.Client, opts Options) (Facts, *containerd.Client, error) {
	d, err := discover(ctx, c)
	if err != nil {
		return Facts{}, nil, err
	}
	f, err := d.facts(ctx)
	if err != nil {
		return Facts{}, nil, err
	}
	if f.Name != "containerd" {
		return f, nil, nil
	}
	f.ContainerdAddress = strings.TrimPrefix(firstSet(opts.ContainerdAddress, f.ContainerdAddress, c.Endpoint), "unix://")
	// The containerd client logs through logrus at info level, in its own
	// format; what matters reaches the user as errors.
	if err := ctrdlog.SetLevel("warn"); err != nil {
		return Facts{}, nil, err
	}
	ctrd, err := containerd.New(ctx, f.ContainerdAddress, f.Snapshotter, containerd.WithRegistryConfigPath(f.RegistryConfigPath))
	if err != nil {
		return Facts{}, nil, &cri.UnreachableError{Tried: []string{f.ContainerdAddress}, Err: err}
	}
	return f, ctrd, nil
}

// adviseSettings says, once for the process, what of containerd's own
// settings holds back big pulls on the node: every pull through its CRI
// (the kubelet's too) is bound by them, and containerd unpacks what any
// path fetches.
func adviseSettings(log *slog.Logger, f Facts) {
	if set := f.CRIPull.Advice(); set != "" {
		log.Info("containerd's settings hold back CRI pulls of big layers", "set", set)
	}
	if f.GzipToolKnown && f.GzipTool == "" {
		log.Info("containerd decompresses layers in one goroutine", "advice", decompressAdvice)
	}
}

func orNone(s string) string {
	if s == "" {
		return "none found"
	}
	return s
}

func firstSet(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
