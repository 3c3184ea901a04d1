package llq

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/file"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Events go over real UDP to a real loopback socket standing in for the
// client; acknowledgements are handed to serve as they would arrive.

const wait = 5 * time.Second // upper bound for something that must happen

// eventZone is zoneData with www's second address replaced by a third.
const eventZone = `$ORIGIN example.org.
$TTL 3600
@	IN SOA ns1 hostmaster 2 7200 3600 1209600 300
@	IN NS ns1
ns1	IN A 192.0.2.53
www	IN A 192.0.2.1
www	IN A 192.0.2.3
`

func (env *testEnv) changed() { env.e.changes.mark(change{trigger: "test", zone: testZone}) }

// ackFor builds the acknowledgement mDNSResponder sends for an event.
func ackFor(t testing.TB, ev *dns.Msg) []byte {
	t.Helper()
	o := only(t, ev)
	a := new(dns.Msg)
	a.Id = ev.Id
	a.Response = true
	a.Question = ev.Question
	wire.SetOptions(a, 1232, wire.NewOption(wire.OpEvent, wire.NoError, o.Id, o.LeaseLife))
	return packMsg(t, a)
}

func (env *testEnv) ack(t testing.TB, c *udpClient, ev *dns.Msg) {
	t.Helper()
	if out := env.e.llq.serve(ackFor(t, ev), c.addr, false); out != nil {
		t.Fatalf("an event ack drew a reply")
	}
}

func wantEvent(t testing.TB, ev *dns.Msg, q dns.Question, llqID uint64) *dns.EDNS0_LLQ {
	t.Helper()
	if !ev.Response || ev.Opcode != dns.OpcodeQuery || ev.Rcode != dns.RcodeSuccess {
		t.Fatalf("event header %v", ev.MsgHdr)
	}
	if len(ev.Question) != 1 || ev.Question[0] != q {
		t.Fatalf("event question %v, want %v", ev.Question, q)
	}
	o := only(t, ev)
	wantOpt(t, o, wire.OpEvent, wire.NoError)
	if o.Id != llqID {
		t.Fatalf("event for LLQ %x, want %x", o.Id, llqID)
	}
	return o
}

func TestEvent(t *testing.T) {
	env := newTestEnv(t, nil)
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)
	sent := track(t, env.e.metrics.eventsSent)
	acked := track(t, env.e.metrics.acks)

	swapZone(t, env.zone, eventZone)
	env.changed()
	ev, _ := c.read(t, wait)
	o := wantEvent(t, ev, qWWW, id)
	if o.LeaseLife == 0 || o.LeaseLife > 3600 {
		t.Fatalf("event states lease %d, want the remaining part of 3600", o.LeaseLife)
	}
	sameRRs(t, ev.Answer,
		"www.example.org. 3600 IN A 192.0.2.3",
		"www.example.org. 4294967295 IN A 192.0.2.2")
	for _, rr := range ev.Answer {
		if rr.(*dns.A).A.String() == "192.0.2.2" && rr.Header().Ttl != wire.RemoveTTL {
			t.Fatalf("removal with TTL %d", rr.Header().Ttl)
		}
	}
	// The counter moves just after the packet leaves.
	eventually(t, "events_sent to move", func() bool { return sent.moved(t) == 1 }, wait)

	env.ack(t, c, ev)
	if acked.moved(t) != 1 {
		t.Fatalf("event_acks moved %v", acked.moved(t))
	}
	env.e.mu.Lock()
	sub := env.e.llq.subs[id]
	unacked, armed := 0, 0
	for _, tr := range sub.pending {
		if !tr.acked {
			unacked++
		}
		if retransmitting(tr.ev) {
			armed++
		}
	}
	env.e.mu.Unlock()
	if unacked != 0 || armed != 0 {
		t.Fatalf("after the ack: %d packets unacknowledged, %d retransmissions armed", unacked, armed)
	}

	// A change that does not touch the answers sends nothing: only the
	// serial and an unrelated record differ, and TTLs do not count.
	swapZone(t, env.zone, eventZone+"other IN A 192.0.2.99\nwww 60 IN A 192.0.2.1\n")
	env.changed()
	eventually(t, "the re-resolution", func() bool { return metric(t, env.e.metrics.resolutions.WithLabelValues("test")) > 0 }, wait)
	if m, ok := c.quiet(200 * time.Millisecond); !ok {
		t.Fatalf("a change that leaves the answers alone sent %v", m)
	}
}

