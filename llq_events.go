package llq

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// An event tells one LLQ the current state of some records. Every packet
// states, for each record it names, the truth at the moment it is sent: a
// retransmission is rebuilt from the current answers, so it can never undo a
// newer change. The network may still deliver an old packet after a newer
// one; the client acknowledges every packet, and an acknowledgement of a
// packet whose statement is no longer true triggers a fresh event for those
// records. So each subscriber converges to the answer set under loss,
// duplication and reordering.
type event struct {
	sub   *llqSub
	keys  []string // record identities, see wire.RecordKey
	rrs   []dns.RR // the record for each key, as last known
	tries int
	retry timer // embedded, see firer; initialised by newEvent
	// answered is set when an ack has settled the event. Its timer is not
	// taken out of the heap then (an O(log n) removal on every ack, in the
	// middle of a fan-out): it fires later and finds nothing to do.
	answered bool
	live     uint16 // DNS ID of the latest transmission
	// settled is set once the event, acknowledged while other transmissions
	// of it were still unanswered, has been scheduled for a last restatement.
	settled bool
	// own is set, under e.mu, once retry has been armed: from then on the
	// event's own timer drives it and its change's retryRound leaves it
	// alone. (retry.index cannot tell: the scheduler moves it holding
	// only its own lock.)
	own bool
}

// fire runs when ev's retransmission timer is due.
func (ev *event) fire() { ev.sub.l.retransmit(ev) }

// transmission is one event packet sent to an LLQ. An LLQ remembers up to
// maxPending of them: the small fields come last to share one word.
type transmission struct {
	ev    *event
	adds  []bool // what this packet said about each of ev.keys
	sent  time.Time
	id    uint16
	acked bool
}

// maxPending bounds the packets remembered per LLQ.
const maxPending = 64

// eventUDPSize is the payload size event packets advertise; clients answer
// events with small acks, so any sane value does.
const eventUDPSize = 1232

// delivery is one event packet to send once the engine lock is released.
type delivery struct {
	to      netip.AddrPort
	llqID   uint64
	packet  []byte // shared template: msgID, llqID and lease are patched in
	lease   uint32
	msgID   uint16
	private bool // packet belongs to this delivery alone
}

// statement is the part of a change that fits in one packet.
type statement struct {
	keys []string
	rrs  []dns.RR
	adds []bool
}

// split cuts a change into statements whose packets fit size bytes. Sizes
// are uncompressed, so the packed (compressed) packets are never larger.
func split(q dns.Question, keys []string, rrs []dns.RR, adds []bool, size uint16) []statement {
	base := 12 + len(q.Name) + 2 + 4 + 11 + 4 + wire.OptionLen
	var out []statement
	start, used := 0, base
	for i, rr := range rrs {
		n := dns.Len(rr)
		if i > start && used+n > int(size) {
			out = append(out, statement{keys[start:i], rrs[start:i], adds[start:i]})
			start, used = i, base
		}
		used += n
	}
	if start < len(rrs) {
		out = append(out, statement{keys[start:], rrs[start:], adds[start:]})
	}
	return out
}

// buildEvent packs an event packet.
func buildEvent(q dns.Question, rrs []dns.RR, adds []bool, msgID uint16, llqID uint64, lease uint32) ([]byte, error) {
	m := &dns.Msg{Compress: true}
	m.Id = msgID
	m.Response = true
	m.Authoritative = true
	m.Question = []dns.Question{q}
	m.Answer = make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		if adds[i] {
			m.Answer[i] = rr
			continue
		}
		gone := dns.Copy(rr)
		gone.Header().Ttl = wire.RemoveTTL
		m.Answer[i] = gone
	}
	wire.SetOptions(m, eventUDPSize, wire.NewOption(wire.OpEvent, wire.NoError, llqID, lease))
	return m.Pack()
}

// patch writes one subscriber's fields into an event packet: the DNS ID at
// the start and, since the LLQ option is the last thing in the packet, the
// LLQ ID and lease in its final 12 bytes.
func patch(b []byte, msgID uint16, llqID uint64, lease uint32) {
	binary.BigEndian.PutUint16(b, msgID)
	binary.BigEndian.PutUint64(b[len(b)-12:], llqID)
	binary.BigEndian.PutUint32(b[len(b)-4:], lease)
}

