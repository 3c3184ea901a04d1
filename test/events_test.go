package test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// eventLog records the event packets a client receives, as seen on its
// socket (before the client applies or acknowledges them).
type eventLog struct {
	mu      sync.Mutex
	packets []eventPacket
	tc      int // truncated replies seen
}

type eventPacket struct {
	msg  *dns.Msg
	llq  *dns.EDNS0_LLQ
	size int
}

func (l *eventLog) hook(dir client.Direction, _ netip.AddrPort, b []byte) {
	if dir != client.Received {
		return
	}
	m := new(dns.Msg)
	if m.Unpack(b) != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if m.Truncated {
		l.tc++
	}
	if opts := wire.Options(m); len(opts) == 1 && opts[0].Opcode == wire.OpEvent {
		l.packets = append(l.packets, eventPacket{msg: m, llq: opts[0], size: len(b)})
	}
}

// of returns the event packets for LLQ id.
func (l *eventLog) of(id uint64) []eventPacket {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []eventPacket
	for _, p := range l.packets {
		if p.llq.Id == id {
			out = append(out, p)
		}
	}
	return out
}

func (l *eventLog) truncated() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tc
}

// converge waits until sub's answers are want.
func converge(t *testing.T, sub *client.Subscription, want []string) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s to converge on %q", sub.Question().Name, want), func() bool {
		return slices.Equal(rrSet(sub.Answers()), want)
	})
}

// drain empties a subscription's Events channel and returns what was there.
func drain(sub *client.Subscription) []client.Event {
	var out []client.Event
	for {
		select {
		case ev, ok := <-sub.Events():
			if !ok {
				return out
			}
			out = append(out, ev)
		default:
			return out
		}
	}
}

// TestAddRemoveEvents: a zone change reaches the subscriber as an event
// with the added records (their TTL) and the removed ones (TTL 0xFFFFFFFF).
func TestAddRemoveEvents(t *testing.T) {
	s := startServer(t, "", "www IN A 192.0.2.1", "www IN A 192.0.2.2")
	log := &eventLog{}
	c := dial(t, s.llq, client.Options{OnPacket: log.hook})
	sub := subscribe(t, c, "www.example.org.", dns.TypeA)
	q := sub.Question()
	sent := counter(t, "events_sent_total")

	s.setRecords("www IN A 192.0.2.1", "www 300 IN A 192.0.2.3")
	want := rrSetOf(t, "www IN A 192.0.2.1", "www IN A 192.0.2.3")
	converge(t, sub, want)

	var added, removed []dns.RR
	for _, p := range log.of(sub.ID()) {
		m := p.msg
		if !m.Response || m.Rcode != dns.RcodeSuccess || len(m.Question) != 1 || m.Question[0] != q {
			t.Errorf("event is not a response to the question:\n%v", m)
		}
		if p.llq.Version != wire.Version || p.llq.Error != wire.NoError || p.llq.LeaseLife == 0 || p.llq.LeaseLife > 60 {
			t.Errorf("event option %v", p.llq)
		}
		for _, rr := range m.Answer {
			if rr.Header().Ttl == wire.RemoveTTL {
				removed = append(removed, rr)
			} else {
				added = append(added, rr)
			}
		}
	}
	// (A retransmission, should an ack be slow, repeats the same records.)
	if !slices.Equal(rrSet(added), rrSetOf(t, "www IN A 192.0.2.3")) {
		t.Errorf("added %v, want 192.0.2.3", added)
	}
	for _, rr := range added {
		if rr.Header().Ttl != 300 {
			t.Errorf("added %v, want it with its TTL 300", rr)
		}
	}
	if !slices.Equal(rrSet(removed), rrSetOf(t, "www IN A 192.0.2.2")) {
		t.Errorf("removed %v, want 192.0.2.2 with TTL 0xFFFFFFFF", removed)
	}
	if sent() < 1 {
		t.Error("events_sent_total did not grow")
	}

	// The Events channel tells the same story.
	var evAdded, evRemoved []dns.RR
	for _, ev := range drain(sub) {
		evAdded = append(evAdded, ev.Added...)
		evRemoved = append(evRemoved, ev.Removed...)
	}
	if !slices.Equal(rrSet(evAdded), rrSetOf(t, "www IN A 192.0.2.3")) || !slices.Equal(rrSet(evRemoved), rrSetOf(t, "www IN A 192.0.2.2")) {
		t.Errorf("Events: added %v removed %v", evAdded, evRemoved)
	}

	// Everything goes, then comes back.
	s.setRecords()
	converge(t, sub, nil)
	s.setRecords("www IN A 192.0.2.9")
	converge(t, sub, rrSetOf(t, "www IN A 192.0.2.9"))
}

