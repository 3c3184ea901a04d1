package llq

import (
	"math/rand/v2"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Private LLQ: an LLQ set up on a TLS session of the DNS Push listener
// (the LLQ presentation's "private LLQ", advertised as _dns-llq-tls._tcp).
// The connection proves the client's address, so setup takes two messages
// with no challenge, as over TCP. Unlike LLQ over TCP, whose events go over
// UDP to the port the client names, everything stays on the session:
// events, refreshes, acknowledgements and the terminating refresh. Events
// are not retransmitted (TCP delivers them or the session ends), and acks
// are taken and need nothing more.
//
// The LLQ ends with its session. RFC 8764 keeps an LLQ for its lease
// because over UDP nothing else tells the server that a client is gone;
// here the connection's end does, as a DNS Push subscription ends with its
// session (RFC 8765 section 6.2). Keeping the lease would leave no way to
// deliver the events but the clear-text UDP the client chose TLS to avoid,
// and no way for a new connection to take the LLQ over: RFC 8764 has none.
// A client that reconnects sets the LLQ up again, in two messages.

// bind makes s private to sess. Call with e.mu held.
func (l *llqTransport) bind(s *llqSub, sess *session) {
	s.private, s.proven, s.acking = true, true, true
	l.private[s.id] = sess
	sess.llqs[s.id] = s
}

// unbind forgets the session of the private LLQ s. Call with e.mu held.
func (l *llqTransport) unbind(s *llqSub) {
	if sess := l.private[s.id]; sess != nil {
		delete(sess.llqs, s.id)
		delete(sess.early, s.id)
	}
	delete(l.private, s.id)
}

// reaches reports whether a message on sess (nil: UDP or plain TCP) may
// act on LLQ s: a private LLQ is known only on its own session, and an LLQ
// set up elsewhere not on a session. Call with e.mu held.
func (l *llqTransport) reaches(s *llqSub, sess *session) bool {
	if !s.private {
		return sess == nil
	}
	return l.private[s.id] == sess
}

// queuePrivate queues an event on s's session, from the template packet
// (see publish), and wakes its writer. Call with e.mu held.
func (l *llqTransport) queuePrivate(s *llqSub, packet []byte, now time.Time) {
	sess := l.private[s.id]
	if sess == nil {
		return
	}
	b := append([]byte(nil), packet...)
	patch(b, uint16(rand.Uint32()), s.id, s.remaining(now))
	if s.acking {
		// The ACK these news follow is not queued yet: they wait for it,
		// since the client cannot place an event before it knows the ID.
		if sess.early == nil {
			sess.early = make(map[uint64][][]byte)
		}
		sess.early[s.id] = append(sess.early[s.id], b)
		return
	}
	sess.out.frame(b)
	l.e.metrics.privateEvents.Inc()
	sess.kick()
}

// privateRest is the part of a private LLQ's answer set that did not fit
// its ACK.
type privateRest struct {
	id  uint64
	rrs []dns.RR
}

// deliverPrivate queues, on sess, the reply to an LLQ message (nil: none),
// then as events the answers of rest that did not fit it, then the news
// that came for the LLQs acked while the reply was being made. All of it
// under the engine lock, so that no change gets between them: the client
// reads the ACK, the rest of the set as it was then, and every change
// since, in that order. Events are split to what one message carries
// (privateSize), as over UDP to the client's size.
func (l *llqTransport) deliverPrivate(sess *session, reply []byte, acked []uint64, rest []privateRest) {
	now := time.Now()
	l.e.mu.Lock()
	defer l.e.mu.Unlock()
	if reply != nil {
		sess.out.frame(reply)
	}
	for _, r := range rest {
		s := sess.llqs[r.id]
		if s == nil {
			continue // ended meanwhile
		}
		keys := make([]string, len(r.rrs)) // split wants them; nothing tracks private events
		adds := make([]bool, len(r.rrs))
		for i := range adds {
			adds[i] = true
		}
		for _, st := range split(s.topic.question, keys, r.rrs, adds, privateSize) {
			b, err := buildEvent(s.topic.question, st.rrs, st.adds, uint16(rand.Uint32()), s.id, s.remaining(now))
			if err != nil {
				log.Errorf("cannot pack event for %s: %v", s.topic.question.Name, err)
				continue
			}
			sess.out.frame(b)
			l.e.metrics.privateEvents.Inc()
		}
	}
	for _, id := range acked {
		s := sess.llqs[id]
		if s == nil || !s.acking {
			continue
		}
		s.acking = false
		for _, b := range sess.early[id] {
			sess.out.frame(b)
			l.e.metrics.privateEvents.Inc()
		}
		delete(sess.early, id)
	}
	sess.kick()
}

// endPrivate drops the private LLQs of a session that is over. Call with
// e.mu held.
func (l *llqTransport) endPrivate(sess *session) {
	for _, s := range sess.llqs {
		l.drop(s)
	}
}

// servFull answers an LLQ request b on a session over a session limit:
// every LLQ SERV-FULL, with the time to wait in LLQ-LEASE (RFC 8764 section
// 3.2), as the Retry Delay of a SUBSCRIBE there says. nil when b is no LLQ
// request.
func servFull(b []byte, wait time.Duration) []byte {
	m := new(dns.Msg)
	if m.Unpack(b) != nil || m.Response {
		return nil
	}
	opts := wire.Options(m)
	if len(opts) == 0 {
		return nil
	}
	reply := new(dns.Msg)
	reply.SetReply(m)
	lease := uint32(max(time.Second, wait) / time.Second)
	out := make([]*dns.EDNS0_LLQ, len(opts))
	for i, o := range opts {
		out[i] = wire.NewOption(o.Opcode, wire.ServFull, o.Id, lease)
	}
	wire.SetOptions(reply, dns.MinMsgSize, out...)
	packed, err := reply.Pack()
	if err != nil {
		return nil
	}
	return packed
}

// privateSize is the size a private LLQ's events are split to: a whole
// message on the connection.
const privateSize = dns.MaxMsgSize
