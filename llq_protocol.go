package llq

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// serve answers one message that arrived on the LLQ listener and returns the
// packed reply, or nil when nothing must be sent. It is the whole of RFC 8764
// as seen from the server: setup, challenge, challenge response, refresh,
// terminate and event acknowledgements. Replies never carry more than the
// request did until the client has proven its address (no amplification):
// only the ACK after a valid challenge response carries answers.
func (l *llqTransport) serve(b []byte, src netip.AddrPort, tcp bool) []byte {
	packed, after := l.serveThen(b, src, tcp)
	l.send(after, "event")
	return packed
}

// serveThen is serve for a transport that writes the reply itself: after
// are event packets to send once the reply is on its way (the part of an
// answer set that did not fit a UDP ACK).
func (l *llqTransport) serveThen(b []byte, src netip.AddrPort, tcp bool) (packed []byte, after []delivery) {
	return l.serveOn(b, src, tcp, nil)
}

// servePrivate answers a message that came on the TLS session sess: LLQs
// it sets up are private (see llq_private.go). The reply, and the part of
// an answer set that did not fit it, are queued on the session.
func (l *llqTransport) servePrivate(b []byte, sess *session) {
	l.serveOn(b, sess.addr, true, sess)
}

// serveOn is serveThen for a message from src, over a connection when tcp,
// and on the TLS session sess when that is not nil; on a session it queues
// the reply there itself (see deliverPrivate) and returns nil.
func (l *llqTransport) serveOn(b []byte, src netip.AddrPort, tcp bool, sess *session) (packed []byte, after []delivery) {
	var acked []uint64 // LLQs whose ACK this reply is, on a session
	var rest []privateRest
	if sess != nil {
		defer func() {
			l.deliverPrivate(sess, packed, acked, rest)
			packed = nil
		}()
	}
	defer func() {
		// Enforce the no-amplification rule whatever the request looks like:
		// compression pointers into the middle of labels (or into other
		// sections) can make every question a long name that no compressor
		// can shrink again in the echo. Legitimate requests never come close.
		// Only an ACK carries answers, and only after a valid challenge
		// response or over TCP.
		if !tcp && len(packed) > len(b) && binary.BigEndian.Uint16(packed[6:]) == 0 {
			packed = nil
		}
	}()
	if len(b) >= 12 && b[2]&0x80 != 0 {
		// A response: the only ones a client sends are event acks. Never
		// answer one, whatever it holds (two servers could bounce errors
		// forever).
		wire.EventAcks(b, func(msgID uint16, llqID uint64) { l.acknowledge(msgID, llqID, src, sess) })
		return nil, nil
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return formErrHeader(b), nil
	}
	reply := new(dns.Msg)
	reply.Id = m.Id
	reply.Response = true
	reply.Opcode = m.Opcode
	reply.RecursionDesired = m.RecursionDesired
	reply.Question = m.Question
	// Compress every reply, errors included: the request may point all its
	// questions at one long name, and echoing them uncompressed would turn
	// a small spoofed query into a reply many times its size.
	reply.Compress = true

	if m.Opcode != dns.OpcodeQuery {
		reply.Rcode = dns.RcodeNotImplemented
		return pack(reply), nil
	}
	if optCount(m) > 1 {
		// RFC 6891 section 6.1.1: more than one OPT record is FORMERR.
		reply.Rcode = dns.RcodeFormatError
		l.e.metrics.errorsSent.WithLabelValues("FORMERR").Inc()
		return pack(reply), nil
	}
	opt := m.IsEdns0()
	opts := wire.Options(m)
	if len(opts) == 0 {
		// An ordinary query has no business here; the zone's own servers
		// answer it.
		reply.Rcode = dns.RcodeRefused
		return pack(reply), nil
	}
	udpSize := l.e.config().udpSize
	if opt.Version() != 0 {
		reply.Rcode = dns.RcodeBadVers
		wire.SetOptions(reply, udpSize)
		l.e.metrics.errorsSent.WithLabelValues("BADVERS").Inc()
		return pack(reply), nil
	}
	if wire.CheckLengths(b) != nil || len(opts) != len(m.Question) {
		reply.Rcode = dns.RcodeFormatError
		// One option per option received, never more: a question count
		// above the option count must not buy 22 reply bytes per question.
		out := make([]*dns.EDNS0_LLQ, min(len(m.Question), len(opts)))
		for i := range out {
			out[i] = wire.NewOption(wire.OpSetup, wire.FormatErr, 0, 0)
			if i < len(opts) {
				out[i].Opcode, out[i].Id = opts[i].Opcode, opts[i].Id
			}
			l.countError(wire.FormatErr)
		}
		wire.SetOptions(reply, udpSize, out...)
		return pack(reply), nil
	}

	for _, q := range m.Question {
		if !servable(q) {
			// CoreDNS's port refuses other classes, and a meta type has
			// no answer to subscribe to. Refused before any challenge,
			// so that no state and no challenge is spent on it.
			reply.Rcode = dns.RcodeRefused
			l.e.metrics.setups.WithLabelValues("refused").Inc()
			return pack(reply), nil
		}
	}

	clientSize := opt.UDPSize()
	if clientSize < dns.MinMsgSize {
		clientSize = dns.MinMsgSize
	}
	now := time.Now()
	out := make([]*dns.EDNS0_LLQ, len(opts))
	refused := false
	var made []uint64 // LLQs this message created
	type part struct {
		id       uint64
		from, to int // its answers in reply.Answer
	}
	var parts []part
	for i, o := range opts {
		var answers []dns.RR
		out[i], answers = l.question(m.Question[i], o, src, tcp, sess, clientSize, now, &refused, &made)
		if len(answers) > 0 {
			parts = append(parts, part{out[i].Id, len(reply.Answer), len(reply.Answer) + len(answers)})
		}
		reply.Answer = append(reply.Answer, answers...)
		l.countError(out[i].Error)
		if sess != nil && o.Opcode == wire.OpSetup && out[i].Error == wire.NoError {
			acked = append(acked, out[i].Id)
		}
	}
	if refused {
		// CoreDNS's port would not have had llq's block answer this
		// client: it gets what the port gives it, and no LLQ, not even
		// those of the message's other questions, whose IDs it never
		// hears.
		l.e.mu.Lock()
		for _, id := range made {
			if s, ok := l.subs[id]; ok {
				l.drop(s)
			}
		}
		l.e.mu.Unlock()
		reply.Answer = nil
		reply.Rcode = dns.RcodeRefused
		return pack(reply), nil
	}
	wire.SetOptions(reply, udpSize, out...)
	reply.Authoritative = true
	limit := int(clientSize)
	if tcp {
		limit = dns.MaxMsgSize
	}
	// Pack, then measure: the size that counts is that of the bytes sent,
	// and Msg.Len, which this used to ask first, costs nearly as much as
	// packing (a compression map, and every EDNS0 option packed just to be
	// measured) for a reply that almost always fits.
	packed = pack(reply)
	if len(packed) > limit && (!tcp || sess != nil) {
		// Never a TC-only ACK over UDP: Apple's client takes it for
		// established, fails to fetch over TCP and falls back to polling.
		// The ACK carries what fits; the rest follows as events,
		// acknowledged and retransmitted like any, so the client ends up
		// with the whole set. On a TLS session there is nowhere else to
		// fetch it from either: the rest follows on the session, in
		// messages of up to 64 KiB, right after the ACK.
		all := reply.Answer
		n := fitting(reply, all, limit)
		reply.Answer = all[:n]
		packed = pack(reply)
		for _, p := range parts {
			if lo := max(p.from, n); lo < p.to {
				if sess != nil {
					rest = append(rest, privateRest{p.id, all[lo:p.to]})
					continue
				}
				after = append(after, l.follow(p.id, all[lo:p.to], now)...)
			}
		}
		return packed, after
	}
	if len(packed) > limit {
		// An answer set beyond even a TCP message stays truncated, as it
		// would for a query: plain TCP's events go over UDP, and a client
		// can fetch the set with an ordinary query over TCP.
		reply.Answer = nil
		reply.Truncated = true
		packed = pack(reply)
	}
	return packed, nil
}

