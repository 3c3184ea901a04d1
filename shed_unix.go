//go:build unix

package llq

import (
	"net"
	"syscall"
)

// shedOne takes the connection waiting first in ln's backlog, if any, and
// resets it (see shed). It never waits: a descriptor is free only for this
// moment. It runs on the accept loop, the only one to accept on ln.
func shedOne(ln net.Listener) bool {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	shed := false
	// A listener's raw connection does Control only; the socket is
	// non-blocking, so an empty backlog answers EAGAIN.
	rc.Control(func(fd uintptr) {
		nfd, _, err := syscall.Accept(int(fd))
		if err != nil {
			return
		}
		// A linger of 0 makes the close a reset: the client learns at
		// once, and the server keeps no TIME_WAIT for a connection it
		// never served.
		syscall.SetsockoptLinger(nfd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1})
		syscall.Close(nfd)
		shed = true
	})
	return shed
}