func TestEventSplit(t *testing.T) {
	env := newTestEnv(t, nil)
	c := newUDPClient(t)
	q := question("many.example.org.", dns.TypeTXT)
	swapZone(t, env.zone, withRecords(`many IN TXT "seed"`))
	id, ack := env.establish(t, c.addr, 512, q, 3600)
	sameRRs(t, ack.Answer, `many.example.org. 3600 IN TXT "seed"`)

	added := bigTXT("many", 20, 120)
	swapZone(t, env.zone, withRecords(added...))
	env.changed()
	var got []dns.RR
	packets := 0
	for len(got) < len(added)+1 {
		ev, n := c.read(t, wait)
		packets++
		if n > 512 {
			t.Fatalf("event packet of %d bytes for a client that takes 512", n)
		}
		wantEvent(t, ev, q, id)
		got = append(got, ev.Answer...)
		env.ack(t, c, ev)
	}
	if packets < 2 {
		t.Fatalf("%d records in %d packet(s) of at most 512 bytes", len(got), packets)
	}
	want := append(added, `many.example.org. 4294967295 IN TXT "seed"`)
	for i, s := range added {
		want[i] = "many.example.org. 3600 " + s[len("many "):]
	}
	sameRRs(t, got, want...)
}

func TestEventAckStopsRetransmission(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.retransmit, c.attempts = 50*time.Millisecond, 3 })
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)
	again := track(t, env.e.metrics.retransmissions)

	swapZone(t, env.zone, eventZone)
	env.changed()
	ev, _ := c.read(t, wait)
	wantEvent(t, ev, qWWW, id)
	env.ack(t, c, ev)
	// Several retransmission intervals pass in silence and the LLQ stays.
	if m, ok := c.quiet(500 * time.Millisecond); !ok {
		t.Fatalf("acknowledged event sent again: %v", m)
	}
	if again.moved(t) != 0 || env.e.Stats().LLQs != 1 {
		t.Fatalf("retransmissions %v, LLQs %d after an ack", again.moved(t), env.e.Stats().LLQs)
	}
}

func TestEventRetransmitThenDrop(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.retransmit, c.attempts = 50*time.Millisecond, 3 })
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)
	again := track(t, env.e.metrics.retransmissions)
	dropped := track(t, env.e.metrics.droppedSilent)

	swapZone(t, env.zone, eventZone)
	env.changed()
	ids := map[uint16]bool{}
	var first *dns.Msg
	for i := 0; i < 3; i++ { // attempts 3: the event and two retransmissions
		ev, _ := c.read(t, wait)
		wantEvent(t, ev, qWWW, id)
		if first == nil {
			first = ev
		}
		sameRRs(t, ev.Answer, rrStrings(first.Answer)...)
		ids[ev.Id] = true
	}
	if len(ids) != 3 {
		t.Fatalf("retransmissions reuse DNS IDs: %v", ids)
	}
	eventually(t, "the silent client's LLQ to be dropped", func() bool { return env.e.Stats().LLQs == 0 }, wait)
	if again.moved(t) != 2 || dropped.moved(t) != 1 {
		t.Fatalf("retransmissions moved %v, dropped_silent %v", again.moved(t), dropped.moved(t))
	}
	if m, ok := c.quiet(300 * time.Millisecond); !ok {
		t.Fatalf("packet after the drop: %v", m)
	}
	// An ack arriving after the drop changes nothing.
	env.ack(t, c, first)
}

