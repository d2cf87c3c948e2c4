package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strings"

	ctrdlog "github.com/containerd/log"

	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/cri"
)

const defaultContainerdAddress = "/run/containerd/containerd.sock"

// runtimeFlags say where the node's runtime is, for once and agent.
type runtimeFlags struct {
	endpoint, containerdAddress *string
}

func addRuntimeFlags(fs *flag.FlagSet) runtimeFlags {
	return runtimeFlags{
		endpoint:          fs.String("cri-endpoint", "", "CRI endpoint (default: $"+cri.EndpointEnv+", else the first known socket that answers)"),
		containerdAddress: fs.String("containerd-address", "", "containerd socket, for archive import, mirrors, pinning and pullVia containerd (default: the one containerd's CRI reports, else "+defaultContainerdAddress+")"),
	}
}

// connect connects to the CRI and, when the runtime is containerd, to
// containerd itself; ctrd is nil otherwise. close closes both.
func (f runtimeFlags) connect(ctx context.Context, log *slog.Logger) (rt *cri.Client, ctrd *containerd.Client, close func(), err error) {
	rt, err = cri.Connect(ctx, *f.endpoint)
	if err != nil {
		return nil, nil, nil, err
	}
	log.Info("connected", "endpoint", rt.Endpoint, "runtime", rt.RuntimeName, "version", rt.RuntimeVersion)
	ctrd, err = connectContainerd(ctx, rt, *f.containerdAddress, log)
	if err != nil {
		rt.Close()
		return nil, nil, nil, err
	}
	return rt, ctrd, func() {
		if ctrd != nil {
			ctrd.Close()
		}
		rt.Close()
	}, nil
}

// connectContainerd connects to the containerd behind the CRI, for archive
// import, mirrors, pinning and pullVia containerd: at address if set, else where its CRI plugin
// says, else the default socket. It returns nil when the runtime is not
// containerd (images with an archive or a mirror then fail with a reason
// that says so), and an UnreachableError when containerd does not answer.
func connectContainerd(ctx context.Context, rt *cri.Client, address string, log *slog.Logger) (*containerd.Client, error) {
	info, err := rt.Containerd(ctx)
	if err != nil {
		if rt.RuntimeName != "containerd" {
			log.Info("no archive import, mirrors or pinning", "reason", err)
			return nil, nil
		}
		return nil, fmt.Errorf("containerd: %w", err)
	}
	if address == "" {
		address = info.Address
	}
	if address == "" {
		address = defaultContainerdAddress
	}
	address = strings.TrimPrefix(address, "unix://")
	// The containerd client logs through logrus at info level, in its own
	// format; what matters reaches the user as errors.
	if err := ctrdlog.SetLevel("warn"); err != nil {
		return nil, err
	}
	c, err := containerd.New(ctx, address, info.Snapshotter, containerd.WithRegistryConfigPath(info.RegistryConfigPath))
	if err != nil {
		return nil, &cri.UnreachableError{Tried: []string{address}, Err: err}
	}
	log.Info("connected to containerd", "address", address, "snapshotter", info.Snapshotter, "registryConfigPath", info.RegistryConfigPath)
	return c, nil
}