// fitting returns how many of answers reply can carry within limit bytes.
func fitting(reply *dns.Msg, answers []dns.RR, limit int) int {
	lo, hi := 0, len(answers) // answers[:lo] fit; answers[:hi+1] do not
	for lo < hi {
		mid := (lo + hi + 1) / 2
		reply.Answer = answers[:mid]
		if b := pack(reply); b != nil && len(b) <= limit {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// follow sends, as events to LLQ id, the records of its answer set that
// did not fit its ACK. Each states the current truth and is retransmitted
// until acknowledged.
func (l *llqTransport) follow(id uint64, rrs []dns.RR, now time.Time) []delivery {
	l.e.mu.Lock()
	defer l.e.mu.Unlock()
	s, ok := l.subs[id]
	if !ok {
		return nil
	}
	keys := make([]string, len(rrs))
	adds := make([]bool, len(rrs))
	var buf []byte
	for i, rr := range rrs {
		keys[i], buf = wire.RecordKey(rr, buf)
		adds[i] = true
	}
	var out []delivery
	for _, st := range split(s.topic.question, keys, rrs, adds, s.udpSize) {
		d, err := l.restate(newEvent(s, st), now)
		if err != nil {
			log.Errorf("cannot pack event for %s: %v", s.topic.question.Name, err)
			continue
		}
		out = append(out, d)
	}
	return out
}

// question handles the LLQ option of one question; an LLQ it creates is
// added to made.
func (l *llqTransport) question(q dns.Question, o *dns.EDNS0_LLQ, src netip.AddrPort, tcp bool, sess *session, udpSize uint16, now time.Time, refused *bool, made *[]uint64) (*dns.EDNS0_LLQ, []dns.RR) {
	fail := func(code uint16, lease uint32) (*dns.EDNS0_LLQ, []dns.RR) {
		return wire.NewOption(o.Opcode, code, o.Id, lease), nil
	}
	if o.Version != wire.Version {
		return fail(wire.BadVers, 0) // NewOption sets our version
	}
	cfg := l.e.config()
	switch o.Opcode {
	case wire.OpSetup:
		// One trip through the engine lock for what setup checks before
		// establish: the backend, then for a first UDP setup the count
		// limits (precheck) and for a challenge response whether the LLQ
		// exists already (known).
		var full *setupError
		exists := false
		l.e.mu.Lock()
		b, _ := l.e.backendFor(keyOf(q).name)
		if b != nil && o.Id == 0 && !tcp {
			full = l.precheck(src.Addr())
		} else if b != nil && o.Id != 0 {
			exists = l.known(o.Id, src.Addr())
		}
		l.e.mu.Unlock()
		if b == nil {
			l.e.metrics.setups.WithLabelValues("static").Inc()
			return fail(wire.Static, 0)
		}
		lease := cfg.clampLease(o.LeaseLife)
		client := src
		if tcp && sess == nil {
			// Over TCP the connection already proved the address. Events
			// still go over UDP: to the port the client names in ERROR
			// (mDNSResponder does), else to its TCP source port. On a TLS
			// session they go on the session, never in clear text: the
			// port in ERROR is not used.
			if o.Error != 0 {
				client = netip.AddrPortFrom(src.Addr(), o.Error)
			}
		}
		if sess != nil {
			udpSize = privateSize
		}
		id := o.Id
		if id == 0 {
			if !tcp {
				if full != nil {
					// Counted in errors_total and limit_rejections_total
					// only: no LLQ was about to be created.
					return fail(full.code, full.lease)
				}
				l.e.metrics.setups.WithLabelValues("challenged").Inc()
				return wire.NewOption(wire.OpSetup, wire.NoError, l.chal.issue(now, src, q), lease), nil
			}
			id = l.chal.issue(now, client, q)
		} else if !exists && (tcp || !l.chal.valid(id, now, time.Duration(lease)*time.Second, src, q)) {
			l.e.metrics.setups.WithLabelValues("bad-challenge").Inc()
			return fail(wire.NoSuchLLQ, 0)
		}
		// A UDP setup's challenge response came from the event port; a
		// port named over TCP must still prove itself.
		answers, granted, err := l.establish(id, q, client, !tcp, lease, udpSize, now, sess)
		if err != nil {
			if err.limit {
				l.e.metrics.setups.WithLabelValues("serv-full").Inc()
			}
			if err.rcode == dns.RcodeRefused {
				l.e.metrics.setups.WithLabelValues("refused").Inc()
				*refused = true
			}
			return fail(err.code, err.lease)
		}
		if !exists {
			*made = append(*made, id)
		}
		return wire.NewOption(wire.OpSetup, wire.NoError, id, granted), answers

	case wire.OpRefresh:
		port := src.Port()
		if tcp {
			port = o.Error // 0 keeps the event port
		}
		granted, err := l.refresh(o.Id, q, src, port, !tcp, o.LeaseLife, now, sess)
		if err != nil {
			return fail(err.code, err.lease)
		}
		return wire.NewOption(wire.OpRefresh, wire.NoError, o.Id, granted), nil
	}
	return fail(wire.FormatErr, 0)
}

// precheck tells a client at setup time that a count limit would refuse its
// LLQ, before it bothers with the challenge. Call with e.mu held.
func (l *llqTransport) precheck(addr netip.Addr) *setupError {
	return l.admit(addr)
}

// known reports whether LLQ id exists for a client at addr: a repeated
// challenge response (the ACK got lost) or one repeated over TCP after a
// truncated ACK. Call with e.mu held.
func (l *llqTransport) known(id uint64, addr netip.Addr) bool {
	s, ok := l.subs[id]
	return ok && s.client.Addr() == addr
}

// servable reports whether q may be subscribed to: class IN, and a type
// that names data (RFC 6895 section 3.1: not 0, OPT, the meta and query
// types 128-255, nor the reserved 65535).
func servable(q dns.Question) bool {
	if q.Qclass != dns.ClassINET {
		return false
	}
	switch t := q.Qtype; {
	case t == dns.TypeNone, t == dns.TypeOPT, t >= 128 && t <= 255, t == dns.TypeReserved:
		return false
	}
	return true
}

// optCount counts the OPT records of m.
func optCount(m *dns.Msg) int {
	n := 0
	for _, rr := range m.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			n++
		}
	}
	return n
}

func pack(m *dns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

// formErrHeader answers a message that does not parse with a bare FORMERR
// header, unless it claims to be a response (never answer those: two servers
// could bounce errors forever).
func formErrHeader(b []byte) []byte {
	if len(b) < 12 || b[2]&0x80 != 0 {
		return nil
	}
	return []byte{b[0], b[1], 0x80 | b[2]&0x78, dns.RcodeFormatError, 0, 0, 0, 0, 0, 0, 0, 0}
}

func (l *llqTransport) countError(code uint16) {
	if code != wire.NoError {
		l.e.metrics.errorsSent.WithLabelValues(wire.ErrorName(code)).Inc()
	}
}
