package llq

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// session is one DSO session on the TLS listener. Its reader goroutine
// (serve) handles the client's messages in order; its writer (write, in
// push_writer.go) sends what the reader and the engine queue, so that a
// slow client never holds up the engine.
type session struct {
	p    *pushTransport
	conn net.Conn
	addr netip.AddrPort

	// Guarded by the engine lock: the session's subscriptions, by
	// SUBSCRIBE ID and by question, and how many of them hold each record
	// (wire.RecordKey), so that a change reaching several subscriptions of
	// the session is pushed once.
	subs   map[uint16]*pushSub
	byKey  map[questionKey]*pushSub
	stated map[string]int
	llqs   map[uint64]*llqSub // private LLQs set up on the session (llq_private.go)
	// early holds the events of private LLQs whose ACK is being answered,
	// until it is queued (see deliverPrivate): here rather than in each
	// llqSub, whose every byte every LLQ pays for.
	early map[uint64][][]byte

	// The reader's own state.
	refuse      bool // over a session limit: answer the first request with a Retry Delay
	established bool // a request got NOERROR (RFC 8490 section 5.1)
	idleSince   time.Time
	heldLLQs    bool // the session held a private LLQ after its last LLQ message
	told        bool // the client has been sent the timers below
	// The session's timers (RFC 8490 section 6.2) once told: negotiated
	// with the client's Keepalive (push_keepalive.go) or the server's own.
	inactivity, interval time.Duration

	out outQueue // push_writer.go
}

func newSession(p *pushTransport, c net.Conn, addr netip.AddrPort) *session {
	s := &session{p: p, conn: c, addr: addr,
		subs: make(map[uint16]*pushSub), byKey: make(map[questionKey]*pushSub), stated: make(map[string]int),
		llqs: make(map[uint64]*llqSub)}
	s.out.init(p.e.metrics)
	return s
}

// state counts one more (delta +1) or one less (-1) subscription of s
// holding record k, and reports whether the client must hear of it: the
// first to hold it, or the last to let go. Call with e.mu held.
func (s *session) state(k string, delta int) bool {
	n := s.stated[k] + delta
	if n <= 0 {
		delete(s.stated, k)
		return delta < 0
	}
	s.stated[k] = n
	return n == 1 && delta > 0
}

// Why a session ended, for the sessions_ended_total metric.
const (
	endClosed   = "closed"    // the client closed it, or a write failed
	endSilent   = "silent"    // no traffic for twice the keepalive interval
	endIdle     = "idle"      // no subscription for twice the inactivity timeout
	endFatal    = "fatal"     // a protocol violation: RFC 8490 has the server abort
	endHandshk  = "handshake" // TLS handshake failed or took too long
	endRetry    = "retry"     // told to go away with a Retry Delay
	endOverflow = "slow-reader"
)

// serve runs the session: the TLS handshake, then one message at a time
// until the client closes, falls silent or breaks a rule.
func (s *session) serve(handshakeTimeout time.Duration) {
	defer s.p.wg.Done()
	why := endClosed
	started := false
	defer func() {
		if started {
			s.out.stop() // what is queued (a FORMERR, a Retry Delay) goes out first
		}
		s.conn.Close()
		s.end()
		s.p.forget(s)
		s.p.e.metrics.sessionsEnded.WithLabelValues(why).Inc()
	}()
	tc := tls.Server(s.conn, s.p.conf.Load())
	if err := handshake(tc, handshakeTimeout); err != nil {
		why = endHandshk
		return
	}
	s.conn = tc
	s.out.setConn(tc, s.p.e.config().maxQueued)
	s.out.kick() // what was queued during the handshake (a Retry Delay)
	started = true
	s.idleSince = time.Now()
	var buf []byte
	for {
		deadline, idle := s.deadline(time.Now())
		tc.SetReadDeadline(deadline)
		msg, err := dso.ReadMessage(tc, buf, dso.MaxMessageLen)
		if err != nil {
			var ne net.Error
			switch {
			case s.out.overflowed():
				why = endOverflow
			case s.out.retrying():
				why = endRetry
			case errors.As(err, &ne) && ne.Timeout() && idle:
				why = endIdle
			case errors.As(err, &ne) && ne.Timeout():
				why = endSilent
			}
			return
		}
		buf = msg[:0]
		ok := s.handle(msg)
		s.kick()
		if !ok {
			why = endFatal
			if s.out.retrying() {
				why = endRetry
			}
			return
		}
		if s.out.overflowed() {
			why = endOverflow
			return
		}
	}
}

