package llq

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// questionKey identifies a question.
type questionKey struct {
	name   string // lower-cased, fully qualified
	qtype  uint16
	qclass uint16
}

func keyOf(q dns.Question) questionKey {
	return questionKey{name: strings.ToLower(dns.Fqdn(q.Name)), qtype: q.Qtype, qclass: q.Qclass}
}

// topicKey identifies everything an answer depends on: the question, the
// server block that answers it (a view), and, where a plugin of the block
// answers by client address, that address. All LLQs with the same key share
// one topic and therefore one re-resolution per change.
type topicKey struct {
	questionKey
	block  string     // see blockID; "" for a backend asked directly
	client netip.Addr // only for blocks whose answers depend on the client
}

type topic struct {
	key      topicKey
	question dns.Question // as the first subscriber spelled it
	zone     string       // the served zone whose backend answers it
	answers  answerSet    // change it with setAnswers only
	sorted   []dns.RR     // answers in order, built on demand; nil when not yet built
	subs     map[uint64]*subscription
	client   netip.AddrPort // presented to the backend when re-resolving
	// resolving is set while the topic waits for or undergoes a
	// re-resolution, again when a change came meanwhile; see changeQueue.
	resolving, again bool
	targets          []string // CNAME targets in the answers, see noteTargets
	failures         int      // re-resolutions failed in a row
	retry            timer    // asks again after a failed re-resolution; see fire
	e                *Engine
}

// fire runs when a topic's retry is due.
func (t *topic) fire() {
	t.e.mu.Lock()
	live := t.e.t.topics[t.key] == t
	t.e.mu.Unlock()
	if live {
		t.e.retryTopic(t)
	}
}

// records returns t's answers in a deterministic order. Every ACK carries
// them, so they are sorted once per change of the answers, not once per
// ACK. Callers must not modify the slice. Call with e.mu held.
func (t *topic) records() []dns.RR {
	if t.sorted == nil { // records() never returns nil, so this caches empty sets too
		t.sorted = t.answers.records()
	}
	return t.sorted
}

// setAnswers replaces t's answers and forgets their order. Call with e.mu
// held.
func (t *topic) setAnswers(a answerSet) {
	t.answers = a
	t.sorted = nil
	t.noteTargets()
}

// noteTargets lists the names t's answers depend on besides its own: the
// targets of the CNAMEs the backend followed, maybe out of its zone, maybe
// to another backend. A change to any of them is a change to t. Call with
// e.mu held.
func (t *topic) noteTargets() {
	t.targets = t.targets[:0]
	for _, rr := range t.answers {
		if c, ok := rr.(*dns.CNAME); ok {
			target := strings.ToLower(dns.Fqdn(c.Target))
			if target != t.key.name && !slices.Contains(t.targets, target) {
				t.targets = append(t.targets, target)
			}
		}
	}
}

// subscription is one LLQ. Fields are ordered so that the small ones share
// a word: there is one of these per LLQ.
type subscription struct {
	id      uint64
	topic   *topic
	e       *Engine        // for the lease timer, which fires with s alone
	client  netip.AddrPort // where events go
	expires time.Time      // end of the last granted lease
	expiry  timer          // embedded, see firer; initialised by establish
	pending []transmission // unacknowledged event packets, oldest first
	held    *event         // news for an unproven port, sent once it proves itself; see publish
	udpSize uint16         // largest event packet the client accepts
	gone    bool           // removed from the table; timers still pointing here must do nothing
	// proven is set when the event port has shown it wants events: the
	// setup or a refresh came from it over UDP, or it acknowledged an
	// event. A port named over TCP has not: see publish.
	proven      bool
	unsolicited bool // the one packet an unproven port may get has been sent
}

// hold adds st to the news kept for s's unproven port. Call with e.mu held.
func (s *subscription) hold(st statement) {
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
func (e *Engine) prove(s *subscription, now time.Time) {
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
			e.sched.schedule(&ev.retry, now)
		}
	}
}

// fire runs when s's lease timer is due.
func (s *subscription) fire() { s.e.expire(s) }

// remaining is the lease left at now, in whole seconds, for event packets.
func (s *subscription) remaining(now time.Time) uint32 {
	d := s.expires.Sub(now)
	if d < 0 {
		return 0
	}
	return uint32((d + time.Second - 1) / time.Second)
}

// table is the engine's state: LLQs by ID, topics by question, and the count
// of LLQs per client (see clientBits) that the per-client limit needs. The
// engine's mutex guards it.
type table struct {
	subs      map[uint64]*subscription
	topics    map[topicKey]*topic
	questions map[questionKey]int // topics per question (views, client addresses)
	perClient map[netip.Prefix]int
	bits      clientBits // what perClient is keyed by
}

func newTable(bits clientBits) table {
	return table{
		subs:      make(map[uint64]*subscription),
		topics:    make(map[topicKey]*topic),
		questions: make(map[questionKey]int),
		perClient: make(map[netip.Prefix]int),
		bits:      bits,
	}
}

// add inserts s into its topic and the indexes.
func (t *table) add(s *subscription) {
	t.subs[s.id] = s
	s.topic.subs[s.id] = s
	t.perClient[t.bits.key(s.client.Addr())]++
}

// remove deletes s everywhere and drops its topic when s was the last
// subscriber. It reports whether s was still in the table.
func (t *table) remove(s *subscription) bool {
	if s.gone {
		return false
	}
	s.gone = true
	delete(t.subs, s.id)
	delete(s.topic.subs, s.id)
	if len(s.topic.subs) == 0 {
		delete(t.topics, s.topic.key)
		if q := s.topic.key.questionKey; t.questions[q] <= 1 {
			delete(t.questions, q)
		} else {
			t.questions[q]--
		}
	}
	t.uncount(s.client.Addr())
	s.pending = nil
	return true
}

func (t *table) uncount(a netip.Addr) {
	k := t.bits.key(a)
	if t.perClient[k] <= 1 {
		delete(t.perClient, k)
	} else {
		t.perClient[k]--
	}
}

// move changes the address events go to, keeping the per-client counts right.
func (t *table) move(s *subscription, to netip.AddrPort) {
	if s.client.Addr() != to.Addr() {
		t.uncount(s.client.Addr())
		t.perClient[t.bits.key(to.Addr())]++
	}
	s.client = to
}

// rekey recounts the LLQs per client when a reload changes what a client is.
func (t *table) rekey(bits clientBits) {
	if bits == t.bits {
		return
	}
	t.bits = bits
	clear(t.perClient)
	for _, s := range t.subs {
		t.perClient[bits.key(s.client.Addr())]++
	}
}
