package test

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

var wwwRecords = []string{
	"www IN A 192.0.2.1",
	"www IN A 192.0.2.2",
	"www IN AAAA 2001:db8::1",
}

// TestSubscribeInitialAnswers: the Go client's handshake against the real
// server yields the answers an ordinary query gets.
func TestSubscribeInitialAnswers(t *testing.T) {
	s := startServer(t, "", wwwRecords...)
	c := dial(t, s.llq, client.Options{Lease: 30 * time.Second})

	a := subscribe(t, c, "www.example.org.", dns.TypeA)
	if a.ID() == 0 {
		t.Error("LLQ ID 0")
	}
	if got, want := a.Lease(), 30*time.Second; got != want {
		t.Errorf("granted lease %v, want %v", got, want)
	}
	want := rrSetOf(t, "www IN A 192.0.2.1", "www IN A 192.0.2.2")
	if got := rrSet(a.Answers()); !slices.Equal(got, want) {
		t.Errorf("answers\n got %q\nwant %q", got, want)
	}
	if got := rrSet(s.query("www.example.org.", dns.TypeA).Answer); !slices.Equal(got, want) {
		t.Errorf("plain query disagrees: %q", got)
	}

	// Another question on the same client: its own LLQ, its own answers.
	aaaa := subscribe(t, c, "www.example.org.", dns.TypeAAAA)
	if aaaa.ID() == a.ID() {
		t.Error("two questions share an LLQ ID")
	}
	if got, want := rrSet(aaaa.Answers()), rrSetOf(t, "www IN AAAA 2001:db8::1"); !slices.Equal(got, want) {
		t.Errorf("AAAA answers %q, want %q", got, want)
	}

	// A name that does not exist yet is a fine thing to watch.
	none := subscribe(t, c, "later.example.org.", dns.TypeA)
	if got := none.Answers(); len(got) != 0 {
		t.Errorf("answers for a missing name: %v", got)
	}
}

// TestRawHandshake runs RFC 8764's four-way exchange by hand and checks each
// message.
func TestRawHandshake(t *testing.T) {
	s := startServer(t, "", wwwRecords...)
	r := newRaw(t, s.llq, "")
	q := question("www.example.org.", dns.TypeA)
	wantAnswers := rrSetOf(t, "www IN A 192.0.2.1", "www IN A 192.0.2.2")

	// 1-2: Setup Request, Setup Challenge. A duplicate setup (the client
	// lost the challenge) gets the same challenge back. The ID depends on a
	// coarse clock, so two setups straddling its tick may differ: a mismatch
	// is only a failure when it repeats.
	var challenge *dns.EDNS0_LLQ
	for attempt := 1; ; attempt++ {
		setup := llqMsg(q, wire.OpSetup, 0, 10)
		ch := r.exchange(setup)
		if ch.Id != setup.Id {
			t.Fatalf("challenge has DNS ID %d, setup had %d", ch.Id, setup.Id)
		}
		checkChallenge(t, ch, q)
		dup := llqMsg(q, wire.OpSetup, 0, 10)
		ch2 := r.exchange(dup)
		checkChallenge(t, ch2, q)
		if option(t, ch).Id == option(t, ch2).Id {
			challenge = option(t, ch)
			break
		}
		if attempt == 3 {
			t.Fatalf("duplicate setups got different challenge IDs %#x and %#x", option(t, ch).Id, option(t, ch2).Id)
		}
	}
	if challenge.LeaseLife != 10 {
		t.Errorf("challenge grants lease %d, want the 10 asked for", challenge.LeaseLife)
	}

	// 3-4: Challenge Response, ACK+Answers.
	resp := llqMsg(q, wire.OpSetup, challenge.Id, challenge.LeaseLife)
	ack := r.exchange(resp)
	checkACK(t, ack, q, challenge.Id, wantAnswers)

	// A duplicate Challenge Response (the ACK got lost) gets the answers
	// again, under its own DNS ID.
	resp2 := llqMsg(q, wire.OpSetup, challenge.Id, challenge.LeaseLife)
	ack2 := r.exchange(resp2)
	if ack2.Id != resp2.Id {
		t.Errorf("repeated ACK has DNS ID %d, want %d", ack2.Id, resp2.Id)
	}
	checkACK(t, ack2, q, challenge.Id, wantAnswers)

	// The LLQ is live: it refreshes, and it is the only one made.
	if o := r.refresh(q, challenge.Id, 10); o.Error != wire.NoError || o.Opcode != wire.OpRefresh || o.Id != challenge.Id {
		t.Errorf("refresh after handshake: %v", o)
	}
}

func checkChallenge(t *testing.T, ch *dns.Msg, q dns.Question) {
	t.Helper()
	if !ch.Response || ch.Rcode != dns.RcodeSuccess {
		t.Fatalf("challenge is not a NOERROR response:\n%v", ch)
	}
	if len(ch.Question) != 1 || ch.Question[0] != q {
		t.Errorf("challenge question %v, want %v", ch.Question, q)
	}
	if len(ch.Answer) != 0 || len(ch.Ns) != 0 {
		t.Errorf("challenge carries records:\n%v", ch)
	}
	o := option(t, ch)
	if o.Version != wire.Version || o.Opcode != wire.OpSetup || o.Error != wire.NoError || o.Id == 0 {
		t.Errorf("challenge option %v", o)
	}
}

