//go:build !unix

package llq

import "net"

// shedOne takes no connection where the raw socket is out of reach: the
// clients wait in the backlog, as without a spare descriptor.
func shedOne(net.Listener) bool { return false }
