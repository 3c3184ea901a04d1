package llq

import (
	"context"
	"net"
	"testing"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/file"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// discoveryEnv is an engine plus the llq handler on CoreDNS's own port with
// the file zone as its Next; seen records every request that reaches Next.
type discoveryEnv struct {
	*testEnv
	l    *LLQ
	seen []*dns.Msg
}

func newDiscoveryEnv(t *testing.T, srvTarget string) *discoveryEnv {
	env := newTestEnv(t, func(c *config) { c.srvTarget = srvTarget })
	d := &discoveryEnv{testEnv: env}
	f := file.File{Zones: fileZones(env.zone)}
	d.l = &LLQ{Zones: []string{testZone}, cfg: env.e.config(), Next: plugin.HandlerFunc(
		func(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
			d.seen = append(d.seen, r.Copy())
			return f.ServeDNS(ctx, w, r)
		})}
	d.l.setEngine(env.e)
	return d
}

func (d *discoveryEnv) ask(t *testing.T, name string, qtype uint16) (*dns.Msg, int) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return d.serve(t, m)
}

func (d *discoveryEnv) serve(t *testing.T, m *dns.Msg) (*dns.Msg, int) {
	t.Helper()
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	rcode, err := d.l.ServeDNS(context.Background(), rec, m)
	if err != nil {
		t.Fatalf("ServeDNS: %v", err)
	}
	return rec.Msg, rcode
}

func (d *discoveryEnv) port() uint16 { return uint16(d.e.Addr().(*net.UDPAddr).Port) }

func TestDiscoverySRV(t *testing.T) {
	d := newDiscoveryEnv(t, "")
	for _, name := range []string{"_dns-llq._udp.example.org.", "_DNS-LLQ._udp.Example.ORG."} {
		r, _ := d.ask(t, name, dns.TypeSRV)
		if r == nil || r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 {
			t.Fatalf("%s SRV: %v", name, r)
		}
		srv, ok := r.Answer[0].(*dns.SRV)
		if !ok || srv.Hdr.Name != name || srv.Port != d.port() || srv.Target != "llq.example.org." || srv.Hdr.Ttl != discoveryTTL {
			t.Fatalf("%s SRV answer %v, want port %d target llq.example.org.", name, r.Answer[0], d.port())
		}
		// Glue for the target: the listener is bound to 127.0.0.1, so an
		// A record and no AAAA.
		sameRRs(t, r.Extra, "llq.example.org. 60 IN A 127.0.0.1")
	}
	// The target's address on its own.
	r, _ := d.ask(t, "llq.example.org.", dns.TypeA)
	sameRRs(t, r.Answer, "llq.example.org. 60 IN A 127.0.0.1")
	r, _ = d.ask(t, "llq.example.org.", dns.TypeAAAA)
	if r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Fatalf("AAAA of an IPv4 listener: %v", r)
	}
}

func TestDiscoveryZoneDataWins(t *testing.T) {
	d := newDiscoveryEnv(t, "")
	swapZone(t, d.zone, withRecords(
		"_dns-llq._udp IN SRV 0 0 5353 push.example.org.",
		"push IN A 192.0.2.80",
		"llq IN A 192.0.2.77",
	))
	r, _ := d.ask(t, "_dns-llq._udp.example.org.", dns.TypeSRV)
	sameRRs(t, r.Answer, "_dns-llq._udp.example.org. 3600 IN SRV 0 0 5353 push.example.org.")
	r, _ = d.ask(t, "llq.example.org.", dns.TypeA)
	sameRRs(t, r.Answer, "llq.example.org. 3600 IN A 192.0.2.77")
}

func TestDiscoveryOnlyAtApex(t *testing.T) {
	d := newDiscoveryEnv(t, "")
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"_dns-llq._udp.www.example.org.", dns.TypeSRV},
		{"_dns-llq._udp.nothing.example.org.", dns.TypeSRV},
		{"llq.www.example.org.", dns.TypeA},
	} {
		r, _ := d.ask(t, q.name, q.qtype)
		if r == nil || len(r.Answer) != 0 || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s %s below the apex: %v, want the zone's NXDOMAIN", q.name, dns.TypeToString[q.qtype], r)
		}
	}
	// Not one of llq's zones: straight to Next, which refuses it.
	r, rcode := d.ask(t, "_dns-llq._udp.example.net.", dns.TypeSRV)
	if r != nil || rcode != dns.RcodeRefused {
		t.Fatalf("foreign zone: %v rcode %d", r, rcode)
	}
}

func TestDiscoverySRVTarget(t *testing.T) {
	d := newDiscoveryEnv(t, "push.example.net.")
	r, _ := d.ask(t, "_dns-llq._udp.example.org.", dns.TypeSRV)
	if r == nil || len(r.Answer) != 1 {
		t.Fatalf("SRV: %v", r)
	}
	if srv := r.Answer[0].(*dns.SRV); srv.Target != "push.example.net." || srv.Port != d.port() {
		t.Fatalf("SRV %v", srv)
	}
	if len(r.Extra) != 0 {
		t.Fatalf("glue for a configured target: %v", r.Extra)
	}
	// llq.ZONE is nothing special then.
	r, _ = d.ask(t, "llq.example.org.", dns.TypeA)
	if r == nil || len(r.Answer) != 0 || r.Rcode != dns.RcodeNameError {
		t.Fatalf("llq.example.org with a configured target: %v", r)
	}
}

func TestDiscoveryWithoutEngine(t *testing.T) {
	d := newDiscoveryEnv(t, "")
	d.l.setEngine(nil) // not started, or shut down
	r, _ := d.ask(t, "_dns-llq._udp.example.org.", dns.TypeSRV)
	if r == nil || len(r.Answer) != 0 {
		t.Fatalf("synthesised without an engine: %v", r)
	}
}

