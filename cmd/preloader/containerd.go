package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	ctrdlog "github.com/containerd/log"

	"github.com/kube-preloader/kube-preloader/containerd"
	"github.com/kube-preloader/kube-preloader/cri"
)

const defaultContainerdAddress = "/run/containerd/containerd.sock"

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
