package main

import (
	"context"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// runtimeFlags say where the node's runtime is, for once, agent and
// bundle --from-runtime.
type runtimeFlags struct {
	endpoint, containerdAddress string
}

func (f *runtimeFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.endpoint, "cri-endpoint", "", "CRI endpoint (default: $"+cri.EndpointEnv+", else the first known socket that answers)")
	fs.StringVar(&f.containerdAddress, "containerd-address", "", "containerd socket, for archive import, mirrors, pinning and pullVia containerd (default: the one containerd's CRI reports, else the CRI endpoint)")
}

func (f *runtimeFlags) connect(ctx context.Context, log *slog.Logger) (noderuntime.Store, error) {
	return noderuntime.Connect(ctx, f.options(log))
}

func (f *runtimeFlags) options(log *slog.Logger) noderuntime.Options {
	return noderuntime.Options{CRIEndpoint: f.endpoint, ContainerdAddress: f.containerdAddress, Log: log}
}
