package test

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	ctest "github.com/coredns/coredns/test"
	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// A subscriber gets what an ordinary query from its address gets on
// CoreDNS's port: these tests run the real policy plugins (acl, view,
// rewrite) and file's CNAME chasing in front of llq.

// zoneFile is a zone file for example.org-style records that a test
// rewrites; it reuses the harness's server for writing only.
func zoneFile(t *testing.T, name string, records ...string) *server {
	t.Helper()
	z := &server{t: t, zoneFile: filepath.Join(t.TempDir(), "db."+name), serial: 1, records: records}
	z.writeZone()
	return z
}

// startCorefile starts CoreDNS from corefile, in which %d is replaced by a
// free port for llq's listener (every llq of the file shares it), and
// returns the ordinary DNS address and the LLQ listener.
func startPolicyCorefile(t *testing.T, corefile string) (string, netip.AddrPort) {
	t.Helper()
	port := freePort(t)
	corefile = fmt.Sprintf(corefile, port, port, port)
	inst, udp, _, err := ctest.CoreDNSServerAndPorts(corefile)
	if err != nil {
		t.Fatalf("starting CoreDNS: %v\n%s", err, corefile)
	}
	t.Cleanup(func() { inst.ShutdownCallbacks(); inst.Stop() })
	return loopback(udp), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
}

// queryFrom asks the ordinary port from a local address.
func queryFrom(t *testing.T, server, local, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	c.Dialer = dialerFrom(t, local)
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("query %s from %s: %v", name, local, err)
	}
	return r
}

const llqBlock = `llq {
        listen 127.0.0.1:%[1]d
        lease 2 60
        retransmit 200ms 3
        poll 100ms
    }`

// TestACLRefusedClientGetsNothing: a client that acl refuses on CoreDNS's
// port is refused LLQs too, and gets no answers and no events; an allowed
// client is served as before.
func TestACLRefusedClientGetsNothing(t *testing.T) {
	z := zoneFile(t, "example.org", "www IN A 192.0.2.1", `marker IN TXT "v0"`)
	dnsAddr, llq := startPolicyCorefile(t, `example.org:0 {
    bind 127.0.0.1
    acl {
        block net 127.0.0.2/32
    }
    `+llqBlock+`
    file `+z.zoneFile+` {
        reload 100ms
    }
}
`)
	if r := queryFrom(t, dnsAddr, "127.0.0.2", "www.example.org.", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Fatalf("the ordinary port answers the blocked client: %v", r)
	}
	refused := counter(t, "setups_total", "result", "refused")
	established := counter(t, "setups_total", "result", "established")

	// The blocked client, by hand: it may be challenged (its address is
	// not yet proven), but its challenge response is refused.
	blocked := newRaw(t, llq, "127.0.0.2:0")
	q := question("www.example.org.", dns.TypeA)
	ch := blocked.exchange(llqMsg(q, 1, 0, 60))
	o := option(t, ch)
	ack := blocked.exchange(llqMsg(q, 1, o.Id, o.LeaseLife))
	if ack.Rcode != dns.RcodeRefused || len(ack.Answer) != 0 {
		t.Fatalf("challenge response of a blocked client: want REFUSED without answers, got\n%v", ack)
	}
	// And with the Go client.
	bc := dial(t, llq, client.Options{LocalAddr: "127.0.0.2:0"})
	if _, err := bc.Subscribe(t.Context(), q); err == nil {
		t.Fatal("the blocked client subscribed")
	}

	c := dial(t, llq, client.Options{})
	www := subscribe(t, c, "www.example.org.", dns.TypeA)
	marker := subscribe(t, c, "marker.example.org.", dns.TypeTXT)
	if got, want := rrSet(www.Answers()), rrSetOf(t, "www IN A 192.0.2.1"); !slices.Equal(got, want) {
		t.Fatalf("allowed client got %v, want %v", got, want)
	}
	if n := refused(); n != 2 {
		t.Fatalf("setups_total{refused} grew by %v, want 2", n)
	}
	if n := established(); n != 2 {
		t.Fatalf("setups_total{established} grew by %v, want the allowed client's 2", n)
	}
	records := []string{"www IN A 192.0.2.9"}
	barrier(t, z, marker, records, "v1")
	converge(t, www, rrSetOf(t, records...))
	if m, ok := quietRaw(blocked, 200*time.Millisecond); !ok {
		t.Fatalf("the blocked client got %v", m)
	}
}