// A retransmission states the current truth, not the original packet's.
func TestRetransmissionRestates(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.retransmit, c.attempts = 100*time.Millisecond, 10 })
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)

	swapZone(t, env.zone, eventZone) // +.3 -.2
	env.changed()
	ev, _ := c.read(t, wait)
	sameRRs(t, ev.Answer, "www.example.org. 3600 IN A 192.0.2.3", "www.example.org. 4294967295 IN A 192.0.2.2")
	// Undo the change behind the engine's back (no mark): the next
	// retransmission of the unacknowledged event must say so.
	swapZone(t, env.zone, zoneData)
	env.e.mu.Lock()
	tp := env.e.llq.subs[id].topic
	a, _ := resolve(file.File{Zones: fileZones(env.zone)}, qWWW, c.addr)
	tp.answers = newAnswerSet(a)
	env.e.mu.Unlock()
	re, _ := c.read(t, wait)
	wantEvent(t, re, qWWW, id)
	sameRRs(t, re.Answer, "www.example.org. 4294967295 IN A 192.0.2.3", "www.example.org. 3600 IN A 192.0.2.2")
	env.ack(t, c, re)
}

// An ack of an older packet whose statement has gone stale makes the server
// restate the truth; duplicate and reordered acks do no harm.
func TestStaleAckConverges(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.retransmit = time.Minute })
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)
	acked := track(t, env.e.metrics.acks)

	swapZone(t, env.zone, eventZone) // E1: +.3 -.2
	env.changed()
	e1, _ := c.read(t, wait)
	wantEvent(t, e1, qWWW, id)

	swapZone(t, env.zone, zoneData) // E2: -.3 +.2, back where we started
	env.changed()
	e2, _ := c.read(t, wait)
	wantEvent(t, e2, qWWW, id)
	sameRRs(t, e2.Answer, "www.example.org. 4294967295 IN A 192.0.2.3", "www.example.org. 3600 IN A 192.0.2.2")

	// Acks arrive newest first. E2 is still true: nothing to say.
	env.ack(t, c, e2)
	if m, ok := c.quiet(200 * time.Millisecond); !ok {
		t.Fatalf("ack of a true statement drew %v", m)
	}
	// E1 is stale: the client may now believe it, so it hears the truth.
	env.ack(t, c, e1)
	fix, _ := c.read(t, wait)
	wantEvent(t, fix, qWWW, id)
	sameRRs(t, fix.Answer, "www.example.org. 4294967295 IN A 192.0.2.3", "www.example.org. 3600 IN A 192.0.2.2")
	if fix.Id == e1.Id || fix.Id == e2.Id {
		t.Fatalf("restatement reuses DNS ID %x", fix.Id)
	}
	env.ack(t, c, fix)
	if acked.moved(t) != 3 {
		t.Fatalf("event_acks moved %v, want 3", acked.moved(t))
	}

	// Every ack again: copies of true statements draw nothing, and none
	// counts twice.
	for _, ev := range []*dns.Msg{fix, e2} {
		env.ack(t, c, ev)
	}
	if m, ok := c.quiet(200 * time.Millisecond); !ok {
		t.Fatalf("duplicate ack of a true statement drew %v", m)
	}
	// A copy of E1's ack may mean the network delivered E1 again, after the
	// truth: the server cannot tell, so it restates the truth once more.
	env.ack(t, c, e1)
	again, _ := c.read(t, wait)
	sameRRs(t, again.Answer, "www.example.org. 4294967295 IN A 192.0.2.3", "www.example.org. 3600 IN A 192.0.2.2")
	env.ack(t, c, again)
	if acked.moved(t) != 4 {
		t.Fatalf("event_acks moved %v, want 4 (each packet once)", acked.moved(t))
	}
	env.e.mu.Lock()
	armed := 0
	for _, tr := range env.e.llq.subs[id].pending {
		if retransmitting(tr.ev) {
			armed++
		}
	}
	env.e.mu.Unlock()
	if armed != 0 {
		t.Fatalf("%d retransmissions armed after every ack", armed)
	}
}

// Acks count only from the client's address and for its LLQ.
func TestAckFromElsewhereIgnored(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.retransmit = time.Minute })
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)
	acked := track(t, env.e.metrics.acks)
	swapZone(t, env.zone, eventZone)
	env.changed()
	ev, _ := c.read(t, wait)
	wantEvent(t, ev, qWWW, id)

	env.e.llq.serve(ackFor(t, ev), netip.MustParseAddrPort("127.0.0.9:1"), false)
	wrongID := ev.Copy()
	only(t, wrongID).Id = id + 1
	env.e.llq.serve(ackFor(t, wrongID), c.addr, false)
	if acked.moved(t) != 0 {
		t.Fatalf("foreign acks counted")
	}
	env.ack(t, c, ev)
	if acked.moved(t) != 1 {
		t.Fatalf("the real ack was not counted")
	}
}

