package client

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var pushQ = dns.Question{Name: "_ipp._tcp.example.org.", Qtype: dns.TypePTR, Qclass: dns.ClassINET}

func rrStrings(rrs []dns.RR) string {
	var s []string
	for _, r := range rrs {
		s = append(s, strings.ReplaceAll(r.String(), "\t", " "))
	}
	return strings.Join(s, "; ")
}

// A whole session as RFC 8765 describes it: Keepalive establishes it,
// SUBSCRIBE is answered and followed by the initial PUSH, adds, single and
// collective removes arrive in PUSHes, records for other questions are
// ignored, UNSUBSCRIBE names the SUBSCRIBE's ID, and Close closes the
// connection.
func TestPushSession(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	ch := make(chan *PushClient, 1)
	go func() {
		c, err := DialPush(context.Background(), p.addr, PushOptions{CAFile: ca.CAFile, Keepalive: 2 * time.Hour, Inactivity: 30 * time.Second})
		if err != nil {
			t.Error(err)
		}
		ch <- c
	}()
	ka := p.establish(20000, 7200000)
	if got := u32s(30000, 7200000); string(ka.tlvs[0].data) != string(got) {
		t.Errorf("Keepalive request asks for % x, want % x", ka.tlvs[0].data, got)
	}
	c := <-ch
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	if k := c.Keepalive(); k.Inactivity != 20000 || k.Interval != 7200000 {
		t.Errorf("keepalive in force %+v, want the server's", k)
	}

	a := rr(t, "_ipp._tcp.example.org. 120 IN PTR a._ipp._tcp.example.org.")
	b := rr(t, "_ipp._tcp.example.org. 120 IN PTR b._ipp._tcp.example.org.")
	s, id := subscribe(t, p, c, pushQ, a, b)
	if s.ID() != id {
		t.Errorf("ID() = %d, SUBSCRIBE had %d", s.ID(), id)
	}
	ev := nextPush(t, s.Events())
	if len(ev.Added) != 2 || len(ev.Removed) != 0 || len(s.Answers()) != 2 {
		t.Fatalf("initial PUSH: added %s, answers %s", rrStrings(ev.Added), rrStrings(s.Answers()))
	}

	// A record for another name, one of another type, then a single
	// remove: only the last touches the subscription.
	other := rr(t, "other.example.org. 60 IN A 192.0.2.1")
	txt := rr(t, "_ipp._tcp.example.org. 60 IN TXT \"x\"")
	p.send(0, false, 0, pushTLV(t, other, txt))
	gone := dns.Copy(a)
	gone.Header().Ttl = 0xFFFFFFFF
	p.send(0, false, 0, pushTLV(t, gone))
	ev = nextPush(t, s.Events())
	if len(ev.Removed) != 1 || ev.Removed[0].(*dns.PTR).Ptr != "a._ipp._tcp.example.org." || len(ev.Added) != 0 {
		t.Fatalf("single remove: added %s removed %s", rrStrings(ev.Added), rrStrings(ev.Removed))
	}

	// An add, then a collective remove of every PTR at the name.
	c3 := rr(t, "_ipp._tcp.example.org. 0 IN PTR c._ipp._tcp.example.org.")
	p.send(0, false, 0, pushTLV(t, c3))
	if ev = nextPush(t, s.Events()); len(ev.Added) != 1 {
		t.Fatalf("add: %s", rrStrings(ev.Added))
	}
	p.send(0, false, 0, pushTLV(t, &dns.RR_Header{Name: pushQ.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 0xFFFFFFFE}))
	if ev = nextPush(t, s.Events()); len(ev.Removed) != 2 || len(s.Answers()) != 0 {
		t.Fatalf("collective remove: removed %s, left %s", rrStrings(ev.Removed), rrStrings(s.Answers()))
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	un := p.recv()
	if un.id != 0 || un.response || len(un.tlvs) != 1 || un.tlvs[0].typ != 0x42 || string(un.tlvs[0].data) != string([]byte{byte(id >> 8), byte(id)}) {
		t.Errorf("not an UNSUBSCRIBE of %d: %+v", id, un)
	}
	if !errors.Is(s.Err(), ErrClosed) {
		t.Errorf("Err() = %v", s.Err())
	}
	// A PUSH crossing the UNSUBSCRIBE is ignored, not fatal.
	p.send(0, false, 0, pushTLV(t, a))
	c.Close()
	p.recvEOF()
	if !errors.Is(c.Err(), ErrClosed) {
		t.Errorf("session Err() = %v", c.Err())
	}
}

// TYPE ANY subscribes to every type at the name; a collective remove with
// CLASS ANY empties it.
func TestPushAnyType(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	c := dialPush(t, p, ca, PushOptions{})
	q := dns.Question{Name: "host.example.org.", Qtype: dns.TypeANY, Qclass: dns.ClassINET}
	s, _ := subscribe(t, p, c, q, rr(t, "host.example.org. 60 IN A 192.0.2.1"), rr(t, "host.example.org. 60 IN AAAA 2001:db8::1"))
	if ev := nextPush(t, s.Events()); len(ev.Added) != 2 {
		t.Fatalf("added %s", rrStrings(ev.Added))
	}
	p.send(0, false, 0, pushTLV(t, &dns.RR_Header{Name: q.Name, Rrtype: 0, Class: dns.ClassANY, Ttl: 0xFFFFFFFE}))
	if ev := nextPush(t, s.Events()); len(ev.Removed) != 2 || len(s.Answers()) != 0 {
		t.Fatalf("removed %s", rrStrings(ev.Removed))
	}
}

// A refused SUBSCRIBE is an error for that subscription only: the session
// carries on, and the Retry Delay that came with the refusal is reported.
func TestPushSubscribeRefused(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	c := dialPush(t, p, ca, PushOptions{})
	errc := make(chan error, 1)
	go func() {
		_, err := c.Subscribe(context.Background(), dns.Question{Name: "elsewhere.example.", Qtype: dns.TypeA})
		errc <- err
	}()
	req := p.recv()
	p.send(req.id, true, dns.RcodeNotAuth, tlv(2, u32s(300000)))
	var pe *PushError
	if err := <-errc; !errors.As(err, &pe) || pe.Rcode != dns.RcodeNotAuth || pe.RetryAfter() != 5*time.Minute || pe.NoDSO() {
		t.Fatalf("Subscribe = %v, want NOTAUTH with a 5-minute retry", err)
	}
	s, _ := subscribe(t, p, c, pushQ)
	if s.Err() != nil || c.Err() != nil {
		t.Errorf("session did not survive the refusal: %v %v", s.Err(), c.Err())
	}
	// DSOTYPENI to SUBSCRIBE: the server does DSO but not DNS Push.
	go func() {
		_, err := c.Subscribe(context.Background(), testQ)
		errc <- err
	}()
	req = p.recv()
	p.send(req.id, true, 11)
	if err := <-errc; !errors.As(err, &pe) || !pe.NoDSO() || pe.RetryAfter() != time.Hour {
		t.Errorf("Subscribe = %v, want DSOTYPENI", err)
	}
}

// A second SUBSCRIBE for one question would be fatal to the session (RFC
// 8765 section 6.2.1): the client refuses it without sending it.
func TestPushDuplicate(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	c := dialPush(t, p, ca, PushOptions{})
	subscribe(t, p, c, pushQ)
	dup := pushQ
	dup.Name = strings.ToUpper(dup.Name)
	if _, err := c.Subscribe(context.Background(), dup); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("second Subscribe = %v", err)
	}
	// The next thing on the wire is what the test sends next, not a SUBSCRIBE.
	go c.Subscribe(context.Background(), testQ)
	wantSubscribe(t, p.recv(), testQ)
}