// deadline is when, seen at now, the client must have sent its next
// message (RFC 8490 section 6.2): within twice the keepalive interval in
// force, and, while it holds no subscription, within twice the inactivity
// timeout (at least 5 s) of the last one ending. idle says the second
// bound is the nearer. The timers in force are the session's own once told,
// the RFC's 15 s defaults before.
func (s *session) deadline(now time.Time) (time.Time, bool) {
	interval, inactivity := dso.DefaultTimeout, dso.DefaultTimeout
	if s.told {
		interval, inactivity = s.interval, s.inactivity
	}
	at := now.Add(2 * interval)
	s.p.e.mu.Lock()
	subs := len(s.subs)
	// A private LLQ's client speaks LLQ, not DSO: it sends nothing but
	// its refreshes, due before its lease ends.
	var leaseEnd time.Time
	for _, l := range s.llqs {
		if l.expires.After(leaseEnd) {
			leaseEnd = l.expires
		}
	}
	s.p.e.mu.Unlock()
	if leaseEnd.After(at) {
		at = leaseEnd
	}
	if by := s.out.closeBy(); !by.IsZero() && by.Before(at) {
		at = by
	}
	if subs == 0 && leaseEnd.IsZero() {
		if idle := s.idleSince.Add(max(5*time.Second, 2*inactivity)); idle.Before(at) {
			return idle, true
		}
	}
	return at, false
}

// handle acts on one message from the client and reports whether the
// session goes on. Every fatal case of RFC 8490 and RFC 8765 returns false,
// and the session is aborted.
func (s *session) handle(b []byte) bool {
	m, err := dso.Parse(b)
	if errors.Is(err, dso.ErrNotDSO) {
		return s.query(b)
	}
	if err != nil {
		// Malformed: answer FORMERR if it was a request we can name, then
		// abort (RFC 8490 section 5.4).
		if len(b) >= dso.HeaderLen && b[2]&0x80 == 0 && (b[0] != 0 || b[1] != 0) {
			s.respond(uint16(b[0])<<8|uint16(b[1]), dns.RcodeFormatError)
		}
		return false
	}
	if m.Response {
		return false // the server sends no requests: nothing to answer
	}
	if s.refuse {
		if !m.Unidirectional() {
			s.out.response(m.ID, dns.RcodeServerFailure, dso.Millis(s.p.e.config().retryDelay))
		}
		s.out.finish()
		return false
	}
	if m.Unidirectional() && !s.established {
		return false // RFC 8490 section 5.1: no unidirectional messages before the session
	}
	primary, _ := m.Primary()
	switch primary.Type {
	case dso.TypeKeepalive:
		if m.Unidirectional() {
			return false // only a server sends those
		}
		asked, err := dso.ParseKeepalive(primary)
		if err != nil {
			s.respond(m.ID, dns.RcodeFormatError)
			return false
		}
		// The response states the timers of this session from now on
		// (RFC 8490 section 7.1.1): what the client asked, within the
		// server's bounds.
		var clamped bool
		s.inactivity, s.interval, clamped = grantKeepalive(s.p.e.config(), asked)
		result := "granted"
		if clamped {
			result = "bounded"
		}
		s.p.e.metrics.keepalives.WithLabelValues(result).Inc()
		s.out.keepalive(m.ID, dso.Keepalive{Inactivity: dso.Millis(s.inactivity), Interval: dso.Millis(s.interval)})
		s.established, s.told = true, true
	case dso.TypeSubscribe:
		if m.Unidirectional() {
			return false
		}
		return s.subscribe(m, primary)
	case dso.TypeUnsubscribe:
		if !m.Unidirectional() {
			return false
		}
		u, err := dso.ParseUnsubscribe(m, primary)
		if err != nil {
			return false
		}
		s.unsubscribe(u)
	case dso.TypeReconfirm:
		if !m.Unidirectional() {
			return false
		}
		rr, err := dso.ParseReconfirm(m, primary)
		if err != nil {
			return false
		}
		s.reconfirm(rr)
	case dso.TypeRetryDelay, dso.TypePush, dso.TypePadding:
		return false // server-to-client only, or never primary
	default:
		if m.Unidirectional() {
			return false // RFC 8490 section 5.1.2: unknown unidirectional primary TLV is fatal
		}
		s.respond(m.ID, dso.RcodeDSOTypeNI)
	}
	return true
}

