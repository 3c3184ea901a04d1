package client

import (
	"sort"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// answerSet is an LLQ's current answers with set semantics: two records are
// the same when they differ only in TTL (or owner-name case). That is what
// makes events idempotent, so a retransmitted event changes nothing.
type answerSet map[string]dns.RR

func newAnswerSet(rrs []dns.RR) answerSet {
	s := make(answerSet, len(rrs))
	for _, rr := range rrs {
		s.add(rr)
	}
	return s
}

// add inserts a copy of rr and reports whether it was new. A record already
// present keeps its TTL: the add is a no-op.
func (s answerSet) add(rr dns.RR) bool {
	k := rrKey(rr)
	if _, ok := s[k]; ok {
		return false
	}
	s[k] = dns.Copy(rr)
	return true
}

// remove deletes rr and returns the record as it was held, or nil when it
// was absent.
func (s answerSet) remove(rr dns.RR) dns.RR {
	k := rrKey(rr)
	old, ok := s[k]
	if !ok {
		return nil
	}
	delete(s, k)
	return old
}

// apply applies one event's Answer section: TTL 0xFFFFFFFF removes, anything
// else adds. It returns the records that actually changed the set.
func (s answerSet) apply(rrs []dns.RR) (added, removed []dns.RR) {
	for _, rr := range rrs {
		if rr.Header().Ttl == wire.RemoveTTL {
			if old := s.remove(rr); old != nil {
				removed = append(removed, old)
			}
			continue
		}
		if s.add(rr) {
			added = append(added, dns.Copy(rr))
		}
	}
	return added, removed
}

// list returns copies of the records in a stable order, so that output does
// not depend on map iteration.
func (s answerSet) list() []dns.RR {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]dns.RR, len(keys))
	for i, k := range keys {
		out[i] = dns.Copy(s[k])
	}
	return out
}

// rrKey identifies rr regardless of TTL and owner-name case, as the server
// does.
func rrKey(rr dns.RR) string {
	k, _ := wire.RecordKey(rr, nil)
	return k
}

// Diff compares two answer sets the way events do (ignoring TTL and
// owner-name case) and returns what next adds to prev and what it lacks.
// A client that had to set an LLQ up again uses it to report what changed
// while it was not subscribed.
func Diff(prev, next []dns.RR) (added, removed []dns.RR) {
	before, after := newAnswerSet(prev), newAnswerSet(next)
	for _, rr := range after.list() {
		if _, ok := before[rrKey(rr)]; !ok {
			added = append(added, rr)
		}
	}
	for _, rr := range before.list() {
		if _, ok := after[rrKey(rr)]; !ok {
			removed = append(removed, rr)
		}
	}
	return added, removed
}
