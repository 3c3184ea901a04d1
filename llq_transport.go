package llq

import (
	"net/netip"
	"slices"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// llqTransport is LLQ (RFC 8764) on llq's own listener, over UDP and TCP:
// setup with its challenge, refresh, leases, and events with their
// acknowledgements and retransmissions (llq_events.go). It owns its LLQs;
// the engine shares their topics with every other transport.
type llqTransport struct {
	e         *Engine
	subs      map[uint64]*llqSub
	perClient map[netip.Prefix]int // LLQs per client (see clientBits), for max-llqs-per-client
	bits      clientBits           // what perClient is keyed by
	chal      *challenger
	limiter   *setupLimiter
	ln        *listener
	state     *stateKeeper        // keeps the table in the state file; nil without one
	gen       uint64              // counts changes to the table, so that an idle one is not written again
	restored  []*llqSub           // restored LLQs not yet readmitted (see llq_state.go)
	private   map[uint64]*session // the TLS session of each private LLQ (llq_private.go)
}

// newLLQTransport serves LLQ on ln, a listener bound and not yet serving.
func newLLQTransport(e *Engine, ln *listener) (*llqTransport, error) {
	l := &llqTransport{e: e, chal: newChallenger(), limiter: newSetupLimiter(e.metrics.setupRateShared), bits: e.config().clientBits}
	l.reset()
	// The state file's LLQs are in the table before the listener serves.
	now := time.Now()
	restated, err := l.openState(e.config(), now)
	if err != nil {
		return nil, err
	}
	l.ln = ln
	ln.serve(l)
	l.restateRestored(restated, now)
	return l, nil
}

func (l *llqTransport) reset() {
	l.subs = make(map[uint64]*llqSub)
	l.perClient = make(map[netip.Prefix]int)
	l.private = make(map[uint64]*session)
	l.restored = nil
}

// rekey recounts the LLQs per client when a reload changes what a client
// is. Call with e.mu held.
func (l *llqTransport) rekey(bits clientBits) {
	if bits == l.bits {
		return
	}
	l.bits = bits
	clear(l.perClient)
	for _, s := range l.subs {
		l.perClient[bits.key(s.client.Addr())]++
	}
}

// forget drops every LLQ at once, when the engine closes. Call with e.mu
// held, after the timers have stopped.
func (l *llqTransport) forget() {
	l.e.metrics.liveLLQs.Sub(float64(len(l.subs)))
	l.reset()
}

// llqSub is one LLQ. Fields are ordered so that the small ones share a
// word: there is one of these per LLQ.
type llqSub struct {
	subscription                // its topic, nil once it left
	id           uint64         // the LLQ ID
	l            *llqTransport  // for the lease timer, which fires with s alone
	client       netip.AddrPort // where events go
	expires      time.Time      // end of the last granted lease
	expiry       timer          // embedded, see firer; initialised by establish
	pending      []transmission // unacknowledged event packets, oldest first
	held         *event         // news for an unproven port, sent once it proves itself; see publish
	udpSize      uint16         // largest event packet the client accepts
	// proven is set when the event port has shown it wants events: the
	// setup or a refresh came from it over UDP, or it acknowledged an
	// event. A port named over TCP has not: see publish.
	proven      bool
	unsolicited bool // the one packet an unproven port may get has been sent
	private     bool // set up on a TLS session, where its events go (llq_private.go)
	// acking is set while a private LLQ's ACK is being answered and not
	// yet queued: events made meanwhile wait in its session's early
	// (llq_private.go).
	acking bool
}

// hold adds st to the news kept for s's unproven port. Call with e.mu held.
func (s *llqSub) hold(st statement) {
	if s.held == nil {
		s.held = newEvent(s, statement{})
	}
	for i, k := range st.keys {
		if j := slices.Index(s.held.keys, k); j >= 0 {
			s.held.rrs[j] = st.rrs[i]
			continue
		}
		s.held.keys = append(s.held.keys, k)
		s.held.rrs = append(s.held.rrs, st.rrs[i])
	}
}

// prove marks s's event port as wanting events and sends it what it was
// held back from. Call with e.mu held.
func (l *llqTransport) prove(s *llqSub, now time.Time) {
	if s.proven {
		return
	}
	s.proven = true
	if h := s.held; h != nil {
		s.held = nil
		// A retransmission restates the current truth of every record.
		adds := make([]bool, len(h.keys))
		for _, st := range split(s.topic.question, h.keys, h.rrs, adds, s.udpSize) {
			ev := newEvent(s, st)
			l.e.sched.schedule(&ev.retry, now)
		}
	}
}

// fire runs when s's lease timer is due.
func (s *llqSub) fire() { s.l.expire(s) }

// remaining is the lease left at now, in whole seconds, for event packets.
func (s *llqSub) remaining(now time.Time) uint32 {
	d := s.expires.Sub(now)
	if d < 0 {
		return 0
	}
	return uint32((d + time.Second - 1) / time.Second)
}

// setupError tells llq_protocol.go which LLQ error a setup or refresh
// earned.
type setupError struct {
	code  uint16
	lease uint32 // retry-after for SERV-FULL
	limit bool   // a configured limit refused it (setups_total{result="serv-full"})
	rcode int    // when not 0, the whole message gets this rcode (REFUSED) instead
}

// admit checks the count limits for a new LLQ from addr. Call with e.mu held.
func (l *llqTransport) admit(addr netip.Addr) *setupError {
	cfg := l.e.config()
	if cfg.maxLLQs > 0 && len(l.subs) >= cfg.maxLLQs {
		l.e.metrics.limitRejections.WithLabelValues("max-llqs").Inc()
		return &setupError{code: wire.ServFull, lease: uint32(cfg.fullRetryAfter / time.Second), limit: true}
	}
	if cfg.maxPerClient > 0 && l.perClient[l.bits.key(addr)] >= cfg.maxPerClient {
		l.e.metrics.limitRejections.WithLabelValues("max-llqs-per-client").Inc()
		return &setupError{code: wire.ServFull, lease: uint32(cfg.fullRetryAfter / time.Second), limit: true}
	}
	return nil
}

// establish creates the LLQ id for q on behalf of client, or returns the
// existing one when the client repeats itself, and returns the answers the
// ACK carries.
//
// proven says whether the event port asked for events itself (a UDP setup's
// challenge response came from it); a port named over TCP must still prove
// itself (see publish). With sess, the LLQ is private to that TLS session.
func (l *llqTransport) establish(id uint64, q dns.Question, client netip.AddrPort, proven bool, lease uint32, udpSize uint16, now time.Time, sess *session) ([]dns.RR, uint32, *setupError) {
	e := l.e
	e.mu.Lock()
	if s, ok := l.subs[id]; ok {
		defer e.mu.Unlock()
		if !l.reaches(s, sess) {
			return nil, 0, &setupError{code: wire.NoSuchLLQ}
		}
		if s.client.Addr() != client.Addr() {
			// A 64-bit collision between two clients' challenges: make the
			// newcomer start over in a later epoch, which yields another ID.
			return nil, 0, &setupError{code: wire.ServFull, lease: 1}
		}
		if s.topic.key.questionKey != keyOf(q) {
			return nil, 0, &setupError{code: wire.NoSuchLLQ}
		}
		l.e.metrics.setups.WithLabelValues("duplicate").Inc()
		if sess != nil {
			s.acking = true // see deliverPrivate
		}
		return s.topic.records(), s.remaining(now), nil
	}
	if err := l.admit(client.Addr()); err != nil {
		e.mu.Unlock()
		return nil, 0, err
	}
	cfg := e.config()
	j := e.prepare(q, client, false)
	e.mu.Unlock()

	if j.b == nil {
		return nil, 0, &setupError{code: wire.Static}
	}
	if ok, wait := l.limiter.allow(cfg.clientBits.key(client.Addr()), now, cfg.setupRate, cfg.setupBurst); !ok {
		l.e.metrics.limitRejections.WithLabelValues("setup-rate").Inc()
		return nil, 0, &setupError{code: wire.ServFull, lease: uint32(wait/time.Second) + 1, limit: true}
	}
	// Admission through the CoreDNS server (see joining.resolve): a client
	// the port would not have had llq's block answer gets REFUSED.
	switch err := j.resolve(e); err {
	case nil:
	case errRefused, errBackendRefused:
		return nil, 0, &setupError{rcode: dns.RcodeRefused}
	default:
		return nil, 0, &setupError{code: wire.UnknownErr}
	}

	defer e.settle(&j) // runs after the unlock below
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := l.subs[id]; ok { // the same challenge response twice, concurrently
		return nil, 0, &setupError{code: wire.ServFull, lease: 1}
	}
	if err := l.admit(client.Addr()); err != nil {
		return nil, 0, err
	}
	s := &llqSub{id: id, l: l, client: client, udpSize: udpSize, proven: proven}
	s.expiry.init(s)
	answers := e.join(s, l, &j)
	l.subs[id] = s
	if sess != nil {
		l.bind(s, sess)
	}
	l.perClient[l.bits.key(client.Addr())]++
	l.grant(s, lease, now)
	l.gen++
	l.e.metrics.liveLLQs.Inc()
	l.e.metrics.setups.WithLabelValues("established").Inc()
	return answers, lease, nil
}

// grant (re)starts s's lease. Call with e.mu held.
func (l *llqTransport) grant(s *llqSub, lease uint32, now time.Time) {
	s.expires = now.Add(time.Duration(lease) * time.Second)
	l.e.sched.schedule(&s.expiry, s.expires)
}

// refresh renews or (lease 0) terminates LLQ id for client. A non-zero
// eventPort moves the client's events there; viaUDP says the refresh came
// from it. A private LLQ is refreshed on its session sess alone, and its
// events stay there.
func (l *llqTransport) refresh(id uint64, q dns.Question, client netip.AddrPort, eventPort uint16, viaUDP bool, lease uint32, now time.Time, sess *session) (uint32, *setupError) {
	e := l.e
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := l.subs[id]
	if !ok || !l.reaches(s, sess) || s.client.Addr() != client.Addr() || s.topic.key.questionKey != keyOf(q) {
		return 0, &setupError{code: wire.NoSuchLLQ}
	}
	if s.private {
		eventPort = 0
	}
	if lease == 0 {
		l.drop(s)
		l.e.metrics.terminations.Inc()
		return 0, nil
	}
	// Events follow the client to the port its latest refresh came from:
	// that is where its NAT mapping is now.
	if eventPort != 0 {
		to := netip.AddrPortFrom(client.Addr(), eventPort)
		if to != s.client && !viaUDP {
			s.proven, s.unsolicited = false, false // a new port named over TCP
		}
		l.move(s, to)
		if viaUDP {
			l.prove(s, now) // the refresh came from that port
		}
	}
	granted := e.config().clampLease(lease)
	l.grant(s, granted, now)
	l.gen++
	l.e.metrics.refreshes.Inc()
	return granted, nil
}

// move changes the address events go to, keeping the per-client counts right.
func (l *llqTransport) move(s *llqSub, to netip.AddrPort) {
	if s.client.Addr() != to.Addr() {
		l.uncount(s.client.Addr())
		l.perClient[l.bits.key(to.Addr())]++
	}
	s.client = to
}

func (l *llqTransport) uncount(a netip.Addr) {
	k := l.bits.key(a)
	if l.perClient[k] <= 1 {
		delete(l.perClient, k)
	} else {
		l.perClient[k]--
	}
}

// drop removes s and its timers. Call with e.mu held.
func (l *llqTransport) drop(s *llqSub) {
	for _, tr := range s.pending {
		if tr.ev.live == tr.id {
			l.e.sched.cancel(&tr.ev.retry)
		}
	}
	if l.e.leave(s, l) {
		if s.private {
			l.unbind(s)
		}
		delete(l.subs, s.id)
		l.gen++
		l.uncount(s.client.Addr())
		s.pending = nil
		s.held = nil
		l.e.sched.cancel(&s.expiry)
		l.e.metrics.liveLLQs.Dec()
	}
}

func (l *llqTransport) expire(s *llqSub) {
	l.e.mu.Lock()
	defer l.e.mu.Unlock()
	if s.gone() || time.Now().Before(s.expires) {
		return
	}
	l.drop(s)
	l.e.metrics.expirations.Inc()
}

// changed implements transport: it queues events for the LLQs of t and
// sends them once the engine lock is released.
func (l *llqTransport) changed(t *topic, added, removed []string, old answerSet, now time.Time) func() {
	l.gen++
	ds := l.publish(t, added, removed, old, now)
	if len(ds) == 0 {
		return nil
	}
	return func() { l.send(ds, "event") }
}
