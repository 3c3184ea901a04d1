package llq

import (
	"context"
	"net"
	"net/netip"
	"strings"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/nonwriter"
	"github.com/llqdns/llq/dso"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// discoveryTTL is short so that clients notice a moved LLQ listener soon.
const discoveryTTL = 60

// targetLabel names the default SRV target, llq.ZONE, whose addresses llq
// synthesises.
const targetLabel = "llq."

// udpLabel and tcpLabel are the empty non-terminals between the zone and
// the SRV records.
const (
	udpLabel = "_udp."
	tcpLabel = "_tcp."
)

// privateLabel is prepended to a zone to find its private (TLS) LLQ server,
// as Apple's client asks (PRIVATE_LLQ_SERVICE_TYPE in mDNSResponder).
const privateLabel = "_dns-llq-tls._tcp."

// discovery answers the questions an unmodified client asks to find the
// LLQ listener (RFC 8764 section 7): SRV _dns-llq._udp.ZONE and, for the
// default target, its A and AAAA; and, with the TLS listener on, the DNS
// Push server's SRV _dns-push-tls._tcp.ZONE (RFC 8765 section 6.1) and the
// private LLQ server's _dns-llq-tls._tcp.ZONE, both on the TLS listener.
// The zone's own data wins: llq only fills in what the backend does not
// have, and only for zone apexes. done is false when the question is none
// of these.
func (l *LLQ) discovery(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (rcode int, err error, done bool) {
	q := r.Question[0]
	var apex string
	tls := false // a name for the TLS listener: SRV _dns-push-tls._tcp, _dns-llq-tls._tcp, or _tcp
	switch {
	case hasPrefixFold(q.Name, wire.ServiceLabel):
		apex = strings.ToLower(q.Name[len(wire.ServiceLabel):])
	case hasPrefixFold(q.Name, dso.ServiceLabel):
		apex = strings.ToLower(q.Name[len(dso.ServiceLabel):])
		tls = true
	case hasPrefixFold(q.Name, privateLabel):
		apex = strings.ToLower(q.Name[len(privateLabel):])
		tls = true
	case l.cfg.srvTarget == "" && hasPrefixFold(q.Name, targetLabel):
		apex = strings.ToLower(q.Name[len(targetLabel):])
	case hasPrefixFold(q.Name, udpLabel):
		// The empty non-terminal above the SRV record.
		apex = strings.ToLower(q.Name[len(udpLabel):])
	case hasPrefixFold(q.Name, tcpLabel):
		apex = strings.ToLower(q.Name[len(tcpLabel):])
		tls = true
	default:
		return 0, nil, false
	}
	if q.Qclass != dns.ClassINET {
		return 0, nil, false
	}
	e := l.engine()
	if e == nil {
		return 0, nil, false
	}
	var pt *pushTransport
	if tls {
		if pt = e.pushTransport(); pt == nil {
			return 0, nil, false // no TLS listener: nothing to advertise
		}
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
	soa := l.apexSOA(ctx, w, apex)
	if soa == nil {
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
	ip := listenerIP(e, w)
	if pt != nil {
		ta := pt.Addr().(*net.TCPAddr)
		port = uint16(ta.Port)
		if !ta.IP.IsUnspecified() {
			a, _ := netip.AddrFromSlice(ta.IP)
			ip = a.Unmap()
		}
	}
	lower := strings.ToLower(q.Name)
	service := strings.HasPrefix(lower, wire.ServiceLabel) || strings.HasPrefix(lower, dso.ServiceLabel) ||
		strings.HasPrefix(lower, privateLabel)
	switch {
	case service && q.Qtype == dns.TypeSRV:
		m.Answer = []dns.RR{&dns.SRV{
			Hdr:    dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: discoveryTTL},
			Target: target, Port: port,
		}}
		if l.cfg.srvTarget == "" {
			m.Extra = address(target, dns.TypeA, ip)
			m.Extra = append(m.Extra, address(target, dns.TypeAAAA, ip)...)
		}
	case !service && strings.HasPrefix(strings.ToLower(q.Name), targetLabel) && l.cfg.srvTarget == "":
		m.Answer = address(q.Name, q.Qtype, listenerIP(e, w))
	}
	if len(m.Answer) == 0 {
		// The name exists, since llq answers for it: any other type, and
		// the empty non-terminals _udp.ZONE and _tcp.ZONE, get NODATA, never NXDOMAIN,
		// which a resolver would cache for the SRV record too (RFC 8020).
		m.Ns = []dns.RR{soa}
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

// apexSOA asks the chain for name's SOA record and returns it, or nil when
// name is no zone apex: llq advertises itself for zones, not for every name.
func (l *LLQ) apexSOA(ctx context.Context, w dns.ResponseWriter, name string) dns.RR {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeSOA)
	nw := nonwriter.New(w)
	plugin.NextOrFailure(l.Name(), l.Next, ctx, nw, m)
	if nw.Msg == nil {
		return nil
	}
	for _, rr := range nw.Msg.Answer {
		if rr.Header().Rrtype == dns.TypeSOA && strings.EqualFold(rr.Header().Name, name) {
			return rr
		}
	}
	return nil
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