// Events follow the client to the port its latest refresh came from.
func TestEventsFollowRefresh(t *testing.T) {
	env := newTestEnv(t, nil)
	c1, c2 := newUDPClient(t), newUDPClient(t)
	id, _ := env.establish(t, c1.addr, 1232, qWWW, 3600)
	if o := only(t, env.exchange(t, llqMsg(3, 1232, []dns.Question{qWWW}, refreshOpt(id, 3600)), c2.addr, false)); o.Error != wire.NoError {
		t.Fatalf("refresh from the new port: %v", o)
	}
	swapZone(t, env.zone, eventZone)
	env.changed()
	ev, _ := c2.read(t, wait)
	wantEvent(t, ev, qWWW, id)
	env.ack(t, c2, ev)
	if m, ok := c1.quiet(100 * time.Millisecond); !ok {
		t.Fatalf("event went to the old port too: %v", m)
	}
}

// A TCP setup names its UDP event port in ERROR; events go there.
func TestEventsToTCPEventPort(t *testing.T) {
	env := newTestEnv(t, nil)
	c := newUDPClient(t)
	o := setupOpt(0, 3600)
	o.Error = c.addr.Port()
	r := env.exchange(t, llqMsg(0, 1232, []dns.Question{qWWW}, o), netip.AddrPortFrom(c.addr.Addr(), 1), true)
	id := only(t, r).Id
	swapZone(t, env.zone, eventZone)
	env.changed()
	ev, _ := c.read(t, wait)
	wantEvent(t, ev, qWWW, id)
	env.ack(t, c, ev)
}

// Every LLQ of a topic hears about a change, each with its own LLQ ID, and
// the topic is resolved once.
func TestEventFanOut(t *testing.T) {
	env := newTestEnv(t, nil)
	clients := []*udpClient{newUDPClient(t), newUDPClient(t), newUDPClient(t)}
	ids := make([]uint64, len(clients))
	for i, c := range clients {
		ids[i], _ = env.establish(t, c.addr, 1232, qWWW, 3600)
	}
	if st := env.e.Stats(); st.Topics != 1 || st.LLQs != 3 {
		t.Fatalf("stats %+v", st)
	}
	resolved := track(t, env.e.metrics.resolutions.WithLabelValues("test"))
	swapZone(t, env.zone, eventZone)
	env.changed()
	for i, c := range clients {
		ev, _ := c.read(t, wait)
		wantEvent(t, ev, qWWW, ids[i])
		env.ack(t, c, ev)
	}
	if resolved.moved(t) != 1 {
		t.Fatalf("topic resolved %v times for one change", resolved.moved(t))
	}
}

// The file-zone watcher notices a tree swap by itself: no mark.
func TestZoneProbeTriggersEvent(t *testing.T) {
	env := newTestEnv(t, nil)
	changes := track(t, env.e.metrics.triggerChanges.WithLabelValues("file"))
	resolved := track(t, env.e.metrics.resolutions.WithLabelValues("file"))
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)
	env.e.watch.add(zoneProbe{owner: env.owner, trigger: "file", zones: staticZones(fileZones(env.zone))})
	// Let the first scan record the current tree and the change it reports
	// be dealt with.
	eventually(t, "the first zone scan", func() bool {
		return env.e.watch.covers("www.example.org.") && resolved.moved(t) == 1
	}, wait)

	swapZone(t, env.zone, eventZone)
	ev, _ := c.read(t, wait)
	wantEvent(t, ev, qWWW, id)
	sameRRs(t, ev.Answer, "www.example.org. 3600 IN A 192.0.2.3", "www.example.org. 4294967295 IN A 192.0.2.2")
	env.ack(t, c, ev)
	if changes.moved(t) != 2 { // the first scan and the swap
		t.Fatalf("trigger_changes{file} moved %v", changes.moved(t))
	}
}

