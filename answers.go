package llq

import (
	"sort"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// answerSet is a topic's current answers keyed by record identity
// (wire.RecordKey): a TTL-only change or a change of case is no change.
type answerSet map[string]dns.RR

// newAnswerSet builds a set from an answer section; duplicates collapse.
func newAnswerSet(rrs []dns.RR) answerSet {
	s := make(answerSet, len(rrs))
	var buf []byte
	var k string
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		k, buf = wire.RecordKey(rr, buf)
		s[k] = rr
	}
	return s
}

// diff returns the keys present in next but not in s (added) and those in s
// but not in next (removed), each sorted so that events are deterministic.
func (s answerSet) diff(next answerSet) (added, removed []string) {
	for k := range next {
		if _, ok := s[k]; !ok {
			added = append(added, k)
		}
	}
	for k := range s {
		if _, ok := next[k]; !ok {
			removed = append(removed, k)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed
}

// records returns the set's records in a deterministic order.
func (s answerSet) records() []dns.RR {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]dns.RR, len(keys))
	for i, k := range keys {
		out[i] = s[k]
	}
	return out
}