func (s *session) respond(id uint16, rcode int) {
	s.out.response(id, rcode, 0)
}

// subscribe handles a SUBSCRIBE (RFC 8765 section 6.2): admission and the
// answers go through the engine exactly as for an LLQ.
func (s *session) subscribe(m dso.Message, t dso.TLV) bool {
	q, err := dso.ParseSubscribe(m, t)
	if err != nil {
		s.respond(m.ID, dns.RcodeFormatError)
		return false
	}
	q.Name = dns.Fqdn(q.Name)
	all := q.Qtype == dns.TypeANY || q.Qclass == dns.ClassANY
	key := keyOf(q)
	key.all = all
	p, e := s.p, s.p.e
	cfg := e.config()
	retry := dso.Millis(cfg.retryDelay)

	e.mu.Lock()
	// Fatal (section 6.2.1): a MESSAGE ID in use, or the same question
	// twice in one session.
	if _, dup := s.subs[m.ID]; dup {
		e.mu.Unlock()
		return false
	}
	if _, dup := s.byKey[key]; dup {
		e.mu.Unlock()
		return false
	}
	full := ""
	switch {
	case cfg.maxSubsPerSession > 0 && len(s.subs) >= cfg.maxSubsPerSession:
		full = "max-subscriptions-per-session"
	case cfg.maxPushSubs > 0 && p.subs >= cfg.maxPushSubs:
		full = "max-subscriptions"
	}
	j := e.prepare(q, s.addr, all)
	e.mu.Unlock()
	if full != "" {
		s.p.e.metrics.limitRejections.WithLabelValues(full).Inc()
		s.out.response(m.ID, dns.RcodeServerFailure, retry)
		s.p.e.metrics.subscribes.WithLabelValues("servfail").Inc()
		return true
	}
	if j.b == nil {
		// Outside every served zone (section 6.2.2). A name inside one
		// that does not exist yet is fine: its records may come.
		s.respond(m.ID, dns.RcodeNotAuth)
		s.p.e.metrics.subscribes.WithLabelValues("notauth").Inc()
		return true
	}
	switch err := j.resolve(e); err {
	case nil:
	case errRefused, errBackendRefused:
		// The policy an ordinary query from this client meets on
		// CoreDNS's port (acl, view) refuses it a subscription too.
		s.respond(m.ID, dns.RcodeRefused)
		s.p.e.metrics.subscribes.WithLabelValues("refused").Inc()
		return true
	default:
		s.respond(m.ID, dns.RcodeServerFailure)
		s.p.e.metrics.subscribes.WithLabelValues("servfail").Inc()
		return true
	}

	defer e.settle(&j)
	e.mu.Lock()
	defer e.mu.Unlock()
	if cfg.maxPushSubs > 0 && p.subs >= cfg.maxPushSubs { // others got in meanwhile
		s.p.e.metrics.limitRejections.WithLabelValues("max-subscriptions").Inc()
		s.out.response(m.ID, dns.RcodeServerFailure, retry)
		return true
	}
	sub := &pushSub{sess: s, id: m.ID}
	answers := e.join(sub, p, &j)
	s.subs[m.ID] = sub
	s.byKey[key] = sub
	p.subs++
	s.p.e.metrics.pushSubs.Inc()
	s.p.e.metrics.subscribes.WithLabelValues("subscribed").Inc()
	// Queued under the engine lock, so that no change can be pushed
	// between the response and the initial answers (section 6.2.2).
	s.out.response(m.ID, dns.RcodeSuccess, 0)
	s.established = true
	var k string
	var kb []byte
	for _, rr := range answers {
		k, kb = wire.RecordKey(rr, kb)
		s.state(k, +1)
		s.out.record(rr, true)
	}
	if !s.told {
		// A client that subscribes without a Keepalive of its own (Apple's
		// does) would otherwise keep the 15 s defaults, under which it
		// must talk every 15 s: tell it the server's (section 7.1).
		s.inactivity, s.interval = cfg.pushInactivity, cfg.pushKeepalive
		s.out.keepalive(0, dso.Keepalive{Inactivity: dso.Millis(s.inactivity), Interval: dso.Millis(s.interval)})
		s.told = true
	}
	s.kick()
	return true
}

