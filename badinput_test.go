package llq

import (
	"testing"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// The names llq synthesises exist: other types, and the empty non-terminal
// _udp.ZONE, get NOERROR with the zone's SOA and no data, never NXDOMAIN,
// which a resolver would cache for the SRV record too.
func TestDiscoveryNamesNoData(t *testing.T) {
	d := newDiscoveryEnv(t, "")
	for _, c := range []struct {
		name  string
		qtype uint16
	}{
		{"_dns-llq._udp.example.org.", dns.TypeTXT},
		{"_dns-llq._udp.example.org.", dns.TypeA},
		{"llq.example.org.", dns.TypeTXT},
		{"llq.example.org.", dns.TypeAAAA},
		{"_udp.example.org.", dns.TypeA},
		{"_udp.example.org.", dns.TypeSRV},
		{"_UDP.Example.org.", dns.TypeTXT},
	} {
		r, _ := d.ask(t, c.name, c.qtype)
		if r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
			t.Fatalf("%s %s: want NOERROR without answers, got %v", c.name, dns.TypeToString[c.qtype], r)
		}
		if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA {
			t.Fatalf("%s %s: NODATA without the zone's SOA: %v", c.name, dns.TypeToString[c.qtype], r)
		}
	}
	// Names that llq does not synthesise stay the backend's.
	for _, name := range []string{"x._udp.example.org.", "_tcp.example.org.", "llqx.example.org."} {
		if r, _ := d.ask(t, name, dns.TypeA); r == nil || r.Rcode != dns.RcodeNameError {
			t.Fatalf("%s A: want the backend's NXDOMAIN, got %v", name, r)
		}
	}
}

// Only class IN and types that name data are subscribed to; the rest is
// REFUSED before any challenge, as CoreDNS's port refuses other classes.
func TestSetupRefusesClassAndMetaTypes(t *testing.T) {
	env := newTestEnv(t, nil)
	c := newUDPClient(t)
	challenged := track(t, env.e.metrics.setups.WithLabelValues("challenged"))
	refused := track(t, env.e.metrics.setups.WithLabelValues("refused"))
	bad := []dns.Question{
		{Name: "www.example.org.", Qtype: dns.TypeA, Qclass: dns.ClassCHAOS},
		{Name: "www.example.org.", Qtype: dns.TypeA, Qclass: 7},
		{Name: "www.example.org.", Qtype: dns.TypeA, Qclass: dns.ClassANY},
	}
	for _, qt := range []uint16{0, dns.TypeOPT, dns.TypeAXFR, dns.TypeIXFR, dns.TypeANY, dns.TypeTSIG, dns.TypeTKEY, dns.TypeMAILA, 128, dns.TypeReserved} {
		bad = append(bad, dns.Question{Name: "www.example.org.", Qtype: qt, Qclass: dns.ClassINET})
	}
	for _, q := range bad {
		for _, tcp := range []bool{false, true} {
			r := env.exchange(t, llqMsg(1, 1232, []dns.Question{q}, setupOpt(0, 3600)), c.addr, tcp)
			if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
				t.Fatalf("%v (tcp %v): want REFUSED, got %v", q, tcp, r)
			}
		}
	}
	if n := challenged.moved(t); n != 0 {
		t.Fatalf("%v challenges issued", n)
	}
	if n := refused.moved(t); n != float64(2*len(bad)) {
		t.Fatalf("setups_total{refused} moved %v, want %d", n, 2*len(bad))
	}
	if st := env.e.Stats(); st.LLQs != 0 || st.Topics != 0 {
		t.Fatalf("refused questions left %+v", st)
	}
	// The served class still works.
	env.establish(t, c.addr, 1232, qWWW, 3600)
}

// A message with two OPT records is FORMERR (RFC 6891 section 6.1.1), over
// UDP and over TCP, and nothing is challenged or established.
func TestTwoOPTRecordsFormErr(t *testing.T) {
	env := newTestEnv(t, nil)
	c := newUDPClient(t)
	challenged := track(t, env.e.metrics.setups.WithLabelValues("challenged"))
	for _, tcp := range []bool{false, true} {
		m := llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600))
		second := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		second.SetUDPSize(1232)
		second.Option = []dns.EDNS0{wire.NewOption(wire.OpSetup, wire.NoError, 0, 3600)}
		m.Extra = append(m.Extra, second)
		r := env.exchange(t, m, c.addr, tcp)
		if r.Rcode != dns.RcodeFormatError {
			t.Fatalf("tcp %v: two OPT records got %s, want FORMERR", tcp, dns.RcodeToString[r.Rcode])
		}
	}
	if n := challenged.moved(t); n != 0 {
		t.Fatalf("%v challenges issued", n)
	}
	if st := env.e.Stats(); st.LLQs != 0 {
		t.Fatalf("two OPT records established %d LLQs", st.LLQs)
	}
}

// setups_total{result="serv-full"} counts what the README says: setups
// refused by a limit when the LLQ was to be created. A SERV-FULL sent
// straight back to a setup request counts only in errors_total and
// limit_rejections_total.
func TestServFullMetric(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.maxPerClient = 1 })
	c := newUDPClient(t)
	env.establish(t, c.addr, 1232, qWWW, 3600)
	servFull := track(t, env.e.metrics.setups.WithLabelValues("serv-full"))
	errs := track(t, env.e.metrics.errorsSent.WithLabelValues("SERV-FULL"))
	limits := track(t, env.e.metrics.limitRejections.WithLabelValues("max-llqs-per-client"))

	other := question("other.example.org.", dns.TypeA)
	r := env.exchange(t, llqMsg(1, 1232, []dns.Question{other}, setupOpt(0, 3600)), c.addr, false)
	wantOpt(t, only(t, r), wire.OpSetup, wire.ServFull)
	if servFull.moved(t) != 0 || errs.moved(t) != 1 || limits.moved(t) != 1 {
		t.Fatalf("refused setup request: serv-full %v errors %v limit %v, want 0 1 1", servFull.moved(t), errs.moved(t), limits.moved(t))
	}
	// Over TCP the LLQ is to be created at once: that one counts.
	r = env.exchange(t, llqMsg(2, 1232, []dns.Question{other}, setupOpt(0, 3600)), c.addr, true)
	wantOpt(t, only(t, r), wire.OpSetup, wire.ServFull)
	if servFull.moved(t) != 1 {
		t.Fatalf("refused TCP setup: serv-full moved %v, want 1", servFull.moved(t))
	}
}