// barrier makes a change to the marker record and waits until marker's
// subscriber has it. The server re-resolves topics one pass at a time, so
// every event of the passes before has been sent once this returns; when
// marker shares a client with the subscriptions under test, that client
// has also read them (one socket, one reader, loopback keeps order).
func barrier(t *testing.T, s *server, marker *client.Subscription, records []string, value string) {
	t.Helper()
	s.setRecords(append(slices.Clone(records), `marker IN TXT "`+value+`"`)...)
	converge(t, marker, rrSetOf(t, `marker IN TXT "`+value+`"`))
}

// TestTTLOnlyChangeNoEvent: a record whose TTL changes is the same record;
// subscribers hear nothing.
func TestTTLOnlyChangeNoEvent(t *testing.T) {
	base := []string{"www IN A 192.0.2.1", "www IN A 192.0.2.2"}
	s := startServer(t, "", append(slices.Clone(base), `marker IN TXT "v0"`)...)
	c := dial(t, s.llq, client.Options{})
	www := subscribe(t, c, "www.example.org.", dns.TypeA)
	marker := subscribe(t, c, "marker.example.org.", dns.TypeTXT)
	before := www.Answers()
	sent := counter(t, "events_sent_total")

	ttlOnly := []string{"www 60 IN A 192.0.2.1", "www 120 IN A 192.0.2.2"}
	barrier(t, s, marker, ttlOnly, "v1")
	barrier(t, s, marker, ttlOnly, "v2")

	if evs := drain(www); len(evs) != 0 {
		t.Errorf("TTL-only change produced %d events: %v", len(evs), evs[0].Msg)
	}
	if got := www.Answers(); !slices.EqualFunc(got, before, func(a, b dns.RR) bool { return a.String() == b.String() }) {
		t.Errorf("answers changed from %v to %v", before, got)
	}
	if n := sent(); n != 2 {
		t.Errorf("events_sent_total grew by %v, want 2 (the marker's)", n)
	}
}

// TestFanOut: every subscriber of a question gets its change; a subscriber
// of another name gets nothing.
func TestFanOut(t *testing.T) {
	base := []string{"www IN A 192.0.2.1", "other IN A 192.0.2.100"}
	s := startServer(t, "", append(slices.Clone(base), `marker IN TXT "v0"`)...)

	var subs []*client.Subscription
	for range 3 {
		c := dial(t, s.llq, client.Options{})
		subs = append(subs, subscribe(t, c, "www.example.org.", dns.TypeA))
	}
	bystander := dial(t, s.llq, client.Options{})
	other := subscribe(t, bystander, "other.example.org.", dns.TypeA)
	marker := subscribe(t, bystander, "marker.example.org.", dns.TypeTXT)

	changed := []string{"www IN A 192.0.2.1", "www IN A 192.0.2.7", "other IN A 192.0.2.100"}
	s.setRecords(append(slices.Clone(changed), `marker IN TXT "v0"`)...)
	want := rrSetOf(t, "www IN A 192.0.2.1", "www IN A 192.0.2.7")
	for _, sub := range subs {
		converge(t, sub, want)
		var added, removed []dns.RR
		for _, ev := range drain(sub) { // a retransmission would change nothing
			added, removed = append(added, ev.Added...), append(removed, ev.Removed...)
		}
		if !slices.Equal(rrSet(added), rrSetOf(t, "www IN A 192.0.2.7")) || len(removed) != 0 {
			t.Errorf("subscriber %#x: events added %v, removed %v", sub.ID(), added, removed)
		}
	}
	barrier(t, s, marker, changed, "v1")
	if evs := drain(other); len(evs) != 0 {
		t.Errorf("subscriber of another name got %d events: %v", len(evs), evs[0].Msg)
	}
	if got, want := rrSet(other.Answers()), rrSetOf(t, "other IN A 192.0.2.100"); !slices.Equal(got, want) {
		t.Errorf("other's answers %q", got)
	}
}

