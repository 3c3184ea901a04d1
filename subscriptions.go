package llq

import (
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// topicKey identifies a question; all LLQs for the same question share one
// topic and therefore one re-resolution per change.
type topicKey struct {
	name   string // lower-cased, fully qualified
	qtype  uint16
	qclass uint16
}

func keyOf(q dns.Question) topicKey {
	return topicKey{name: strings.ToLower(dns.Fqdn(q.Name)), qtype: q.Qtype, qclass: q.Qclass}
}

type topic struct {
	key      topicKey
	question dns.Question // as the first subscriber spelled it
	zone     string       // the served zone whose backend answers it
	answers  answerSet
	subs     map[uint64]*subscription
	client   netip.AddrPort // presented to the backend when re-resolving
	dirty    bool           // queued for re-resolution
}

// subscription is one LLQ.
type subscription struct {
	id      uint64
	topic   *topic
	client  netip.AddrPort // where events go
	udpSize uint16         // largest event packet the client accepts
	lease   time.Duration  // last granted
	expires time.Time
	expiry  *timer
	pending []transmission // unacknowledged event packets, oldest first
	gone    bool           // removed from the table; timers still pointing here must do nothing
}

// remaining is the lease left at now, in whole seconds, for event packets.
func (s *subscription) remaining(now time.Time) uint32 {
	d := s.expires.Sub(now)
	if d < 0 {
		return 0
	}
	return uint32((d + time.Second - 1) / time.Second)
}

// table is the engine's state: LLQs by ID, topics by question, and the count
// of LLQs per client address that the per-client limit needs. The engine's
// mutex guards it.
type table struct {
	subs      map[uint64]*subscription
	topics    map[topicKey]*topic
	perClient map[netip.Addr]int
}

func newTable() table {
	return table{
		subs:      make(map[uint64]*subscription),
		topics:    make(map[topicKey]*topic),
		perClient: make(map[netip.Addr]int),
	}
}

// add inserts s into its topic and the indexes.
func (t *table) add(s *subscription) {
	t.subs[s.id] = s
	s.topic.subs[s.id] = s
	t.perClient[s.client.Addr()]++
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
	}
	a := s.client.Addr()
	if t.perClient[a] <= 1 {
		delete(t.perClient, a)
	} else {
		t.perClient[a]--
	}
	s.pending = nil
	return true
}

// move changes the address events go to, keeping the per-client counts right.
func (t *table) move(s *subscription, to netip.AddrPort) {
	if s.client.Addr() != to.Addr() {
		a := s.client.Addr()
		if t.perClient[a] <= 1 {
			delete(t.perClient, a)
		} else {
			t.perClient[a]--
		}
		t.perClient[to.Addr()]++
	}
	s.client = to
}