// freshID returns a DNS ID not used by any pending packet of s.
func freshID(s *llqSub) uint16 {
	for {
		id := uint16(rand.Uint32())
		clash := false
		for _, tr := range s.pending {
			if tr.id == id {
				clash = true
				break
			}
		}
		if !clash {
			return id
		}
	}
}

// track records a transmission of ev and, with arm, arms its
// retransmission. Call with e.mu held.
func (l *llqTransport) track(ev *event, adds []bool, now time.Time, arm bool) uint16 {
	s := ev.sub
	cfg := l.e.config()
	// Forget packets older than a whole retransmission schedule: their
	// events have been answered or given up on by now.
	horizon := now.Add(-backoff(cfg.retransmit, cfg.attempts))
	i := 0
	for i < len(s.pending) && (s.pending[i].sent.Before(horizon) || len(s.pending)-i >= maxPending) {
		i++
	}
	s.pending = append(s.pending[:0], s.pending[i:]...)

	id := freshID(s)
	s.pending = append(s.pending, transmission{id: id, ev: ev, adds: adds, sent: now})
	ev.live = id
	ev.answered = false
	if arm {
		ev.own = true
		l.e.sched.schedule(&ev.retry, now.Add(backoff(cfg.retransmit, ev.tries)))
	}
	return id
}

// backoff returns d doubled n times. It saturates where a plain shift would
// wrap around (a large ATTEMPTS or INTERVAL), which would put the horizon
// above in the future and the next retransmission in the past.
func backoff(d time.Duration, n int) time.Duration {
	for ; n > 0; n-- {
		if d > math.MaxInt64/2 {
			return math.MaxInt64
		}
		d *= 2
	}
	return d
}

func newEvent(s *llqSub, st statement) *event {
	ev := &event{sub: s, keys: st.keys, rrs: st.rrs}
	ev.retry.init(ev)
	return ev
}

// publish queues events for every subscriber of t about the keys that
// changed; old holds the records that were removed. Call with e.mu held;
// send the returned deliveries after unlocking.
func (l *llqTransport) publish(t *topic, added, removed []string, old answerSet, now time.Time) []delivery {
	keys := make([]string, 0, len(added)+len(removed))
	rrs := make([]dns.RR, 0, cap(keys))
	adds := make([]bool, 0, cap(keys))
	for _, k := range added {
		keys, rrs, adds = append(keys, k), append(rrs, t.answers[k]), append(adds, true)
	}
	for _, k := range removed {
		keys, rrs, adds = append(keys, k), append(rrs, old[k]), append(adds, false)
	}
	type packed struct {
		st     statement
		packet []byte
	}
	bySize := make(map[uint16][]packed) // subscribers mostly share a handful of sizes
	// A change nearly always fits one packet: size the result for one
	// delivery per subscriber rather than let append double (and copy) it
	// a dozen times for a large topic.
	out := make([]delivery, 0, len(t.subs))
	round := &retryRound{l: l, events: make([]*event, 0, len(t.subs))}
	round.timer.init(round)
	for _, x := range t.subs {
		s, mine := x.(*llqSub)
		if !mine {
			continue
		}
		chunks, ok := bySize[s.udpSize]
		if !ok {
			for _, st := range split(t.question, keys, rrs, adds, s.udpSize) {
				b, err := buildEvent(t.question, st.rrs, st.adds, 0, 0, 0)
				if err != nil {
					log.Errorf("cannot pack event for %s: %v", t.question.Name, err)
					continue
				}
				chunks = append(chunks, packed{st, b})
			}
			bySize[s.udpSize] = chunks
		}
		for i, c := range chunks {
			if s.private {
				l.queuePrivate(s, c.packet, now)
				continue
			}
			if !s.proven {
				// A port named over TCP has not asked for events: one
				// packet per setup, never retransmitted, and the rest
				// held until the port acknowledges (see prove).
				if s.unsolicited || i > 0 {
					s.hold(c.st)
					continue
				}
				s.unsolicited = true
				ev := newEvent(s, c.st)
				id := l.track(ev, c.st.adds, now, false)
				out = append(out, delivery{to: s.client, msgID: id, llqID: s.id, lease: s.remaining(now), packet: c.packet})
				continue
			}
			ev := newEvent(s, c.st)
			id := l.track(ev, c.st.adds, now, false)
			round.events = append(round.events, ev)
			out = append(out, delivery{to: s.client, msgID: id, llqID: s.id, lease: s.remaining(now), packet: c.packet})
		}
	}
	if len(round.events) > 0 {
		l.e.sched.schedule(&round.timer, now.Add(l.e.config().retransmit))
	}
	return out
}