// TestLargeChangeSplit: a change too large for the client's UDP size
// arrives in several event packets, each within that size.
func TestLargeChangeSplit(t *testing.T) {
	one := []string{`www IN TXT "record-00 some padding to make the record longer"`}
	s := startServer(t, "", one...)
	log := &eventLog{}
	c := dial(t, s.llq, client.Options{UDPSize: 512, OnPacket: log.hook})
	sub := subscribe(t, c, "www.example.org.", dns.TypeTXT)

	many := slices.Clone(one)
	for i := 1; i <= 40; i++ {
		many = append(many, fmt.Sprintf(`www IN TXT "record-%02d some padding to make the record longer"`, i))
	}
	s.setRecords(many...)
	converge(t, sub, rrSetOf(t, many...))
	grown := log.of(sub.ID())
	if len(grown) < 2 {
		t.Errorf("40 additions came in %d packet(s), want several", len(grown))
	}
	for _, p := range grown {
		if p.size > 512 {
			t.Errorf("event packet of %d bytes exceeds the client's 512", p.size)
		}
	}

	// A second subscriber now gets an ACK+Answers too big for 512 bytes:
	// what fits, never TC, and the rest as events.
	log2 := &eventLog{}
	c2 := dial(t, s.llq, client.Options{UDPSize: 512, OnPacket: log2.hook})
	sub2 := subscribe(t, c2, "www.example.org.", dns.TypeTXT)
	converge(t, sub2, rrSetOf(t, many...))
	if log2.truncated() != 0 {
		t.Error("a truncated ACK+Answers over UDP")
	}
	if len(log2.of(sub2.ID())) == 0 {
		t.Error("ACK+Answers of 41 records fit in 512 bytes?")
	}

	// And 40 removals are split too.
	s.setRecords(one...)
	converge(t, sub, rrSetOf(t, one...))
	converge(t, sub2, rrSetOf(t, one...))
	if n := len(log.of(sub.ID())) - len(grown); n < 2 {
		t.Errorf("40 removals came in %d packet(s), want several", n)
	}
	for _, p := range log.of(sub.ID()) {
		if p.size > 512 {
			t.Errorf("event packet of %d bytes exceeds the client's 512", p.size)
		}
	}
}

// TestAckStopsRetransmission: an acknowledged event is sent once.
func TestAckStopsRetransmission(t *testing.T) {
	// 500ms rather than the harness's 200ms leaves a loaded machine time
	// to deliver the acks, so a retransmission here is a real failure.
	s := startServer(t, "listen 127.0.0.1:0\n        lease 2 60\n        retransmit 500ms 3", "www IN A 192.0.2.1")
	log := &eventLog{}
	c := dial(t, s.llq, client.Options{OnPacket: log.hook})
	sub := subscribe(t, c, "www.example.org.", dns.TypeA)
	retrans := counter(t, "event_retransmissions_total")
	acked := counter(t, "event_acks_total")

	for i := 2; i <= 4; i++ {
		s.setRecords(fmt.Sprintf("www IN A 192.0.2.%d", i))
		converge(t, sub, rrSetOf(t, fmt.Sprintf("www IN A 192.0.2.%d", i)))
	}
	eventually(t, "the server to count the acks", func() bool { return acked() >= 3 })
	// Give the server past its first retransmission time (500ms) to
	// misbehave.
	time.Sleep(1200 * time.Millisecond)

	seen := map[uint16]int{}
	for _, p := range log.of(sub.ID()) {
		seen[p.msg.Id]++
	}
	if len(seen) < 3 {
		t.Errorf("saw %d event packets, want at least 3", len(seen))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event DNS ID %d received %d times", id, n)
		}
	}
	if n := retrans(); n != 0 {
		t.Errorf("%v retransmissions of acknowledged events", n)
	}
}