// viewsCorefile is two blocks for example.org sharing the llq block given:
// the first, with the zone file two, serves the view of clients at
// 127.0.0.2, the second, with the zone file other, every other client.
func viewsCorefile(llq, two, other string) string {
	return `example.org:0 {
    bind 127.0.0.1
    view two {
        expr incidr(client_ip(), '127.0.0.2/32')
    }
    ` + llq + `
    file ` + two + ` {
        reload 100ms
    }
}
example.org:0 {
    bind 127.0.0.1
    ` + llq + `
    file ` + other + ` {
        reload 100ms
    }
}
`
}

// TestViewsEachSubscriberItsView: two view blocks for one zone share llq's
// listener; each subscriber gets its view's answers and only its view's
// events.
func TestViewsEachSubscriberItsView(t *testing.T) {
	za := zoneFile(t, "a", "www IN A 192.0.2.1", `marker IN TXT "a0"`)
	zb := zoneFile(t, "b", "www IN A 198.51.100.1", `marker IN TXT "b0"`)
	dnsAddr, llq := startPolicyCorefile(t, viewsCorefile(llqBlock, za.zoneFile, zb.zoneFile))
	if got, want := rrSet(queryFrom(t, dnsAddr, "127.0.0.2", "www.example.org.", dns.TypeA).Answer), rrSetOf(t, "www IN A 192.0.2.1"); !slices.Equal(got, want) {
		t.Fatalf("view two answers %v on the ordinary port, want %v", got, want)
	}
	ca := dial(t, llq, client.Options{LocalAddr: "127.0.0.2:0"})
	cb := dial(t, llq, client.Options{LocalAddr: "127.0.0.1:0"})
	wa := subscribe(t, ca, "www.example.org.", dns.TypeA)
	ma := subscribe(t, ca, "marker.example.org.", dns.TypeTXT)
	wb := subscribe(t, cb, "www.example.org.", dns.TypeA)
	mb := subscribe(t, cb, "marker.example.org.", dns.TypeTXT)
	if got, want := rrSet(wa.Answers()), rrSetOf(t, "www IN A 192.0.2.1"); !slices.Equal(got, want) {
		t.Fatalf("view two subscriber got %v, want %v", got, want)
	}
	if got, want := rrSet(wb.Answers()), rrSetOf(t, "www IN A 198.51.100.1"); !slices.Equal(got, want) {
		t.Fatalf("default view subscriber got %v, want %v", got, want)
	}

	// A change in view two's zone reaches only its subscriber.
	barrier(t, za, ma, []string{"www IN A 192.0.2.2"}, "a1")
	converge(t, wa, rrSetOf(t, "www IN A 192.0.2.2"))
	barrier(t, zb, mb, []string{"www IN A 198.51.100.1"}, "b1")
	if evs := drain(wb); len(evs) != 0 {
		t.Fatalf("the default view's subscriber got view two's change: %v", evs[0].Msg)
	}
	// And the other way round.
	barrier(t, zb, mb, []string{"www IN A 198.51.100.2"}, "b2")
	converge(t, wb, rrSetOf(t, "www IN A 198.51.100.2"))
	barrier(t, za, ma, []string{"www IN A 192.0.2.2"}, "a2")
	drain(wa)
	if got, want := rrSet(wa.Answers()), rrSetOf(t, "www IN A 192.0.2.2"); !slices.Equal(got, want) {
		t.Fatalf("view two's subscriber holds %v, want %v", got, want)
	}
}