// retryRound is the first retransmission deadline of every event of one
// change. They all fall due together, so one timer serves them: a change
// fanned out to a hundred thousand LLQs costs one heap entry instead of a
// hundred thousand pushes and pops, and an ack touches no heap at all.
// An event gets a timer of its own once it needs one (a retransmission, a
// restatement), and the round then leaves it alone.
type retryRound struct {
	l      *llqTransport
	events []*event
	timer  timer
}

func (r *retryRound) fire() {
	l := r.l
	now := time.Now()
	var ds []delivery
	l.e.mu.Lock()
	for _, ev := range r.events {
		if ev.own { // on a timer of its own by now
			continue
		}
		if d, ok := l.retransmitLocked(ev, now); ok {
			ds = append(ds, d)
		}
	}
	l.e.mu.Unlock()
	r.events = nil
	l.send(ds, "retransmit")
}

// send writes deliveries to the wire, a batch of datagrams per system call
// where the platform allows: a change fanned out to a hundred thousand LLQs
// is a hundred thousand datagrams, and the per-call overhead would be most
// of the cost. Each datagram gets its own copy of the shared template, since
// a batch is in flight all at once; the copies, addresses and message
// headers live in a reused sendScratch, so a datagram allocates nothing.
func (l *llqTransport) send(ds []delivery, kind string) {
	if len(ds) == 0 {
		return
	}
	sc := scratchPool.Get().(*sendScratch)
	sent := 0
	for len(ds) > 0 {
		n := min(len(ds), sendBatch)
		sc.data = sc.data[:0]
		for _, d := range ds[:n] {
			sc.data = append(sc.data, d.packet...)
		}
		off := 0
		for i, d := range ds[:n] {
			b := sc.data[off : off+len(d.packet) : off+len(d.packet)]
			off += len(d.packet)
			patch(b, d.msgID, d.llqID, d.lease)
			sc.bufs[i] = b
			sc.ms[i].Buffers = sc.bufs[i : i+1]
			sc.ms[i].Addr = l.ln.udpAddr(&sc.addrs[i], &sc.ips[i], d.to)
		}
		sent += l.ln.writeBatch(sc.ms[:n])
		ds = ds[n:]
	}
	clear(sc.bufs[:])
	scratchPool.Put(sc)
	if kind == "retransmit" {
		l.e.metrics.retransmissions.Add(float64(sent))
	} else {
		l.e.metrics.eventsSent.Add(float64(sent))
	}
}

// sendScratch is the memory one batch of send needs.
type sendScratch struct {
	ms    [sendBatch]ipv4.Message
	bufs  [sendBatch][]byte
	addrs [sendBatch]net.UDPAddr
	ips   [sendBatch][16]byte
	data  []byte
}

var scratchPool = sync.Pool{New: func() any { return new(sendScratch) }}

// retransmit resends an unacknowledged event with the current truth, or
// drops the LLQ of a client that has stayed silent for every attempt.
func (l *llqTransport) retransmit(ev *event) {
	l.e.mu.Lock()
	d, ok := l.retransmitLocked(ev, time.Now())
	l.e.mu.Unlock()
	if ok {
		l.send([]delivery{d}, "retransmit")
	}
}

