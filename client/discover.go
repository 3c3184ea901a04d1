package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Discover finds the LLQ server for name the way Apple's client does: SOA
// queries walking up from name until one names the zone (an SOA in Answer or
// Authority), then SRV _dns-llq._udp.<zone>, then the SRV target's address,
// from the SRV response's additional section when it is there, else by an A
// and then an AAAA query. resolver is the "host:port" of an ordinary
// recursive DNS server.
func Discover(ctx context.Context, resolver, name string) (server netip.AddrPort, zone string, err error) {
	if zone, err = findZone(ctx, resolver, dns.Fqdn(name)); err != nil {
		return server, "", err
	}
	server, _, err = discoverService(ctx, resolver, zone, wire.ServiceLabel, "LLQ")
	return server, zone, err
}

// DiscoverPush finds the DNS Push server for name (RFC 8765 section 6.1):
// the zone by SOA queries as Discover finds it, then SRV
// _dns-push-tls._tcp.<zone> and the target's address. target is the SRV
// target, the name to expect in the server's certificate. An error wrapping
// ErrNoService means the zone advertises no push server.
func DiscoverPush(ctx context.Context, resolver, name string) (server netip.AddrPort, target, zone string, err error) {
	if zone, err = findZone(ctx, resolver, dns.Fqdn(name)); err != nil {
		return server, "", "", err
	}
	server, target, err = discoverService(ctx, resolver, zone, dso.ServiceLabel, "DNS Push")
	return server, target, zone, err
}

// ErrNoService reports a zone without SRV records for the service asked.
var ErrNoService = errors.New("llq: no such service in the zone")

// discoverService finds the server of the service whose SRV owner is label
// prepended to zone: SRV records lowest priority first, among equals the
// heaviest (one client has no load to spread), the first whose target has
// an address.
func discoverService(ctx context.Context, resolver, zone, label, what string) (server netip.AddrPort, target string, err error) {
	service := label + zone
	if zone == "." {
		service = label
	}
	r, err := lookup(ctx, resolver, service, dns.TypeSRV)
	if err != nil {
		return server, "", err
	}
	var srvs []*dns.SRV
	for _, rr := range r.Answer {
		// The root target means "no such service here" (RFC 2782).
		if srv, ok := rr.(*dns.SRV); ok && srv.Target != "." {
			srvs = append(srvs, srv)
		}
	}
	if len(srvs) == 0 {
		return server, "", fmt.Errorf("llq: zone %s offers no %s service: no SRV records at %s (%s): %w", zone, what, service, rcodeName(r.Rcode), ErrNoService)
	}
	sort.SliceStable(srvs, func(i, j int) bool {
		if srvs[i].Priority != srvs[j].Priority {
			return srvs[i].Priority < srvs[j].Priority
		}
		return srvs[i].Weight > srvs[j].Weight
	})

	var errs []error
	for _, srv := range srvs {
		addr, err := targetAddr(ctx, resolver, srv.Target, r.Extra)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return netip.AddrPortFrom(addr, srv.Port), srv.Target, nil
	}
	return server, "", errors.Join(errs...)
}

// findZone returns the zone name is in: the owner of the first SOA found in
// the Answer or Authority section, querying name and then its ancestors.
func findZone(ctx context.Context, resolver, name string) (string, error) {
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		r, err := lookup(ctx, resolver, name[off:], dns.TypeSOA)
		if err != nil {
			return "", err
		}
		for _, section := range [][]dns.RR{r.Answer, r.Ns} {
			for _, rr := range section {
				if soa, ok := rr.(*dns.SOA); ok {
					return dns.Fqdn(soa.Hdr.Name), nil
				}
			}
		}
	}
	return "", fmt.Errorf("llq: no zone found for %s: no SOA for it or any parent", name)
}

// targetAddr finds the address of an SRV target, preferring IPv4 as the
// address families go, and glue over a query.
func targetAddr(ctx context.Context, resolver, target string, extra []dns.RR) (netip.Addr, error) {
	if a, ok := addrIn(extra, target); ok {
		return a, nil
	}
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		r, err := lookup(ctx, resolver, target, qtype)
		if err != nil {
			return netip.Addr{}, err
		}
		// The name does not matter here: a recursive answer may reach the
		// address through a CNAME chain.
		if a, ok := addrIn(r.Answer, ""); ok {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("llq: server %s has no address", target)
}

// addrIn returns the first A record for name in rrs, else the first AAAA;
// an empty name matches any owner.
func addrIn(rrs []dns.RR, name string) (netip.Addr, bool) {
	var v6 netip.Addr
	for _, rr := range rrs {
		if name != "" && !strings.EqualFold(rr.Header().Name, name) {
			continue
		}
		switch rr := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
				return a, true
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA); ok && !v6.IsValid() {
				v6 = a
			}
		}
	}
	return v6, v6.IsValid()
}

// lookupAttempts and lookupTimeout make an ordinary stub resolver: a few
// tries over UDP, then TCP when the answer was truncated.
const (
	lookupAttempts = 3
	lookupTimeout  = 2 * time.Second
)

func lookup(ctx context.Context, resolver, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(DefaultUDPSize, false)

	var (
		r   *dns.Msg
		err error
	)
	udp := &dns.Client{Net: "udp", UDPSize: DefaultUDPSize, Timeout: lookupTimeout}
	for range lookupAttempts {
		if r, _, err = udp.ExchangeContext(ctx, m, resolver); err == nil || !isTimeout(err) || ctx.Err() != nil {
			break
		}
	}
	if err == nil && r.Truncated {
		tcp := &dns.Client{Net: "tcp", Timeout: lookupTimeout}
		r, _, err = tcp.ExchangeContext(ctx, m, resolver)
	}
	if err != nil {
		return nil, fmt.Errorf("llq: discovery: %s %s via %s: %w", dns.TypeToString[qtype], name, resolver, err)
	}
	return r, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