// TestNoAckRetransmitsThenDrops: a client that never acknowledges gets the
// same records again under new DNS IDs, and is dropped after the configured
// attempts (retransmit 200ms 3).
func TestNoAckRetransmitsThenDrops(t *testing.T) {
	s := startServer(t, "", "www IN A 192.0.2.1")
	log := &eventLog{}
	c := dial(t, s.llq, client.Options{OnPacket: log.hook, AckFilter: func(*dns.Msg) bool { return false }})
	sub := subscribe(t, c, "www.example.org.", dns.TypeA)
	retrans := counter(t, "event_retransmissions_total")
	dropped := counter(t, "dropped_silent_total")
	acked := counter(t, "event_acks_total")

	s.setRecords("www IN A 192.0.2.1", "www IN A 192.0.2.2")
	converge(t, sub, rrSetOf(t, "www IN A 192.0.2.1", "www IN A 192.0.2.2"))
	eventually(t, "the server to drop the silent client", func() bool { return dropped() >= 1 })

	packets := log.of(sub.ID())
	ids := map[uint16]bool{}
	for _, p := range packets {
		ids[p.msg.Id] = true
		if got, want := rrSet(p.msg.Answer), rrSet(packets[0].msg.Answer); !slices.Equal(got, want) {
			t.Errorf("retransmission says %q, first transmission said %q", got, want)
		}
	}
	if len(packets) < 2 || len(ids) != len(packets) {
		t.Errorf("%d event packets with %d distinct DNS IDs; want several, all distinct", len(packets), len(ids))
	}
	if retrans() < 1 {
		t.Error("event_retransmissions_total did not grow")
	}
	if acked() != 0 {
		t.Error("the server counted acks that were never sent")
	}

	// The client learns at its next refresh.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := sub.Refresh(ctx, time.Minute)
	if e := llqError(t, err); e.Code != wire.NoSuchLLQ || e.Op != wire.OpRefresh {
		t.Errorf("refresh of a dropped LLQ: %v, want NO-SUCH-LLQ", err)
	}
	if sub.Err() == nil {
		t.Error("subscription still live after NO-SUCH-LLQ")
	}
}

// TestLateTransmissionRestated: an event ends when the client acks a
// transmission of it that is still true, but an older transmission may yet
// be delivered late, undo a newer change, and have its ack lost. The server
// cannot see that; it must restate the event once more after such a copy
// had time to arrive. Here the raw client plays that network: it holds the
// first transmission of a removal, acks the retransmission, acks the
// re-addition that follows, then "receives" the held copy and loses its ack.
func TestLateTransmissionRestated(t *testing.T) {
	// The raw client must ack within one retransmission interval: 1s leaves
	// a loaded machine room for that (500ms did not, at load 8 under -race).
	s := startServer(t, "listen 127.0.0.1:0\n        lease 2 60\n        retransmit 1s 5", "c IN A 192.0.2.1")
	q := question("c.example.org.", dns.TypeA)
	r := newRaw(t, s.llq, "")
	id, _ := r.establish(q, 60)
	isEvent := func(m *dns.Msg) bool {
		opts := wire.Options(m)
		return len(opts) == 1 && opts[0].Opcode == wire.OpEvent && opts[0].Id == id
	}
	nextEvent := func() *dns.Msg {
		t.Helper()
		return r.recv(func(m *dns.Msg) bool { return !isEvent(m) })
	}
	ack := func(ev *dns.Msg) {
		a := new(dns.Msg)
		a.Id, a.Response, a.Question = ev.Id, true, ev.Question
		wire.SetOptions(a, 1232, wire.NewOption(wire.OpEvent, wire.NoError, id, option(t, ev).LeaseLife))
		r.send(a)
	}
	says := func(ev *dns.Msg) string {
		out := ""
		for _, rr := range ev.Answer {
			if rr.Header().Ttl == wire.RemoveTTL {
				out += "-"
			} else {
				out += "+"
			}
			out += rr.(*dns.A).A.String()
		}
		return out
	}

	s.setRecords()
	held := nextEvent() // the original: held back by the "network"
	if says(held) != "-192.0.2.1" {
		t.Fatalf("removal event says %s", says(held))
	}
	again := nextEvent() // its retransmission, under a new DNS ID
	if again.Id == held.Id || says(again) != "-192.0.2.1" {
		t.Fatalf("retransmission %d says %s", again.Id, says(again))
	}
	ack(again)

	s.setRecords("c IN A 192.0.2.1")
	back := nextEvent()
	if says(back) != "+192.0.2.1" {
		t.Fatalf("re-addition event says %s", says(back))
	}
	ack(back)
	// Now the held original arrives: the client removes 192.0.2.1 again,
	// and its ack is lost. Only the server can repair that.
	fix := nextEvent()
	if says(fix) != "+192.0.2.1" {
		t.Errorf("after the late copy the server says %s, want +192.0.2.1", says(fix))
	}
	ack(fix)
}
