package client

import (
	"fmt"
	"sync"
	"testing"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// checkAck verifies that a is the ack RFC 8764 and Apple's client give for ev.
func checkAck(t *testing.T, a packet, ev *dns.Msg) {
	t.Helper()
	m := a.m
	if !m.Response || m.Id != ev.Id {
		t.Errorf("ack QR=%v ID=%d, want QR=1 ID=%d", m.Response, m.Id, ev.Id)
	}
	if len(m.Question) != 1 || m.Question[0] != ev.Question[0] {
		t.Errorf("ack question = %v, want %v", m.Question, ev.Question)
	}
	if len(m.Answer)+len(m.Ns) != 0 {
		t.Errorf("ack carries records:\n%s", m)
	}
	in := onlyLLQ(t, ev)
	wantLLQ(t, onlyLLQ(t, m), wire.OpEvent, 0, in.Id, in.LeaseLife)
}

func TestEventApplyAndAck(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	a1 := rr(t, "www.example.org. 3600 IN A 192.0.2.1")
	a2 := rr(t, "www.example.org. 3600 IN A 192.0.2.2")
	a3 := rr(t, "www.example.org. 300 IN A 192.0.2.3")
	s := establish(t, p, c, testQ, 10, 7200, a1, a2)
	client := clientAddr(c)

	ev := event(testQ, 10, 7000, a3, gone(a1))
	p.send(ev, client)
	checkAck(t, p.recv(), ev)

	e := nextEvent(t, s)
	sameRRs(t, e.Added, a3)
	sameRRs(t, e.Removed, a1)
	if e.Removed[0].Header().Ttl != 3600 {
		t.Errorf("removed record TTL = %d, want the TTL it was held with", e.Removed[0].Header().Ttl)
	}
	if e.Msg == nil || e.Msg.Id != ev.Id || e.Time.IsZero() {
		t.Errorf("event Msg/Time not set: %+v", e)
	}
	sameRRs(t, s.Answers(), a2, a3)
}

func TestDuplicateEvent(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	a1 := rr(t, "www.example.org. 3600 IN A 192.0.2.1")
	a2 := rr(t, "www.example.org. 3600 IN A 192.0.2.2")
	s := establish(t, p, c, testQ, 11, 7200, a1)
	client := clientAddr(c)

	ev := event(testQ, 11, 7000, a2, gone(a1))
	for range 2 {
		p.send(ev, client)
		checkAck(t, p.recv(), ev)
	}
	first, second := nextEvent(t, s), nextEvent(t, s)
	if len(first.Added) != 1 || len(first.Removed) != 1 {
		t.Errorf("first event changed %v / %v", first.Added, first.Removed)
	}
	if len(second.Added)+len(second.Removed) != 0 {
		t.Errorf("duplicate event changed %v / %v", second.Added, second.Removed)
	}
	sameRRs(t, s.Answers(), a2)

	// Adding a present record (TTL aside) and removing an absent one are
	// no-ops too.
	ev = event(testQ, 11, 6900, rr(t, "WWW.example.org. 5 IN A 192.0.2.2"), gone(a1))
	p.send(ev, client)
	checkAck(t, p.recv(), ev)
	if e := nextEvent(t, s); len(e.Added)+len(e.Removed) != 0 {
		t.Errorf("no-op event changed %v / %v", e.Added, e.Removed)
	}
	got := s.Answers()
	sameRRs(t, got, a2)
	if got[0].Header().Ttl != 3600 {
		t.Errorf("re-added record changed TTL to %d", got[0].Header().Ttl)
	}
}

func TestAckFilter(t *testing.T) {
	p := newPeer(t)
	var mu sync.Mutex
	dropped := 0
	c := dial(t, p, Options{AckFilter: func(m *dns.Msg) bool {
		mu.Lock()
		defer mu.Unlock()
		if dropped == 0 {
			dropped++
			return false
		}
		return true
	}})
	s := establish(t, p, c, testQ, 12, 7200)
	client := clientAddr(c)

	ev1 := event(testQ, 12, 7000, rr(t, "www.example.org. 60 IN A 192.0.2.1"))
	ev2 := event(testQ, 12, 7000, rr(t, "www.example.org. 60 IN A 192.0.2.2"))
	p.send(ev1, client)
	p.send(ev2, client)
	// The first ack was withheld, so the next datagram is the second's.
	checkAck(t, p.recv(), ev2)
	// Both were applied all the same.
	nextEvent(t, s)
	nextEvent(t, s)
	if n := len(s.Answers()); n != 2 {
		t.Errorf("%d answers, want 2", n)
	}
}

func TestEventRouting(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	q2 := dns.Question{Name: "other.example.org.", Qtype: dns.TypeTXT, Qclass: dns.ClassINET}
	s1 := establish(t, p, c, testQ, 21, 7200)
	s2 := establish(t, p, c, q2, 22, 7200)
	client := clientAddr(c)

	// An event for an unknown LLQ is neither applied nor acked.
	p.send(event(testQ, 99, 7000, rr(t, "www.example.org. 60 IN A 192.0.2.9")), client)
	ev := event(q2, 22, 7000, rr(t, `other.example.org. 60 IN TXT "hi"`))
	p.send(ev, client)
	checkAck(t, p.recv(), ev)
	nextEvent(t, s2)
	if len(s1.Answers()) != 0 || len(s2.Answers()) != 1 {
		t.Errorf("answers: s1 %v, s2 %v", s1.Answers(), s2.Answers())
	}
	select {
	case e := <-s1.Events():
		t.Errorf("s1 got an event meant for s2: %v", e.Msg)
	default:
	}
}

// An event that overtakes the ACK+Answers is acked at once and applied on
// top of the initial answer set.
func TestEventBeforeAck(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	a1 := rr(t, "www.example.org. 60 IN A 192.0.2.1")
	a2 := rr(t, "www.example.org. 60 IN A 192.0.2.2")
	ch := subscribeAsync(c, testQ)
	setup := p.recv()
	p.reply(setup, llqReply(setup.m, wire.OpSetup, 0, 31, 7200))
	cr := p.recv()
	ev := event(testQ, 31, 7200, a2)
	p.send(ev, cr.from)
	checkAck(t, p.recv(), ev)
	p.reply(cr, llqReply(cr.m, wire.OpSetup, 0, 31, 7200, a1))
	s, err := result(t, ch)
	if err != nil {
		t.Fatal(err)
	}
	sameRRs(t, s.Answers(), a1, a2)
	sameRRs(t, nextEvent(t, s).Added, a2)
}

// A consumer that does not read loses the oldest events from the channel,
// never the changes from the answer set.
func TestSlowConsumer(t *testing.T) {
	p := newPeer(t)
	var mu sync.Mutex
	var seen int
	c := dial(t, p, Options{EventBuffer: 2, OnEvent: func(*Subscription, Event) {
		mu.Lock()
		seen++
		mu.Unlock()
	}})
	s := establish(t, p, c, testQ, 41, 7200)
	client := clientAddr(c)
	var added []dns.RR
	for i := range 5 {
		a := rr(t, fmt.Sprintf("www.example.org. 60 IN A 192.0.2.%d", i+1))
		added = append(added, a)
		ev := event(testQ, 41, 7200, a)
		p.send(ev, client)
		checkAck(t, p.recv(), ev)
	}
	// Every ack has been sent, so every event has been queued.
	sameRRs(t, nextEvent(t, s).Added, added[3])
	sameRRs(t, nextEvent(t, s).Added, added[4])
	if d := s.Dropped(); d != 3 {
		t.Errorf("Dropped() = %d, want 3", d)
	}
	sameRRs(t, s.Answers(), added...)
	// OnEvent runs after the ack; once the reader has exited it has run.
	s.end(ErrClosed)
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	if seen != 5 {
		t.Errorf("OnEvent saw %d events, want 5", seen)
	}
}