// unsubscribe handles an UNSUBSCRIBE: by the SUBSCRIBE's ID (RFC 8765
// section 6.4) or, as Apple's client sends it, by NAME, TYPE and CLASS. An
// unknown one is ignored.
func (s *session) unsubscribe(u dso.Unsubscribe) {
	e := s.p.e
	e.mu.Lock()
	defer e.mu.Unlock()
	var sub *pushSub
	if u.Question != nil {
		key := keyOf(*u.Question)
		key.all = u.Question.Qtype == dns.TypeANY || u.Question.Qclass == dns.ClassANY
		sub = s.byKey[key]
	} else {
		sub = s.subs[u.ID]
	}
	if sub != nil {
		s.drop(sub)
		if len(s.subs) == 0 {
			s.idleSince = time.Now()
		}
	}
}

// drop ends sub. The client forgets its records itself. Call with e.mu held.
func (s *session) drop(sub *pushSub) {
	p := s.p
	if sub.gone() {
		return
	}
	for k := range sub.topic.answers {
		s.state(k, -1)
	}
	key := sub.topic.key.questionKey
	if p.e.leave(sub, p) {
		delete(s.subs, sub.id)
		delete(s.byKey, key)
		p.subs--
		s.p.e.metrics.pushSubs.Dec()
	}
}

// end drops every subscription and private LLQ of a session that is over.
func (s *session) end() {
	e := s.p.e
	e.mu.Lock()
	for _, sub := range s.subs {
		s.drop(sub)
	}
	e.llq.endPrivate(s)
	e.mu.Unlock()
}

// reconfirm re-resolves the client's subscriptions at rr's name now: the
// client doubts a record (RFC 8765 section 6.5), and the backend has the
// truth.
func (s *session) reconfirm(rr dns.RR) {
	name := strings.ToLower(dns.Fqdn(rr.Header().Name))
	s.p.e.metrics.reconfirms.Inc()
	s.p.e.changes.mark(change{trigger: "reconfirm", zone: name, affects: func(n string) bool { return n == name }})
}

// query answers a message that is not DSO: an LLQ request or an event
// acknowledgement (private LLQ, llq_private.go) or anything else, which the
// LLQ transport refuses. A session over a session limit gets no LLQ: its
// request is answered SERV-FULL, and the session ends.
func (s *session) query(b []byte) bool {
	e := s.p.e
	if s.refuse {
		if reply := servFull(b, e.config().retryDelay); reply != nil {
			s.out.frame(reply)
		}
		s.out.finish()
		return false
	}
	e.llq.servePrivate(b, s)
	e.mu.Lock()
	held := len(s.llqs) > 0
	if s.heldLLQs && !held && len(s.subs) == 0 {
		s.idleSince = time.Now() // its last LLQ ended: the inactivity timer runs from now
	}
	s.heldLLQs = held
	e.mu.Unlock()
	return true
}

// queueRecord queues a change for the client. Call with e.mu held.
func (s *session) queueRecord(rr dns.RR, add bool) { s.out.record(rr, add) }

// kick wakes the writer.
func (s *session) kick() { s.out.kick() }

// retry ends the session with a Retry Delay (RFC 8490 section 7.2): the
// client is to close and stay away ms milliseconds.
func (s *session) retry(rcode int, ms uint32, why string) {
	s.p.e.metrics.retryDelays.WithLabelValues(why).Inc()
	s.out.retry(rcode, ms)
}