// The poll fallback re-resolves topics no zone probe covers.
func TestPollTriggersEvent(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.poll = 50 * time.Millisecond })
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)
	swapZone(t, env.zone, eventZone)
	ev, _ := c.read(t, wait)
	wantEvent(t, ev, qWWW, id)
	env.ack(t, c, ev)
}

// A large ATTEMPTS (or INTERVAL) must not wrap the backoff arithmetic
// around: the pending packets would be forgotten at once, and acks, stale
// or not, would go unmatched.
func TestLargeRetransmitSettings(t *testing.T) {
	for _, tc := range []struct {
		interval time.Duration
		attempts int
	}{{time.Minute, 70}, {2 * time.Second, 40}, {1 << 60, 3}} {
		env := newTestEnv(t, func(c *config) { c.retransmit, c.attempts = tc.interval, tc.attempts })
		c := newUDPClient(t)
		id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)
		swapZone(t, env.zone, eventZone)
		env.changed()
		e1, _ := c.read(t, wait)
		swapZone(t, env.zone, zoneData)
		env.changed()
		e2, _ := c.read(t, wait)
		wantEvent(t, e2, qWWW, id)
		env.e.mu.Lock()
		pending := len(env.e.llq.subs[id].pending)
		env.e.mu.Unlock()
		if pending != 2 {
			t.Fatalf("retransmit %v %d: %d packets pending, want 2", tc.interval, tc.attempts, pending)
		}
		env.ack(t, c, e2)
		env.ack(t, c, e1) // stale: must draw a restatement
		fix, _ := c.read(t, wait)
		wantEvent(t, fix, qWWW, id)
		env.ack(t, c, fix)
		if m, ok := c.quiet(100 * time.Millisecond); !ok {
			t.Fatalf("retransmit %v %d: unexpected %v", tc.interval, tc.attempts, m)
		}
	}
}

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		n    int
		want time.Duration
	}{
		{time.Second, 0, time.Second},
		{time.Second, 3, 8 * time.Second},
		{50 * time.Millisecond, 2, 200 * time.Millisecond},
		{time.Second, 30, 1 << 30 * time.Second},
		{time.Second, 34, 1<<63 - 1}, // 2^34 s does not fit
		{time.Second, 70, 1<<63 - 1},
		{1 << 61, 1, 1 << 62},
		{1 << 62, 1, 1<<63 - 1},
	} {
		if got := backoff(tc.d, tc.n); got != tc.want {
			t.Errorf("backoff(%v, %d) = %v, want %v", tc.d, tc.n, got, tc.want)
		}
	}
}

// The retransmission schedule doubles after each attempt and the LLQ goes
// after ATTEMPTS transmissions. The timer's callback is driven by hand, so
// nothing here depends on time passing.
func TestRetransmitBackoffSchedule(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.retransmit, c.attempts = time.Hour, 4 })
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)
	swapZone(t, env.zone, eventZone)
	env.changed()
	first, _ := c.read(t, wait)
	wantEvent(t, first, qWWW, id)

	env.e.mu.Lock()
	s := env.e.llq.subs[id]
	ev := s.pending[0].ev
	env.e.mu.Unlock()
	due := func() time.Duration { // retry time after the latest transmission
		env.e.mu.Lock()
		sent := s.pending[len(s.pending)-1].sent
		env.e.mu.Unlock()
		env.e.sched.mu.Lock()
		defer env.e.sched.mu.Unlock()
		if ev.retry.index >= 0 {
			return ev.retry.at.Sub(sent)
		}
		if r := roundOf(env.e, ev); r != nil { // the first retry
			return r.timer.at.Sub(sent)
		}
		t.Fatalf("retry timer not armed")
		return 0
	}
	if d := due(); d != time.Hour {
		t.Fatalf("first retry after %v, want 1h", d)
	}
	for i, want := range []time.Duration{2 * time.Hour, 4 * time.Hour, 8 * time.Hour} {
		env.e.llq.retransmit(ev)
		re, _ := c.read(t, wait)
		wantEvent(t, re, qWWW, id)
		sameRRs(t, re.Answer, rrStrings(first.Answer)...)
		if d := due(); d != want {
			t.Fatalf("retry %d after %v, want %v", i+2, d, want)
		}
	}
	env.e.llq.retransmit(ev) // four transmissions went unanswered: give up
	if st := env.e.Stats(); st.LLQs != 0 {
		t.Fatalf("LLQ kept after 4 unacknowledged transmissions")
	}
	env.e.sched.mu.Lock()
	armed := ev.retry.index >= 0
	env.e.sched.mu.Unlock()
	if armed {
		t.Fatalf("retry timer left armed after the drop")
	}
	env.e.llq.retransmit(ev) // a late firing finds the LLQ gone and does nothing
	if m, ok := c.quiet(100 * time.Millisecond); !ok {
		t.Fatalf("sent after the drop: %v", m)
	}
}

