package client

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// The tests script the server side by hand on a real loopback socket: the
// peer hands every datagram it receives to the test, which answers as the
// scenario demands.

// waitFor bounds every wait in the tests. It is a safety net against hangs,
// never a measured timing.
const waitFor = 5 * time.Second

// testRetry is long enough that a scripted peer never races the client's
// retransmissions; tests about retransmission use a short one.
const testRetry = 500 * time.Millisecond

var testQ = dns.Question{Name: "www.example.org.", Qtype: dns.TypeA, Qclass: dns.ClassINET}

type packet struct {
	m    *dns.Msg
	raw  []byte
	from netip.AddrPort
}

type peer struct {
	t    *testing.T
	conn *net.UDPConn
	addr netip.AddrPort
	in   chan packet

	mu   sync.Mutex
	seen map[string]bool // requests already handed out, to skip retransmissions

	tcp   *dns.Server
	tcpIn chan *dns.Msg
	// tcpReply answers requests over TCP; set it before the client uses TCP.
	tcpReply func(*dns.Msg) *dns.Msg
}

func newPeer(t *testing.T) *peer {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{
		t:     t,
		conn:  conn,
		addr:  conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		in:    make(chan packet, 1000),
		seen:  make(map[string]bool),
		tcpIn: make(chan *dns.Msg, 10),
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		for {
			b := make([]byte, 65535)
			n, from, err := conn.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if err := m.Unpack(b[:n]); err != nil {
				continue
			}
			p.in <- packet{m: m, raw: b[:n], from: from}
		}
	}()
	return p
}

// listenTCP makes the peer serve TCP on the same port as its UDP socket.
func (p *peer) listenTCP() {
	p.t.Helper()
	l, err := net.Listen("tcp4", p.addr.String())
	if err != nil {
		p.t.Skipf("TCP port %d is taken: %v", p.addr.Port(), err)
	}
	started := make(chan struct{})
	p.tcp = &dns.Server{Listener: l, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			p.tcpIn <- r
			if p.tcpReply != nil {
				w.WriteMsg(p.tcpReply(r))
			}
		})}
	go p.tcp.ActivateAndServe()
	<-started
	p.t.Cleanup(func() { p.tcp.Shutdown() })
}

// recvRaw returns the next datagram, retransmissions included.
func (p *peer) recvRaw() packet {
	p.t.Helper()
	select {
	case pk := <-p.in:
		return pk
	case <-time.After(waitFor):
		p.t.Fatal("peer: nothing received")
	}
	return packet{}
}

// recv returns the next datagram that is not a retransmission of a request
// already returned. Acks (QR=1) are never skipped: a duplicate event is
// acked twice with identical bytes.
func (p *peer) recv() packet {
	p.t.Helper()
	for {
		pk := p.recvRaw()
		if pk.m.Response {
			return pk
		}
		p.mu.Lock()
		dup := p.seen[string(pk.raw)]
		p.seen[string(pk.raw)] = true
		p.mu.Unlock()
		if !dup {
			return pk
		}
	}
}

func (p *peer) send(m *dns.Msg, to netip.AddrPort) {
	p.t.Helper()
	b, err := m.Pack()
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.conn.WriteToUDPAddrPort(b, to); err != nil {
		p.t.Fatal(err)
	}
}

// reply answers req with m, echoing req's DNS ID.
func (p *peer) reply(req packet, m *dns.Msg) {
	p.t.Helper()
	m.Id = req.m.Id
	p.send(m, req.from)
}

// llqReply builds a reply to req carrying one LLQ option.
func llqReply(req *dns.Msg, op, code uint16, id uint64, lease uint32, answers ...dns.RR) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Answer = answers
	wire.SetOptions(m, 1232, wire.NewOption(op, code, id, lease))
	return m
}