func checkACK(t *testing.T, ack *dns.Msg, q dns.Question, id uint64, want []string) {
	t.Helper()
	if !ack.Response || ack.Rcode != dns.RcodeSuccess || ack.Truncated {
		t.Fatalf("ACK is not a complete NOERROR response:\n%v", ack)
	}
	if len(ack.Question) != 1 || ack.Question[0] != q {
		t.Errorf("ACK question %v, want %v", ack.Question, q)
	}
	o := option(t, ack)
	if o.Opcode != wire.OpSetup || o.Error != wire.NoError || o.Id != id || o.LeaseLife == 0 {
		t.Errorf("ACK option %v, want SETUP NO-ERROR id %#x", o, id)
	}
	if got := rrSet(ack.Answer); !slices.Equal(got, want) {
		t.Errorf("ACK answers\n got %q\nwant %q", got, want)
	}
}

// TestTCPSetup: over TCP the connection proves the address, so a setup
// request gets ACK+Answers straight away (PrivateDNS.txt, dnsextd).
func TestTCPSetup(t *testing.T) {
	s := startServer(t, "", wwwRecords...)
	q := question("www.example.org.", dns.TypeA)
	tc := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	m := llqMsg(q, wire.OpSetup, 0, 30)
	ack, _, err := tc.Exchange(m, s.llq.String())
	if err != nil {
		t.Fatal(err)
	}
	if ack.Id != m.Id {
		t.Errorf("ACK DNS ID %d, want %d", ack.Id, m.Id)
	}
	o := option(t, ack)
	if o.Id == 0 {
		t.Fatalf("TCP setup got no LLQ: %v", o)
	}
	checkACK(t, ack, q, o.Id, rrSetOf(t, "www IN A 192.0.2.1", "www IN A 192.0.2.2"))
}

// TestDiscovery: client.Discover finds the listener through CoreDNS's own
// port, the way an unmodified client would.
func TestDiscovery(t *testing.T) {
	s := startServer(t, "", wwwRecords...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr, zone, err := client.Discover(ctx, s.dns, "www.example.org.")
	if err != nil {
		t.Fatal(err)
	}
	if zone != "example.org." {
		t.Errorf("zone %q", zone)
	}
	if addr != s.llq {
		t.Errorf("discovered %v, listener is %v", addr, s.llq)
	}
	// And a name that does not exist is in the zone all the same.
	if addr, _, err := client.Discover(ctx, s.dns, "nothing.here.example.org."); err != nil || addr != s.llq {
		t.Errorf("discovery for a missing name: %v %v", addr, err)
	}
	// What was discovered works.
	c := dial(t, addr, client.Options{})
	subscribe(t, c, "www.example.org.", dns.TypeA)
}

// TestDiscoveryZoneOwnSRV: a zone that publishes its own _dns-llq._udp SRV
// is served as it is; llq does not advertise itself over it.
func TestDiscoveryZoneOwnSRV(t *testing.T) {
	port := freePort(t)
	listener := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	s := startServerWith(t, config{
		options: "listen " + listener.String() + "\n        lease 2 60",
		llq:     listener,
	},
		"www IN A 192.0.2.1",
		"_dns-llq._udp IN SRV 0 0 5999 elsewhere.example.org.",
		"elsewhere IN A 192.0.2.53",
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr, _, err := client.Discover(ctx, s.dns, "www.example.org.")
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddrPort("192.0.2.53:5999"); addr != want {
		t.Errorf("discovered %v, want the zone's own %v", addr, want)
	}
	r := s.query("_dns-llq._udp.example.org.", dns.TypeSRV)
	if len(r.Answer) != 1 {
		t.Fatalf("SRV answer %v", r.Answer)
	}
	if srv := r.Answer[0].(*dns.SRV); srv.Port != 5999 || srv.Target != "elsewhere.example.org." {
		t.Errorf("SRV not served as is: %v", srv)
	}
	// llq still runs on its own listener.
	c := dial(t, s.llq, client.Options{})
	subscribe(t, c, "www.example.org.", dns.TypeA)
}

// TestLLQOnOrdinaryPort: an LLQ setup sent to CoreDNS's own port gets the
// ordinary answer and no LLQ option, so a client falls back to polling.
func TestLLQOnOrdinaryPort(t *testing.T) {
	s := startServer(t, "", wwwRecords...)
	m := llqMsg(question("www.example.org.", dns.TypeA), wire.OpSetup, 0, 3600)
	r, err := dns.Exchange(m, s.dns)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("rcode %s", dns.RcodeToString[r.Rcode])
	}
	if got, want := rrSet(r.Answer), rrSetOf(t, "www IN A 192.0.2.1", "www IN A 192.0.2.2"); !slices.Equal(got, want) {
		t.Errorf("answers %q, want %q", got, want)
	}
	if opts := wire.Options(r); len(opts) != 0 {
		t.Errorf("ordinary port answered with LLQ options %v", opts)
	}

	// The Go client, pointed at the ordinary port, says it is no LLQ server.
	c := dial(t, netip.MustParseAddrPort(s.dns), client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, question("www.example.org.", dns.TypeA)); err == nil {
		t.Error("subscribed through the ordinary DNS port")
	}
}