// A server without DSO answers the first request with an rcode (RFC 8490
// section 5.1).
func TestPushNoDSO(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	errc := make(chan error, 1)
	go func() {
		_, err := DialPush(context.Background(), p.addr, PushOptions{TLS: tlsFor(ca)})
		errc <- err
	}()
	p.accept()
	req := p.recv()
	p.send(req.id, true, dns.RcodeNotImplemented)
	var pe *PushError
	if err := <-errc; !errors.As(err, &pe) || !pe.NoDSO() || pe.Rcode != dns.RcodeNotImplemented {
		t.Fatalf("DialPush = %v, want NOTIMP", err)
	}
	p.recvEOF()
}

// A certificate from a CA the client does not trust fails the handshake.
func TestPushUntrusted(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	p := newPushPeer(t, ca)
	go func() {
		if c, err := p.ln.Accept(); err == nil {
			c.Read(make([]byte, 1)) // drive the server side of the handshake
			c.Close()
		}
	}()
	if _, err := DialPush(context.Background(), p.addr, PushOptions{CAFile: other.CAFile}); err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("DialPush = %v, want a TLS failure", err)
	}
}

// The server ends the session with a Retry Delay (RFC 8490 section 7.2):
// every subscription ends with it and the client closes the connection.
func TestPushRetryDelay(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	c := dialPush(t, p, ca, PushOptions{})
	s, _ := subscribe(t, p, c, pushQ)
	p.send(0, false, dns.RcodeServerFailure, tlv(2, u32s(60000)))
	waitDone(t, s.Done())
	var rd *RetryDelayError
	if !errors.As(s.Err(), &rd) || rd.Delay != time.Minute || rd.Rcode != dns.RcodeServerFailure || rd.Never {
		t.Fatalf("Err() = %v, want a 60 s Retry Delay", s.Err())
	}
	if !errors.Is(c.Err(), ErrSessionLost) {
		t.Errorf("session Err() = %v", c.Err())
	}
	p.recvEOF()
}