// TestRewriteAppliesToLLQ: a question rewritten on CoreDNS's port is
// rewritten for its subscriber too, in the ACK and in events.
func TestRewriteAppliesToLLQ(t *testing.T) {
	z := zoneFile(t, "example.org", "www IN A 192.0.2.1", `marker IN TXT "v0"`)
	dnsAddr, llq := startPolicyCorefile(t, `example.org:0 {
    bind 127.0.0.1
    rewrite name alias.example.org www.example.org
    `+llqBlock+`
    file `+z.zoneFile+` {
        reload 100ms
    }
}
`)
	ordinary := queryFrom(t, dnsAddr, "127.0.0.1", "alias.example.org.", dns.TypeA)
	if ordinary.Rcode != dns.RcodeSuccess || len(ordinary.Answer) == 0 {
		t.Fatalf("the ordinary port does not rewrite: %v", ordinary)
	}
	c := dial(t, llq, client.Options{})
	alias := subscribe(t, c, "alias.example.org.", dns.TypeA)
	marker := subscribe(t, c, "marker.example.org.", dns.TypeTXT)
	if got, want := rrSet(alias.Answers()), rrSet(ordinary.Answer); !slices.Equal(got, want) {
		t.Fatalf("LLQ answers %v, the ordinary port %v", got, want)
	}
	barrier(t, z, marker, []string{"www IN A 192.0.2.7"}, "v1")
	ordinary = queryFrom(t, dnsAddr, "127.0.0.1", "alias.example.org.", dns.TypeA)
	converge(t, alias, rrSet(ordinary.Answer))
	if got := rrSet(ordinary.Answer); len(got) != 1 || !slices.Equal(rrSet(alias.Answers()), got) {
		t.Fatalf("after the change: LLQ %v, ordinary %v", rrSet(alias.Answers()), got)
	}
}

// TestCNAMEOutOfZoneTracked: file follows a CNAME out of its zone into
// another block's zone (without llq, so polled); the alias's subscriber
// gets the target's records and its changes.
func TestCNAMEOutOfZoneTracked(t *testing.T) {
	z := zoneFile(t, "example.org", "alias IN CNAME www.example.net.", `marker IN TXT "v0"`)
	nz := &server{t: t, zoneFile: filepath.Join(t.TempDir(), "db.example.net"), serial: 1, records: []string{"www IN A 203.0.113.1"}}
	nz.writeNet()
	dnsAddr, llq := startPolicyCorefile(t, `example.org:0 {
    bind 127.0.0.1
    `+llqBlock+`
    file `+z.zoneFile+` {
        reload 100ms
    }
}
example.net:0 {
    bind 127.0.0.1
    file `+nz.zoneFile+` example.net {
        reload 100ms
    }
}
`)
	ordinary := queryFrom(t, dnsAddr, "127.0.0.1", "alias.example.org.", dns.TypeA)
	c := dial(t, llq, client.Options{})
	alias := subscribe(t, c, "alias.example.org.", dns.TypeA)
	if got, want := rrSet(alias.Answers()), rrSet(ordinary.Answer); len(want) != 2 || !slices.Equal(got, want) {
		t.Fatalf("LLQ answers %v, the ordinary port %v", got, want)
	}
	nz.records = []string{"www IN A 203.0.113.2"}
	nz.serial++
	nz.writeNet()
	eventually(t, "the ordinary port to see the new target", func() bool {
		return slices.ContainsFunc(queryFrom(t, dnsAddr, "127.0.0.1", "www.example.net.", dns.TypeA).Answer, func(rr dns.RR) bool {
			return rr.(*dns.A).A.String() == "203.0.113.2"
		})
	})
	converge(t, alias, rrSet(queryFrom(t, dnsAddr, "127.0.0.1", "alias.example.org.", dns.TypeA).Answer))
}

// writeNet writes s's records as the example.net zone.
func (s *server) writeNet() {
	s.t.Helper()
	body := fmt.Sprintf("$ORIGIN example.net.\n$TTL 3600\n@ IN SOA ns1.example.net. hostmaster.example.net. ( %d 7200 3600 1209600 3600 )\n  IN NS ns1.example.net.\nns1 IN A 127.0.0.1\n", s.serial) + strings.Join(s.records, "\n") + "\n"
	tmp := s.zoneFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, s.zoneFile); err != nil {
		s.t.Fatal(err)
	}
}