// On a wildcard listener the socket is dual-stack IPv6, and events to an
// IPv4 client go out in v4-mapped form, in a batch.
func TestEventDualStackListener(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.listen = ":0" })
	if !env.e.llq.ln.v6 {
		t.Fatalf("a wildcard listener should be dual-stack IPv6")
	}
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)
	swapZone(t, env.zone, eventZone)
	env.changed()
	ev, _ := c.read(t, wait)
	wantEvent(t, ev, qWWW, id)
}

// retransmitting reports whether ev will be sent again when its timer
// fires: an answered event's timer stays in the heap, idle.
func retransmitting(ev *event) bool { return ev.retry.index >= 0 && !ev.answered }

// roundOf returns the armed retry round that holds ev, or nil. Call with
// e.sched.mu held.
func roundOf(e *Engine, ev *event) *retryRound {
	for _, t := range e.sched.h {
		if r, ok := t.f.(*retryRound); ok && slices.Contains(r.events, ev) {
			return r
		}
	}
	return nil
}

// TestRetryRound: one timer serves the first retransmission of every event
// of a change. When it fires, an acknowledged event stays quiet and only
// the silent subscriber hears the event again.
func TestRetryRound(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.retransmit = time.Hour })
	acking, silent := newUDPClient(t), newUDPClient(t)
	env.establish(t, acking.addr, 1232, qWWW, 3600)
	env.establish(t, silent.addr, 1232, qWWW, 3600)
	armed := env.e.sched.len()
	swapZone(t, env.zone, eventZone)
	env.changed()
	ev1, _ := acking.read(t, wait)
	ev2, _ := silent.read(t, wait)
	if n := env.e.sched.len() - armed; n != 1 {
		t.Fatalf("%d timers armed for a change to 2 LLQs, want 1", n)
	}
	env.ack(t, acking, ev1)
	eventually(t, "the ack", func() bool {
		env.e.mu.Lock()
		defer env.e.mu.Unlock()
		for _, s := range env.e.llq.subs {
			if s.client == acking.addr {
				return s.pending[0].acked
			}
		}
		return false
	}, wait)

	env.e.mu.Lock()
	var ev *event
	for _, s := range env.e.llq.subs {
		if s.client == silent.addr {
			ev = s.pending[0].ev
		}
	}
	env.e.mu.Unlock()
	env.e.sched.mu.Lock()
	r := roundOf(env.e, ev)
	env.e.sched.mu.Unlock()
	if r == nil || len(r.events) != 2 {
		t.Fatalf("no round holding both events")
	}
	env.e.sched.cancel(&r.timer)
	r.fire() // as if an hour had passed

	again, _ := silent.read(t, wait)
	if again.Id == ev2.Id {
		t.Errorf("retransmission reuses the DNS ID %d", again.Id)
	}
	sameRRs(t, again.Answer, rrStrings(ev2.Answer)...)
	if m, ok := acking.quiet(100 * time.Millisecond); !ok {
		t.Fatalf("acknowledged subscriber got %v", m)
	}
	env.e.sched.mu.Lock()
	own := ev.retry.index >= 0
	env.e.sched.mu.Unlock()
	if !own {
		t.Fatal("the retransmitted event has no timer of its own for the next try")
	}
}