// event builds an unsolicited event packet for the LLQ id.
func event(q dns.Question, id uint64, lease uint32, rrs ...dns.RR) *dns.Msg {
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.Response = true
	m.Question = []dns.Question{q}
	m.Answer = rrs
	wire.SetOptions(m, 1232, wire.NewOption(wire.OpEvent, wire.NoError, id, lease))
	return m
}

func rr(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// gone marks rr as removed the way events do.
func gone(r dns.RR) dns.RR {
	c := dns.Copy(r)
	c.Header().Ttl = wire.RemoveTTL
	return c
}

// onlyLLQ returns m's single LLQ option, failing the test otherwise.
func onlyLLQ(t *testing.T, m *dns.Msg) *dns.EDNS0_LLQ {
	t.Helper()
	opts := wire.Options(m)
	if len(opts) != 1 {
		t.Fatalf("want exactly one LLQ option, got %d in\n%s", len(opts), m)
	}
	return opts[0]
}

func wantLLQ(t *testing.T, got *dns.EDNS0_LLQ, op, code uint16, id uint64, lease uint32) {
	t.Helper()
	want := wire.NewOption(op, code, id, lease)
	want.Code = got.Code // unpacking leaves it unset
	if *got != *want {
		t.Errorf("LLQ option = %s, want %s", got, want)
	}
}

func dial(t *testing.T, p *peer, opts Options) *Client {
	t.Helper()
	if opts.RetryInterval == 0 {
		opts.RetryInterval = testRetry
	}
	c, err := Dial(p.addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Live subscriptions would wait for termination replies nobody
		// sends; end them locally first.
		c.mu.Lock()
		var subs []*Subscription
		for _, s := range c.subs {
			subs = append(subs, s)
		}
		c.mu.Unlock()
		for _, s := range subs {
			s.end(ErrClosed)
		}
		c.Close()
	})
	return c
}

type subResult struct {
	s   *Subscription
	err error
}

func subscribeAsync(c *Client, q dns.Question) <-chan subResult {
	ch := make(chan subResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		s, err := c.Subscribe(ctx, q)
		ch <- subResult{s, err}
	}()
	return ch
}

func result(t *testing.T, ch <-chan subResult) (*Subscription, error) {
	t.Helper()
	select {
	case r := <-ch:
		return r.s, r.err
	case <-time.After(2 * waitFor):
		t.Fatal("Subscribe did not return")
	}
	return nil, nil
}

// establish runs the peer's side of a clean four-way handshake.
func establish(t *testing.T, p *peer, c *Client, q dns.Question, id uint64, lease uint32, answers ...dns.RR) *Subscription {
	t.Helper()
	ch := subscribeAsync(c, q)
	setup := p.recv()
	p.reply(setup, llqReply(setup.m, wire.OpSetup, 0, id, lease))
	cr := p.recv()
	p.reply(cr, llqReply(cr.m, wire.OpSetup, 0, id, lease, answers...))
	s, err := result(t, ch)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return s
}

func nextEvent(t *testing.T, s *Subscription) Event {
	t.Helper()
	select {
	case ev, ok := <-s.Events():
		if !ok {
			t.Fatalf("Events closed: %v", s.Err())
		}
		return ev
	case <-time.After(waitFor):
		t.Fatal("no event")
	}
	return Event{}
}

func waitClosed(t *testing.T, s *Subscription) {
	t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case _, ok := <-s.Events():
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("Events not closed")
		}
	}
}

func sameRRs(t *testing.T, got []dns.RR, want ...dns.RR) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d records %v, want %d %v", len(got), got, len(want), want)
	}
	left := append([]dns.RR(nil), want...)
	for _, g := range got {
		found := false
		for i, w := range left {
			if w != nil && dns.IsDuplicate(g, w) {
				left[i] = nil
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("unexpected record %s; want %v", g, want)
		}
	}
}

// clientAddr is where the peer reaches c's socket.
func clientAddr(c *Client) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), c.LocalAddr().Port())
}