// An LLQ query that reaches CoreDNS's own port is answered as an ordinary
// query, and no LLQ option travels down the chain.
func TestLLQQueryOnOrdinaryPort(t *testing.T) {
	d := newDiscoveryEnv(t, "")
	m := llqMsg(99, 1232, []dns.Question{qWWW}, setupOpt(0, 3600))
	opt := m.IsEdns0()
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}
	opt.Option = append(opt.Option, cookie)
	r, _ := d.serve(t, m)
	if r == nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("reply %v", r)
	}
	sameRRs(t, r.Answer, wwwRecords...)
	if len(wire.Options(r)) != 0 {
		t.Fatalf("reply carries an LLQ option: %v", r)
	}
	if len(d.seen) != 1 {
		t.Fatalf("Next saw %d requests", len(d.seen))
	}
	next := d.seen[0]
	if len(wire.Options(next)) != 0 {
		t.Fatalf("Next saw an LLQ option: %v", next)
	}
	nopt := next.IsEdns0()
	if nopt == nil || nopt.UDPSize() != 1232 || len(nopt.Option) != 1 || nopt.Option[0].Option() != dns.EDNS0COOKIE {
		t.Fatalf("Next saw OPT %v, want the cookie alone", nopt)
	}
	// The OPT record the caller holds is untouched.
	if len(opt.Option) != 2 {
		t.Fatalf("stripLLQ edited the caller's OPT record: %v", opt)
	}

	// A discovery query with an LLQ option loses it too.
	d.seen = nil
	s := llqMsg(5, 1232, []dns.Question{question("_dns-llq._udp.example.org.", dns.TypeSRV)}, setupOpt(0, 3600))
	if r, _ := d.serve(t, s); r == nil || len(r.Answer) != 1 {
		t.Fatalf("discovery with an LLQ option: %v", r)
	}
	for _, m := range d.seen {
		if len(wire.Options(m)) != 0 {
			t.Fatalf("Next saw an LLQ option during discovery: %v", m)
		}
	}
}

func TestStripLLQ(t *testing.T) {
	plain := new(dns.Msg)
	plain.SetQuestion("www.example.org.", dns.TypeA)
	stripLLQ(plain) // no OPT: nothing to do
	if len(plain.Extra) != 0 {
		t.Fatalf("OPT appeared")
	}
	m := llqMsg(1, 4096, []dns.Question{qWWW}, setupOpt(0, 1), setupOpt(0, 2))
	m.Extra = append([]dns.RR{mustRR(t, "x.example.org. 1 IN A 192.0.2.1")}, m.Extra...)
	m.IsEdns0().SetDo()
	stripLLQ(m)
	if len(m.Extra) != 2 || m.Extra[0].Header().Rrtype != dns.TypeA {
		t.Fatalf("extra section %v", m.Extra)
	}
	opt := m.IsEdns0()
	if opt == nil || len(opt.Option) != 0 || !opt.Do() || opt.UDPSize() != 4096 {
		t.Fatalf("OPT after strip: %v", opt)
	}
}

// With the TLS listener on, _dns-push-tls._tcp.ZONE (DNS Push) and
// _dns-llq-tls._tcp.ZONE (private LLQ) point at its port, and their other
// types and the empty non-terminal _tcp.ZONE are NODATA; without it, the
// queries go to the zone untouched.
func TestDiscoveryTLS(t *testing.T) {
	names := []string{"_dns-push-tls._tcp.example.org.", "_dns-llq-tls._tcp.example.org.", "_DNS-LLQ-TLS._TCP.example.org."}
	d := newDiscoveryEnv(t, "")
	for _, name := range append(names, "_tcp.example.org.") {
		r, _ := d.ask(t, name, dns.TypeSRV)
		if r == nil || len(r.Answer) != 0 || r.Rcode != dns.RcodeNameError {
			t.Fatalf("%s: no TLS listener, yet %v", name, r)
		}
	}

	env, _ := newPushEnv(t, nil)
	f := file.File{Zones: fileZones(env.zone)}
	l := &LLQ{Zones: []string{testZone}, cfg: env.e.config(), Next: f}
	l.setEngine(env.e)
	d = &discoveryEnv{testEnv: env, l: l}
	for _, name := range names {
		r, _ := d.ask(t, name, dns.TypeSRV)
		if r == nil || len(r.Answer) != 1 {
			t.Fatalf("%s SRV: %v", name, r)
		}
		srv := r.Answer[0].(*dns.SRV)
		if srv.Hdr.Name != name || int(srv.Port) != env.e.push.Addr().(*net.TCPAddr).Port || srv.Target != "llq.example.org." {
			t.Fatalf("SRV %v, want port %s", srv, env.e.push.Addr())
		}
		sameRRs(t, r.Extra, "llq.example.org. 60 IN A 127.0.0.1")
		r, _ = d.ask(t, name, dns.TypeTXT)
		if r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
			t.Fatalf("%s TXT: want NODATA, got %v", name, r)
		}
	}
	r, _ := d.ask(t, "_tcp.example.org.", dns.TypeSRV)
	if r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Fatalf("_tcp: want NODATA, got %v", r)
	}
	// The zone's own record wins.
	swapZone(t, env.zone, withRecords("_dns-llq-tls._tcp IN SRV 0 0 8853 tls.example.org."))
	f.Zones = fileZones(env.zone)
	l.Next = f
	r, _ = d.ask(t, "_dns-llq-tls._tcp.example.org.", dns.TypeSRV)
	if r == nil || len(r.Answer) != 1 || r.Answer[0].(*dns.SRV).Port != 8853 {
		t.Fatalf("the zone's own SRV: %v", r)
	}
}