// dialerFrom is a dialer whose UDP socket is bound to local.
func dialerFrom(t *testing.T, local string) *net.Dialer {
	t.Helper()
	return &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(local)}}
}

// quietRaw reports whether nothing arrives on r for d. It only checks that
// something does not happen.
func quietRaw(r *raw, d time.Duration) (*dns.Msg, bool) {
	buf := make([]byte, 65535)
	r.conn.SetReadDeadline(time.Now().Add(d))
	n, err := r.conn.Read(buf)
	if err != nil {
		return nil, true
	}
	m := new(dns.Msg)
	m.Unpack(buf[:n])
	return m, false
}

// TestLargeAnswerSetOverUDP: 40 PTRs of long names do not fit a UDP size of
// 1440. The ACK is never TC-only (Apple's client takes that for established
// and never fetches the answers): it carries what fits and the rest comes as
// acknowledged events, so the client holds the whole set over UDP alone.
func TestLargeAnswerSetOverUDP(t *testing.T) {
	var ptrs []string
	for i := range 40 {
		ptrs = append(ptrs, fmt.Sprintf("_svc IN PTR instance-%02d-%s.example.org.", i, strings.Repeat("x", 50)))
	}
	s := startServer(t, "", ptrs...)
	log := &eventLog{}
	acked := counter(t, "event_acks_total")
	c := dial(t, s.llq, client.Options{UDPSize: 1440, OnPacket: log.hook})
	sub := subscribe(t, c, "_svc.example.org.", dns.TypePTR)
	want := rrSetOf(t, ptrs...)
	converge(t, sub, want)
	if n := log.truncated(); n != 0 {
		t.Fatalf("%d truncated replies", n)
	}
	evs := log.of(sub.ID())
	if len(evs) == 0 {
		t.Fatal("the whole set fitted the ACK: the test proves nothing")
	}
	for _, p := range evs {
		if p.size > 1440 {
			t.Fatalf("event of %d bytes to a 1440-byte client", p.size)
		}
	}
	eventually(t, "every event acknowledged", func() bool { return acked() >= float64(len(evs)) })
}

// TestRefusedQuestionLeavesNoLLQ: an LLQ message of two questions, one of
// which acl refuses (TXT), is REFUSED as a whole, over plain TCP and on a
// TLS session alike, and leaves no LLQ for the other question (A), whose ID
// the client never hears.
func TestRefusedQuestionLeavesNoLLQ(t *testing.T) {
	z := zoneFile(t, "example.org", "www IN A 192.0.2.1", `marker IN TXT "v0"`)
	cert, key, pool := certChain(t)
	tlsAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
	_, llq := startPolicyCorefile(t, `example.org:0 {
    bind 127.0.0.1
    acl {
        block type TXT
    }
    llq {
        listen 127.0.0.1:%[1]d
        tls `+cert+` `+key+`
        tls-listen `+tlsAddr.String()+`
    }
    file `+z.zoneFile+`
}
`)
	live := metric(t, "subscriptions")
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.Question = []dns.Question{question("www.example.org.", dns.TypeA), question("marker.example.org.", dns.TypeTXT)}
	wire.SetOptions(m, 1232, wire.NewOption(wire.OpSetup, wire.NoError, 0, 3600), wire.NewOption(wire.OpSetup, wire.NoError, 0, 3600))
	for _, c := range []*dns.Client{
		{Net: "tcp", Timeout: 20 * time.Second},
		{Net: "tcp-tls", TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, Timeout: 20 * time.Second},
	} {
		addr := llq.String()
		if c.Net == "tcp-tls" {
			addr = tlsAddr.String()
		}
		conn, err := c.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		r, _, err := c.ExchangeWithConn(m, conn)
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
			t.Fatalf("%s: want REFUSED without answers, got\n%v", c.Net, r)
		}
		if n := metric(t, "subscriptions"); n != live {
			t.Fatalf("%s: subscriptions %v, was %v: an LLQ was left", c.Net, n, live)
		}
		conn.Close()
	}
}
