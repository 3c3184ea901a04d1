package llq

import (
	"sort"

	"github.com/miekg/dns"
)

// answerSet is a topic's current answers keyed by record identity: the
// record in wire form with its TTL zeroed and its owner name lower-cased, so
// that a TTL-only change or a change of case is no change at all.
type answerSet map[string]dns.RR

// recordKey returns the identity of rr. buf is scratch space that may be
// reused between calls.
func recordKey(rr dns.RR, buf []byte) (string, []byte) {
	// Pack through a message, not with dns.PackRR: PackRR stores Rdlength
	// in rr's header, and rr belongs to the backend (file hands out the
	// records of its zone tree), whose readers on other goroutines would
	// race with that write. Msg packing leaves the records alone.
	n := 12 + dns.Len(rr) + 1
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	m := dns.Msg{Answer: []dns.RR{rr}}
	packed, err := m.PackBuffer(buf[:n])
	if err != nil {
		// Not packable means not sendable either; identify it by its text.
		return rr.String(), buf
	}
	if cap(packed) > cap(buf) {
		buf = packed
	}
	b := packed[12:] // past the message header: the record alone
	i := 0
	for i < len(b) && b[i] != 0 { // owner name, uncompressed: label lengths are < 'A'
		l := int(b[i])
		for j := i + 1; j <= i+l && j < len(b); j++ {
			if c := b[j]; c >= 'A' && c <= 'Z' {
				b[j] = c + 'a' - 'A'
			}
		}
		i += l + 1
	}
	if ttl := i + 1 + 4; ttl+4 <= len(b) {
		b[ttl], b[ttl+1], b[ttl+2], b[ttl+3] = 0, 0, 0, 0
	}
	return string(b), buf
}

// newAnswerSet builds a set from an answer section; duplicates collapse.
func newAnswerSet(rrs []dns.RR) answerSet {
	s := make(answerSet, len(rrs))
	var buf []byte
	var k string
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		k, buf = recordKey(rr, buf)
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