// retransmitLocked is retransmit with e.mu held; it returns the packet to
// send, if any.
func (l *llqTransport) retransmitLocked(ev *event, now time.Time) (delivery, bool) {
	s := ev.sub
	if s.gone() || ev.answered {
		return delivery{}, false
	}
	ev.tries++
	if ev.tries >= l.e.config().attempts {
		l.drop(s)
		l.e.metrics.droppedSilent.Inc()
		log.Debugf("dropped LLQ %x of %s: %d events unacknowledged", s.id, s.client, ev.tries)
		return delivery{}, false
	}
	d, err := l.restate(ev, now)
	if err != nil {
		log.Errorf("cannot pack event for %s: %v", s.topic.question.Name, err)
		return delivery{}, false
	}
	return d, true
}

// restate brings ev up to the current truth and transmits it again. Call
// with e.mu held.
func (l *llqTransport) restate(ev *event, now time.Time) (delivery, error) {
	s := ev.sub
	rrs := make([]dns.RR, len(ev.keys))
	adds := make([]bool, len(ev.keys))
	for i, k := range ev.keys {
		if rr, ok := s.topic.answers[k]; ok {
			rrs[i], adds[i] = rr, true
		} else {
			rrs[i] = ev.rrs[i]
		}
	}
	ev.rrs = rrs
	id := l.track(ev, adds, now, true)
	lease := s.remaining(now)
	b, err := buildEvent(s.topic.question, rrs, adds, id, s.id, lease)
	return delivery{to: s.client, msgID: id, llqID: s.id, lease: lease, packet: b, private: true}, err
}

// acknowledge handles an event ack from src (on the TLS session sess, if
// not nil): it stops the retransmission of the event and, when the
// acknowledged packet stated something that is no longer true, tells the
// client the truth again. An ack for an LLQ the message could not reach
// (unknown, another client's, another session's) is ignored.
func (l *llqTransport) acknowledge(msgID uint16, llqID uint64, src netip.AddrPort, sess *session) {
	now := time.Now()
	l.e.mu.Lock()
	s, ok := l.subs[llqID]
	if !ok || s.client.Addr() != src.Addr() || !l.reaches(s, sess) {
		l.e.mu.Unlock()
		return
	}
	if src == s.client {
		l.prove(s, now)
	}
	i := -1
	for j, tr := range s.pending {
		if tr.id == msgID {
			i = j
			break
		}
	}
	if i < 0 {
		l.e.mu.Unlock() // an ack for a packet long forgotten
		return
	}
	// The packet stays listed after its ack until it ages out: the network
	// may deliver a copy of it after a newer packet, and the ack of that
	// copy is how the server learns that the client took in stale news.
	tr := &s.pending[i]
	if !tr.acked {
		tr.acked = true
		l.e.metrics.acks.Inc()
	}
	ev := tr.ev
	stale := false
	for j, k := range ev.keys {
		if _, present := s.topic.answers[k]; present != tr.adds[j] {
			stale = true
			break
		}
	}
	var ds []delivery
	if !stale {
		// Whichever transmission this was, it told the client the current
		// truth about every record of the event: the event is done, unless
		// another transmission of it is still unanswered. Delivered late,
		// that one would tell the client stale news, and were its ack lost
		// as well, the server would never hear of it. So the event is then
		// stated once more, when such a copy has had twice a retransmission
		// interval to arrive; the client has just proven alive, so that
		// restatement starts a fresh count of attempts.
		if !ev.settled && unanswered(s, ev) {
			ev.settled = true
			wait := backoff(l.e.config().retransmit, ev.tries+1)
			ev.tries = 0
			ev.own = true
			l.e.sched.schedule(&ev.retry, now.Add(wait))
		} else {
			ev.answered = true
		}
	} else if d, err := l.restate(ev, now); err == nil {
		// The client may now believe something no longer true: tell it
		// the truth again, as the event's latest transmission.
		ds = append(ds, d)
	}
	l.e.mu.Unlock()
	l.send(ds, "event")
}

// unanswered reports whether a transmission of ev to s is still waiting for
// its acknowledgement. Call with e.mu held.
func unanswered(s *llqSub, ev *event) bool {
	for _, tr := range s.pending {
		if tr.ev == ev && !tr.acked {
			return true
		}
	}
	return false
}
