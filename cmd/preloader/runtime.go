package main

import (
	"context"
	"flag"
	"log/slog"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// runtimeFlags say where the node's runtime is, for once and agent.
type runtimeFlags struct {
	endpoint, containerdAddress *string
}

func addRuntimeFlags(fs *flag.FlagSet) runtimeFlags {
	return runtimeFlags{
		endpoint:          fs.String("cri-endpoint", "", "CRI endpoint (default: $"+cri.EndpointEnv+", else the first known socket that answers)"),
		containerdAddress: fs.String("containerd-address", "", "containerd socket, for archive import, mirrors, pinning and pullVia containerd (default: the one containerd's CRI reports, else "+noderuntime.DefaultContainerdAddress+")"),
	}
}

func (f runtimeFlags) connect(ctx context.Context, log *slog.Logger) (noderuntime.Store, error) {
	return noderuntime.Connect(ctx, noderuntime.Options{CRIEndpoint: *f.endpoint, ContainerdAddress: *f.containerdAddress, Log: log})
}
