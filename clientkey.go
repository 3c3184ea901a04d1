package llq

import "net/netip"

// clientBits says how much of an address is one client for the per-client
// limits (LLQs, setup rate, connections). An IPv6 host commonly gets a whole
// /64 and can pick any address in it, so counting exact IPv6 addresses would
// give one host billions of budgets; it is counted by its prefix instead.
type clientBits struct {
	v4, v6 int
}

var defaultClientBits = clientBits{v4: 32, v6: 64}

// key is the client that addr belongs to.
func (b clientBits) key(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap()
	bits := b.v6
	if addr.Is4() {
		bits = b.v4
	}
	p, err := addr.Prefix(bits)
	if err != nil { // bits out of range: parse refuses those, so only the zero Addr
		return netip.PrefixFrom(addr, addr.BitLen())
	}
	return p
}
