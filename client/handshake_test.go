package client

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

func TestHandshake(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	a1 := rr(t, "www.example.org. 3600 IN A 192.0.2.1")
	a2 := rr(t, "www.example.org. 3600 IN A 192.0.2.2")
	const id = 0x1122334455667788

	ch := subscribeAsync(c, dns.Question{Name: "www.example.org", Qtype: dns.TypeA})

	setup := p.recv()
	m := setup.m
	if m.Response || m.Opcode != dns.OpcodeQuery || len(m.Question) != 1 || m.Question[0] != testQ {
		t.Fatalf("setup request is not a one-question query for %v:\n%s", testQ, m)
	}
	if len(m.Answer)+len(m.Ns) != 0 {
		t.Errorf("setup request carries records:\n%s", m)
	}
	if opt := m.IsEdns0(); opt == nil || opt.UDPSize() != DefaultUDPSize {
		t.Errorf("setup request OPT = %v, want UDP size %d", opt, DefaultUDPSize)
	}
	wantLLQ(t, onlyLLQ(t, m), wire.OpSetup, 0, 0, 7200)
	// The server grants less than asked: the client must echo the grant.
	p.reply(setup, llqReply(m, wire.OpSetup, 0, id, 3600))

	cr := p.recv()
	if cr.m.Response || len(cr.m.Question) != 1 || cr.m.Question[0] != testQ {
		t.Fatalf("challenge response is not a query for %v:\n%s", testQ, cr.m)
	}
	wantLLQ(t, onlyLLQ(t, cr.m), wire.OpSetup, 0, id, 3600)
	if cr.from != setup.from {
		t.Errorf("challenge response from %s, setup from %s: want one socket", cr.from, setup.from)
	}
	p.reply(cr, llqReply(cr.m, wire.OpSetup, 0, id, 3000, a1, a2))

	s, err := result(t, ch)
	if err != nil {
		t.Fatal(err)
	}
	if s.ID() != id || s.Lease() != 3000*time.Second || s.Question() != testQ {
		t.Errorf("subscription: id %#x lease %s question %v", s.ID(), s.Lease(), s.Question())
	}
	sameRRs(t, s.Answers(), a1, a2)
	if s.Err() != nil {
		t.Errorf("Err() = %v on a live subscription", s.Err())
	}
}

func TestHandshakeOptions(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{Lease: 15 * time.Minute, UDPSize: 4000, LocalAddr: "127.0.0.2:0"})
	ch := subscribeAsync(c, testQ)
	setup := p.recv()
	if setup.from.Addr() != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("setup from %s, want 127.0.0.2", setup.from)
	}
	if opt := setup.m.IsEdns0(); opt == nil || opt.UDPSize() != 4000 {
		t.Errorf("OPT = %v, want UDP size 4000", opt)
	}
	wantLLQ(t, onlyLLQ(t, setup.m), wire.OpSetup, 0, 0, 900)
	p.reply(setup, llqReply(setup.m, wire.OpSetup, 0, 9, 900))
	cr := p.recv()
	p.reply(cr, llqReply(cr.m, wire.OpSetup, 0, 9, 900))
	if _, err := result(t, ch); err != nil {
		t.Fatal(err)
	}
}

func TestRetransmission(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{RetryInterval: 20 * time.Millisecond})
	ch := subscribeAsync(c, testQ)

	// Drop the first setup request: the retransmission must be the same
	// message, ID included.
	first := p.recvRaw()
	second := p.recvRaw()
	if !bytes.Equal(first.raw, second.raw) {
		t.Fatalf("retransmitted setup differs:\n%s\n%s", first.m, second.m)
	}
	p.reply(second, llqReply(second.m, wire.OpSetup, 0, 42, 7200))

	// Skip whatever setup copies were still in flight, then drop the
	// first challenge response too.
	cr := p.recvRaw()
	for cr.m.Id == first.m.Id {
		cr = p.recvRaw()
	}
	cr2 := p.recvRaw()
	if !bytes.Equal(cr.raw, cr2.raw) {
		t.Fatalf("retransmitted challenge response differs:\n%s\n%s", cr.m, cr2.m)
	}
	if cr.m.Id == first.m.Id {
		t.Error("challenge response reuses the setup's DNS ID")
	}
	p.reply(cr2, llqReply(cr2.m, wire.OpSetup, 0, 42, 7200, rr(t, "www.example.org. 60 IN A 192.0.2.1")))
	s, err := result(t, ch)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Answers()) != 1 {
		t.Errorf("answers = %v", s.Answers())
	}
}

func TestNoReply(t *testing.T) {
	p := newPeer(t)
	var sent atomic.Int32
	c := dial(t, p, Options{RetryInterval: 10 * time.Millisecond, OnPacket: func(d Direction, _ netip.AddrPort, _ []byte) {
		if d == Sent {
			sent.Add(1)
		}
	}})
	_, err := result(t, subscribeAsync(c, testQ))
	var nr *NoReplyError
	if !errors.As(err, &nr) {
		t.Fatalf("err = %v, want *NoReplyError", err)
	}
	if nr.Server != p.addr || nr.Attempts != 3 || nr.Step != "SETUP request" {
		t.Errorf("NoReplyError = %+v", nr)
	}
	if n := sent.Load(); n != 3 {
		t.Errorf("sent %d setup requests, want 3", n)
	}
	if want := p.addr.String(); !bytes.Contains([]byte(err.Error()), []byte(want)) {
		t.Errorf("error %q does not name %s", err, want)
	}
}

