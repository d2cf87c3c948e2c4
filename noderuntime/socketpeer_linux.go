package noderuntime

import (
	"net"

	"golang.org/x/sys/unix"
)

// socketPeer is the process at the other end of the unix socket at
// address, as the kernel tells it (0 when that process is in a PID
// namespace this one does not see).
func socketPeer(address string) (int, error) {
	conn, err := net.Dial("unix", address)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return int(cred.Pid), nil
}
