package grpcresolver

import (
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/miekg/dns"
	"google.golang.org/grpc/resolver"
)

// answers holds the current answer set of every question a resolver
// watches.
type answers map[dns.Question][]dns.RR

func question(name string, qtype uint16) dns.Question {
	return dns.Question{Name: dns.CanonicalName(name), Qtype: qtype, Qclass: dns.ClassINET}
}

// questions lists what t needs watched, given the SRV answers so far: the
// name's A and AAAA, or its SRV and every target's A and AAAA.
func (t target) questions(a answers) []dns.Question {
	if !t.srv {
		return []dns.Question{question(t.name, dns.TypeA), question(t.name, dns.TypeAAAA)}
	}
	qs := []dns.Question{question(t.name, dns.TypeSRV)}
	seen := map[string]bool{}
	for _, srv := range t.srvs(a) {
		if name := dns.CanonicalName(srv.Target); !seen[name] {
			seen[name] = true
			qs = append(qs, question(name, dns.TypeA), question(name, dns.TypeAAAA))
		}
	}
	return qs
}

// srvs returns the usable SRV records of t's SRV answer set: the root
// target means "no such service here" (RFC 2782).
func (t target) srvs(a answers) []*dns.SRV {
	var out []*dns.SRV
	for _, rr := range a[question(t.name, dns.TypeSRV)] {
		if srv, ok := rr.(*dns.SRV); ok && srv.Target != "." {
			out = append(out, srv)
		}
	}
	return out
}

// state turns the answer sets into gRPC's resolver state: one endpoint per
// address, in a stable order. A CNAME chain is followed by the DNS server,
// so every address record in an answer counts, whatever its owner.
func (t target) state(a answers) resolver.State {
	var addrs []string
	if t.srv {
		for _, srv := range t.srvs(a) {
			port := strconv.Itoa(int(srv.Port))
			for _, ip := range hostAddrs(a, srv.Target) {
				addrs = append(addrs, net.JoinHostPort(ip.String(), port))
			}
		}
	} else {
		for _, ip := range hostAddrs(a, t.name) {
			addrs = append(addrs, net.JoinHostPort(ip.String(), t.port))
		}
	}
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)

	st := resolver.State{
		Addresses: make([]resolver.Address, len(addrs)),
		Endpoints: make([]resolver.Endpoint, len(addrs)),
	}
	for i, addr := range addrs {
		st.Addresses[i] = resolver.Address{Addr: addr}
		st.Endpoints[i] = resolver.Endpoint{Addresses: []resolver.Address{{Addr: addr}}}
	}
	return st
}

func hostAddrs(a answers, name string) []netip.Addr {
	var ips []netip.Addr
	for _, rr := range a[question(name, dns.TypeA)] {
		if x, ok := rr.(*dns.A); ok {
			if ip, ok := netip.AddrFromSlice(x.A.To4()); ok {
				ips = append(ips, ip)
			}
		}
	}
	for _, rr := range a[question(name, dns.TypeAAAA)] {
		if x, ok := rr.(*dns.AAAA); ok {
			if ip, ok := netip.AddrFromSlice(x.AAAA); ok {
				ips = append(ips, ip)
			}
		}
	}
	return ips
}

// addrsOf lists a state's addresses, to tell whether it changed.
func addrsOf(st resolver.State) []string {
	out := make([]string, len(st.Addresses))
	for i, a := range st.Addresses {
		out[i] = a.Addr
	}
	return out
}
