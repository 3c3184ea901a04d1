package llq

import (
	"context"
	"net"
	"net/netip"
	"strings"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/nonwriter"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// discoveryTTL is short so that clients notice a moved LLQ listener soon.
const discoveryTTL = 60

// targetLabel names the default SRV target, llq.ZONE, whose addresses llq
// synthesises.
const targetLabel = "llq."

// discovery answers the questions an unmodified client asks to find the
// LLQ listener (RFC 8764 section 7): SRV _dns-llq._udp.ZONE and, for the
// default target, its A and AAAA. The zone's own data wins: llq only fills
// in what the backend does not have, and only for zone apexes. done is false
// when the question is none of these.
func (l *LLQ) discovery(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (rcode int, err error, done bool) {
	q := r.Question[0]
	var apex string
	switch {
	case q.Qtype == dns.TypeSRV && hasPrefixFold(q.Name, wire.ServiceLabel):
		apex = strings.ToLower(q.Name[len(wire.ServiceLabel):])
	case q.Qtype != dns.TypeSRV && l.cfg.srvTarget == "" && hasPrefixFold(q.Name, targetLabel):
		apex = strings.ToLower(q.Name[len(targetLabel):])
	default:
		return 0, nil, false
	}
	e := l.engine()
	if e == nil {
		return 0, nil, false
	}
	if plugin.Zones(l.Zones).Matches(apex) == "" {
		return 0, nil, false
	}

	stripLLQ(r)
	nw := nonwriter.New(w)
	rcode, err = plugin.NextOrFailure(l.Name(), l.Next, ctx, nw, r)
	own := nw.Msg
	if own != nil && own.Rcode == dns.RcodeSuccess && hasType(own.Answer, q.Qtype) {
		w.WriteMsg(own)
		return rcode, err, true
	}
	if !l.isApex(ctx, w, apex) {
		if own != nil {
			w.WriteMsg(own)
			return rcode, err, true
		}
		return rcode, err, true
	}

	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	target := l.cfg.srvTarget
	if target == "" {
		target = targetLabel + apex
	}
	port := uint16(e.Addr().(*net.UDPAddr).Port)
	switch q.Qtype {
	case dns.TypeSRV:
		m.Answer = []dns.RR{&dns.SRV{
			Hdr:    dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: discoveryTTL},
			Target: target, Port: port,
		}}
		if l.cfg.srvTarget == "" {
			m.Extra = address(target, dns.TypeA, listenerIP(e, w))
			m.Extra = append(m.Extra, address(target, dns.TypeAAAA, listenerIP(e, w))...)
		}
	default:
		m.Answer = address(q.Name, q.Qtype, listenerIP(e, w))
	}
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil, true
}

// listenerIP is the address clients reach the LLQ listener on: the one it
// is bound to, or, when it listens on every address, the one this query
// came in on.
func listenerIP(e *Engine, w dns.ResponseWriter) netip.Addr {
	if ua, ok := e.Addr().(*net.UDPAddr); ok && !ua.IP.IsUnspecified() {
		a, _ := netip.AddrFromSlice(ua.IP)
		return a.Unmap()
	}
	switch la := w.LocalAddr().(type) {
	case *net.UDPAddr:
		a, _ := netip.AddrFromSlice(la.IP)
		return a.Unmap()
	case *net.TCPAddr:
		a, _ := netip.AddrFromSlice(la.IP)
		return a.Unmap()
	}
	return netip.Addr{}
}

// address returns the record of type qtype (A or AAAA) for ip, if ip is of
// that family.
func address(name string, qtype uint16, ip netip.Addr) []dns.RR {
	hdr := dns.RR_Header{Name: name, Rrtype: qtype, Class: dns.ClassINET, Ttl: discoveryTTL}
	switch {
	case qtype == dns.TypeA && ip.Is4():
		return []dns.RR{&dns.A{Hdr: hdr, A: ip.AsSlice()}}
	case qtype == dns.TypeAAAA && ip.Is6():
		return []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()}}
	}
	return nil
}

// isApex asks the chain whether name has an SOA record: llq advertises
// itself for zones, not for every name.
func (l *LLQ) isApex(ctx context.Context, w dns.ResponseWriter, name string) bool {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeSOA)
	nw := nonwriter.New(w)
	plugin.NextOrFailure(l.Name(), l.Next, ctx, nw, m)
	if nw.Msg == nil {
		return false
	}
	for _, rr := range nw.Msg.Answer {
		if rr.Header().Rrtype == dns.TypeSOA && strings.EqualFold(rr.Header().Name, name) {
			return true
		}
	}
	return false
}

func hasType(rrs []dns.RR, t uint16) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == t {
			return true
		}
	}
	return false
}

// hasPrefixFold is strings.HasPrefix ignoring ASCII case, without the
// allocation of lower-casing every query name on the hot path.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
