//go:build !linux

package noderuntime

import "errors"

// socketPeer: only Linux tells the process at the other end of a unix
// socket (SO_PEERCRED); elsewhere (the kubectl plugin on darwin) the
// containerd's decompressor is unknown.
func socketPeer(string) (int, error) {
	return 0, errors.New("a unix socket's peer process is known on Linux only")
}