// The server breaking the connection loses the session and its
// subscriptions.
func TestPushSessionLost(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	c := dialPush(t, p, ca, PushOptions{})
	s, _ := subscribe(t, p, c, pushQ)
	p.conn.Close()
	waitDone(t, s.Done())
	if !errors.Is(s.Err(), ErrSessionLost) {
		t.Fatalf("Err() = %v", s.Err())
	}
	if _, ok := <-s.Events(); ok {
		t.Error("Events not closed")
	}
}

// Everything RFC 8490 and 8765 make fatal ends the session: the client
// aborts the connection.
func TestPushFatal(t *testing.T) {
	a := func(t *testing.T) dns.RR { return rr(t, "_ipp._tcp.example.org. 60 IN PTR a._ipp._tcp.example.org.") }
	for _, tc := range []struct {
		name string
		send func(t *testing.T, p *pushPeer)
	}{
		{"PUSH with QR set", func(t *testing.T, p *pushPeer) { p.send(0, true, 0, pushTLV(t, a(t))) }},
		{"PUSH as a request", func(t *testing.T, p *pushPeer) { p.send(77, false, 0, pushTLV(t, a(t))) }},
		{"empty PUSH", func(t *testing.T, p *pushPeer) { p.send(0, false, 0, tlv(0x41, nil)) }},
		{"PUSH of TYPE ANY", func(t *testing.T, p *pushPeer) {
			p.send(0, false, 0, pushTLV(t, &dns.ANY{Hdr: dns.RR_Header{Name: "a.", Rrtype: dns.TypeANY, Class: dns.ClassINET, Ttl: 5}}))
		}},
		{"truncated TLV", func(t *testing.T, p *pushPeer) { p.send(0, false, 0, []byte{0, 0x41, 0, 9, 1}) }},
		{"non-zero count", func(t *testing.T, p *pushPeer) {
			b := []byte{0, 16, 0, 0, 6 << 3, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0}
			p.conn.Write(b)
		}},
		{"not DSO", func(t *testing.T, p *pushPeer) {
			m := new(dns.Msg)
			m.SetQuestion("a.", dns.TypeA)
			m.Response = true
			b, _ := m.Pack()
			p.conn.Write(append([]byte{byte(len(b) >> 8), byte(len(b))}, b...))
		}},
		{"response to no request", func(t *testing.T, p *pushPeer) { p.send(4242, true, 0) }},
		{"SUBSCRIBE from the server", func(t *testing.T, p *pushPeer) {
			p.send(9, false, 0, tlv(0x40, []byte{1, 'a', 0, 0, 1, 0, 1}))
		}},
		{"UNSUBSCRIBE from the server", func(t *testing.T, p *pushPeer) { p.send(0, false, 0, tlv(0x42, []byte{0, 1})) }},
		{"keepalive interval under 10 s", func(t *testing.T, p *pushPeer) { p.send(0, false, 0, tlv(1, u32s(15000, 9999))) }},
		{"bad keepalive length", func(t *testing.T, p *pushPeer) { p.send(0, false, 0, tlv(1, u32s(15000))) }},
		{"unknown unidirectional TLV", func(t *testing.T, p *pushPeer) { p.send(0, false, 0, tlv(0xF800, nil)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newTestCA(t)
			p := newPushPeer(t, ca)
			c := dialPush(t, p, ca, PushOptions{})
			s, _ := subscribe(t, p, c, pushQ)
			tc.send(t, p)
			waitDone(t, s.Done())
			if !errors.Is(s.Err(), ErrProtocol) {
				t.Errorf("Err() = %v, want a protocol error", s.Err())
			}
			p.recvEOF()
		})
	}
}

// A server request with a primary TLV the client does not know gets
// DSOTYPENI, and the session carries on (RFC 8490 section 5.1.1).
func TestPushUnknownRequest(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	c := dialPush(t, p, ca, PushOptions{})
	p.send(321, false, 0, tlv(0xF800, []byte{1, 2}))
	r := p.recv()
	if !r.response || r.id != 321 || r.rcode != 11 || len(r.tlvs) != 0 {
		t.Fatalf("response %+v, want DSOTYPENI to 321", r)
	}
	subscribe(t, p, c, pushQ)
	if c.Err() != nil {
		t.Errorf("session ended: %v", c.Err())
	}
}

// The server may change the keepalive values with a unidirectional
// Keepalive, which the client does not answer (RFC 8490 section 7.1.2).
func TestPushServerKeepalive(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	c := dialPush(t, p, ca, PushOptions{})
	p.send(0, false, 0, tlv(1, u32s(0xFFFFFFFF, 86400000)))
	// Not answered: the next message is the SUBSCRIBE sent after it.
	subscribe(t, p, c, pushQ)
	if k := c.Keepalive(); k.Inactivity != 0xFFFFFFFF || k.Interval != 86400000 {
		t.Errorf("keepalive %+v", k)
	}
}

// A client silent for the keepalive interval sends a Keepalive request;
// one left unanswered for another interval means the server is gone.
func TestPushKeepaliveTraffic(t *testing.T) {
	minKeepaliveInterval = 0
	defer func() { minKeepaliveInterval = 10 * time.Second }()
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	ch := make(chan *PushClient, 1)
	go func() {
		c, err := DialPush(context.Background(), p.addr, PushOptions{TLS: tlsFor(ca)})
		if err != nil {
			t.Error(err)
		}
		ch <- c
	}()
	p.establish(15000, 3600000)
	c := <-ch
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	s, _ := subscribe(t, p, c, pushQ)
	// Shortened only now, so that no keepalive traffic comes before the
	// SUBSCRIBE.
	p.send(0, false, 0, tlv(1, u32s(15000, 50)))
	ka := p.recv()
	if ka.response || ka.id == 0 || len(ka.tlvs) != 1 || ka.tlvs[0].typ != 1 {
		t.Fatalf("not a Keepalive request: %+v", ka)
	}
	p.send(ka.id, true, 0, tlv(1, u32s(15000, 50)))
	ka = p.recv() // the next one, left unanswered
	if ka.tlvs[0].typ != 1 {
		t.Fatalf("not a Keepalive request: %+v", ka)
	}
	waitDone(t, s.Done())
	if !errors.Is(s.Err(), ErrProtocol) || !strings.Contains(s.Err().Error(), "Keepalive") {
		t.Errorf("Err() = %v", s.Err())
	}
}

// With no subscription left for the inactivity timeout, the client closes
// the session itself (RFC 8490 section 6.2).
func TestPushIdleClose(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	ch := make(chan *PushClient, 1)
	go func() {
		c, _ := DialPush(context.Background(), p.addr, PushOptions{TLS: tlsFor(ca)})
		ch <- c
	}()
	p.establish(0, 3600000) // inactivity 0: close as soon as nothing is active
	c := <-ch
	s, _ := subscribe(t, p, c, pushQ)
	s.Close()
	p.recv() // UNSUBSCRIBE
	p.recvEOF()
	waitDone(t, c.Done())
	if !errors.Is(c.Err(), ErrIdle) {
		t.Errorf("Err() = %v, want ErrIdle", c.Err())
	}
}

// Giving up on a SUBSCRIBE before its response cancels it with an
// UNSUBSCRIBE; the response that still comes is no error.
func TestPushSubscribeAbandoned(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	c := dialPush(t, p, ca, PushOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Subscribe(ctx, pushQ)
		errc <- err
	}()
	req := p.recv()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe = %v", err)
	}
	un := p.recv()
	if un.id != 0 || un.tlvs[0].typ != 0x42 || string(un.tlvs[0].data) != string([]byte{byte(req.id >> 8), byte(req.id)}) {
		t.Fatalf("not an UNSUBSCRIBE of %d: %+v", req.id, un)
	}
	p.send(req.id, true, 0)
	subscribe(t, p, c, testQ)
	if c.Err() != nil {
		t.Errorf("session ended: %v", c.Err())
	}
}