func TestChallengeResponseNoReply(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{RetryInterval: 10 * time.Millisecond})
	ch := subscribeAsync(c, testQ)
	setup := p.recv()
	p.reply(setup, llqReply(setup.m, wire.OpSetup, 0, 7, 7200))
	_, err := result(t, ch)
	var nr *NoReplyError
	if !errors.As(err, &nr) || nr.Step != "challenge response" {
		t.Fatalf("err = %v, want a NoReplyError for the challenge response", err)
	}
	if c.sub(7) != nil {
		t.Error("failed handshake left its subscription registered")
	}
}

func TestIgnoresForeignSource(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	other := newPeer(t)
	client := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), c.LocalAddr().Port())

	ch := subscribeAsync(c, testQ)
	setup := p.recv()
	// A third party answering with the right ID must not be believed.
	forged := llqReply(setup.m, wire.OpSetup, wire.ServFull, 0, 60)
	forged.Id = setup.m.Id
	other.send(forged, client)
	// Nor a reply with a wrong ID from the server.
	wrong := llqReply(setup.m, wire.OpSetup, wire.Static, 0, 0)
	wrong.Id = setup.m.Id + 1
	p.send(wrong, setup.from)

	p.reply(setup, llqReply(setup.m, wire.OpSetup, 0, 5, 7200))
	cr := p.recv()
	p.reply(cr, llqReply(cr.m, wire.OpSetup, 0, 5, 7200))
	if _, err := result(t, ch); err != nil {
		t.Fatal(err)
	}
}

func TestTruncatedAckUsesTCP(t *testing.T) {
	p := newPeer(t)
	p.listenTCP()
	c := dial(t, p, Options{})
	var all []dns.RR
	for i := range 50 {
		all = append(all, &dns.A{
			Hdr: dns.RR_Header{Name: "www.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A:   net.IPv4(10, 0, 0, byte(i)),
		})
	}
	p.tcpReply = func(r *dns.Msg) *dns.Msg {
		return llqReply(r, wire.OpSetup, 0, 77, 7200, all...)
	}

	ch := subscribeAsync(c, testQ)
	setup := p.recv()
	p.reply(setup, llqReply(setup.m, wire.OpSetup, 0, 77, 7200))
	cr := p.recv()
	tc := llqReply(cr.m, wire.OpSetup, 0, 77, 7200, all[:3]...)
	tc.Truncated = true
	p.reply(cr, tc)

	s, err := result(t, ch)
	if err != nil {
		t.Fatal(err)
	}
	sameRRs(t, s.Answers(), all...)
	var r *dns.Msg
	select {
	case r = <-p.tcpIn:
	case <-time.After(waitFor):
		t.Fatal("nothing over TCP")
	}
	if len(r.Question) != 1 || r.Question[0] != testQ {
		t.Errorf("TCP challenge response question = %v", r.Question)
	}
	wantLLQ(t, onlyLLQ(t, r), wire.OpSetup, 0, 77, 7200)
}

func TestTruncatedAckTCPEventPort(t *testing.T) {
	p := newPeer(t)
	p.listenTCP()
	c := dial(t, p, Options{TCPEventPort: true})
	p.tcpReply = func(r *dns.Msg) *dns.Msg { return llqReply(r, wire.OpSetup, 0, 78, 7200) }
	ch := subscribeAsync(c, testQ)
	setup := p.recv()
	p.reply(setup, llqReply(setup.m, wire.OpSetup, 0, 78, 7200))
	cr := p.recv()
	tc := llqReply(cr.m, wire.OpSetup, 0, 78, 7200)
	tc.Truncated = true
	p.reply(cr, tc)
	if _, err := result(t, ch); err != nil {
		t.Fatal(err)
	}
	r := <-p.tcpIn
	wantLLQ(t, onlyLLQ(t, r), wire.OpSetup, c.LocalAddr().Port(), 78, 7200)
}

func TestNotAnLLQServer(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	ch := subscribeAsync(c, testQ)
	setup := p.recv()
	plain := new(dns.Msg)
	plain.SetReply(setup.m)
	plain.Answer = []dns.RR{rr(t, "www.example.org. 60 IN A 192.0.2.1")}
	p.reply(setup, plain)
	if _, err := result(t, ch); !errors.Is(err, ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
}

func TestSubscribeAfterClose(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := result(t, subscribeAsync(c, testQ)); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func TestDuplicateQuestion(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	establish(t, p, c, testQ, 8, 7200)
	q := testQ
	q.Name = "WWW.Example.ORG."
	if _, err := result(t, subscribeAsync(c, q)); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("err = %v, want ErrDuplicate", err)
	}
	// Another type of the same name is another LLQ.
	q.Qtype = dns.TypeAAAA
	ch := subscribeAsync(c, q)
	setup := p.recv()
	p.reply(setup, llqReply(setup.m, wire.OpSetup, 0, 9, 7200))
	cr := p.recv()
	p.reply(cr, llqReply(cr.m, wire.OpSetup, 0, 9, 7200))
	if _, err := result(t, ch); err != nil {
		t.Fatal(err)
	}
}
