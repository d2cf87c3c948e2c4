package noderuntime

import (
	"os"
	"strings"
)

// Layout is where one Kubernetes distribution puts containerd: the socket
// its kubelet talks to, the config file it runs containerd with, and the
// registry hosts directories (config_path) it writes into that file.
// Layouts is the one table of them: the Helm chart's `distribution`
// values mirror it, and cri.DefaultEndpoints lists its sockets in its
// order (TestDefaultEndpointsFollowLayouts).
type Layout struct {
	Name   string
	Socket string
	// Config is containerd's config file; it may import others.
	Config string
	// HostsDir is the config_path the distribution writes into Config,
	// assumed when Config does not exist. A Config that exists and names
	// none gets containerd's own default, as containerd does.
	HostsDir string
	// DataDir, if set, prefixes containerd's root on this distribution:
	// it tells k3s from RKE2, which share a socket.
	DataDir string
}

// Layouts in the order their sockets are tried. A socket shared by
// several layouts is resolved to the first of them whose Config exists
// (DataDir first, where containerd's status names its root).
var Layouts = []Layout{
	{
		// kubeadm, and the managed clouds' node images (EKS, GKE, AKS).
		Name:     "kubeadm",
		Socket:   "/run/containerd/containerd.sock",
		Config:   "/etc/containerd/config.toml",
		HostsDir: containerd2DefaultConfigPath,
	},
	{
		// Talos's CRI containerd: its base file imports /etc/cri/conf.d/*.toml,
		// which set config_path.
		Name:     "talos",
		Socket:   "/run/containerd/containerd.sock",
		Config:   "/etc/cri/containerd.toml",
		HostsDir: "/etc/cri/conf.d/hosts",
	},
	{
		// Before RKE2: a k3s node has no /var/lib/rancher/rke2, while an
		// RKE2 node keeps the k3s paths only for its socket. Both present
		// (a node moved from one to the other) is told apart by DataDir.
		Name:     "k3s",
		Socket:   "/run/k3s/containerd/containerd.sock",
		Config:   "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
		HostsDir: "/var/lib/rancher/k3s/agent/etc/containerd/certs.d",
		DataDir:  "/var/lib/rancher/k3s/",
	},
	{
		Name:     "rke2",
		Socket:   "/run/k3s/containerd/containerd.sock",
		Config:   "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
		HostsDir: "/var/lib/rancher/rke2/agent/etc/containerd/certs.d",
		DataDir:  "/var/lib/rancher/rke2/",
	},
	{
		Name:     "microk8s",
		Socket:   "/var/snap/microk8s/common/run/containerd.sock",
		Config:   "/var/snap/microk8s/current/args/containerd.toml",
		HostsDir: "/var/snap/microk8s/current/args/certs.d",
	},
}

// layoutFor is the layout of the containerd that answered at endpoint:
// of the layouts with that socket (kubeadm's and talos's for a socket no
// layout names), the one whose DataDir holds containerd's root, else the
// first whose Config exists, else the first.
func layoutFor(endpoint, rootDir string, exists func(string) bool) Layout {
	sock := strings.TrimPrefix(endpoint, "unix://")
	var cands []Layout
	for _, l := range Layouts {
		if l.Socket == sock {
			cands = append(cands, l)
		}
	}
	if len(cands) == 0 {
		for _, l := range Layouts {
			if l.Socket == Layouts[0].Socket {
				cands = append(cands, l)
			}
		}
	}
	for _, l := range cands {
		if l.DataDir != "" && strings.HasPrefix(rootDir, l.DataDir) {
			return l
		}
	}
	for _, l := range cands {
		if exists(l.Config) {
			return l
		}
	}
	return cands[0]
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
