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
	// all asks for every record at the name, whatever its type (a DNS
	// Push subscription to TYPE or CLASS 255), rather than what the
	// backend answers to a query of type ANY (see resolve_all.go).
	all bool
}

func keyOf(q dns.Question) questionKey {
	return questionKey{name: strings.ToLower(dns.Fqdn(q.Name)), qtype: q.Qtype, qclass: q.Qclass}
}

// topicKey identifies everything an answer depends on: the question, the
// server block that answers it (a view), and, where a plugin of the block
// answers by client address, that address. All subscriptions with the
// same key, whatever their transport, share one topic and therefore one
// re-resolution per change.
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
	// subs holds the subscribers in no order; each knows its place (see
	// subscription.at), so that leaving costs O(1). A slice of interfaces
	// takes 16 bytes a subscriber where a map keyed by them took 24 and
	// more: most of the engine's memory per LLQ beyond the LLQ itself.
	subs   []subscriber
	owners []ownerCount   // subscribers per transport, so that a change visits only those with some
	client netip.AddrPort // presented to the backend when re-resolving
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
	live := t.e.topics[t.key] == t
	t.e.mu.Unlock()
	if live {
		t.e.retryTopic(t)
	}
}

// ownerCount is how many of a topic's subscribers one transport owns.
type ownerCount struct {
	tr transport
	n  int
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

// add inserts s, owned by tr.
func (t *topic) add(s subscriber, tr transport) {
	s.base().at = len(t.subs)
	t.subs = append(t.subs, s)
	for i := range t.owners {
		if t.owners[i].tr == tr {
			t.owners[i].n++
			return
		}
	}
	t.owners = append(t.owners, ownerCount{tr, 1})
}

// remove deletes s, owned by tr, moving the last subscriber into its
// place. Nothing leaves while a transport ranges over t.subs: both happen
// under e.mu, and no transport's changed leaves. A topic that lost most of
// its subscribers gives back the memory they held, as a map would not.
func (t *topic) remove(s subscriber, tr transport) {
	i, last := s.base().at, len(t.subs)-1
	if i != last {
		t.subs[i] = t.subs[last]
		t.subs[i].base().at = i
	}
	t.subs[last] = nil
	t.subs = t.subs[:last]
	if c := cap(t.subs); c > 64 && last < c/4 {
		t.subs = append(make([]subscriber, 0, 2*last), t.subs...)
	}
	for i := range t.owners {
		if t.owners[i].tr == tr {
			t.owners[i].n--
			return
		}
	}
}

// A transport carries changes to the subscribers it owns, in its own
// messages: LLQ events over UDP, PUSH messages on a DNS Push session. The
// engine knows topics and answers; framing, batching, acknowledgement and
// retry are the transport's.
type transport interface {
	// changed tells the transport that t's answers changed: added and
	// removed are record keys (see wire.RecordKey), old holds the removed
	// records and t.answers the added ones. It is called with e.mu held,
	// once per change of a topic in which the transport owns a
	// subscriber, and returns what to do once the lock is released (the
	// writes), or nil.
	changed(t *topic, added, removed []string, old answerSet, now time.Time) func()
}

// subscriber is one subscription, of whatever transport, as a topic holds
// it: the transport's own type, which embeds subscription.
type subscriber interface {
	base() *subscription
}

// subscription is the engine's part of a subscriber: which topic, if it
// has not left. A lease, if any, is the transport's business: an LLQ
// has one, a DNS Push subscription lives as long as its session.
type subscription struct {
	topic *topic // nil once it has left: timers still pointing at it must do nothing
	at    int    // its index in topic.subs while it is in
}

func (s *subscription) base() *subscription { return s }

// gone reports whether s has left its topic. A flag of its own would cost
// every LLQ a word (and a size class) for padding.
func (s *subscription) gone() bool { return s.topic == nil }
