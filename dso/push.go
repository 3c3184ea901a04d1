package dso

import (
	"github.com/miekg/dns"
)

// Op is what a PUSH record asks of the receiver (RFC 8765 section 6.3.1),
// read from its TTL.
type Op uint8

const (
	// OpAdd adds the record: TTL 0 to MaxAddTTL.
	OpAdd Op = iota
	// OpRemove removes the one record with this RDATA: RemoveRecordTTL.
	OpRemove
	// OpRemoveCollective removes every record of the TYPE and CLASS (255:
	// all) at the name: RemoveCollectiveTTL, no RDATA.
	OpRemoveCollective
	// OpIgnore is any other TTL: the receiver ignores the record.
	OpIgnore
)

// OpOf returns what the PUSH record rr asks for.
func OpOf(rr dns.RR) Op {
	switch ttl := rr.Header().Ttl; {
	case ttl <= MaxAddTTL:
		return OpAdd
	case ttl == RemoveRecordTTL:
		return OpRemove
	case ttl == RemoveCollectiveTTL:
		return OpRemoveCollective
	}
	return OpIgnore
}

// ParsePush appends the records of the PUSH TLV t of m to rrs, unpacked by
// miekg/dns with m's compression pointers. It applies RFC 8765 section
// 6.3.1: an empty PUSH, TYPE or CLASS ANY in an add or single remove, and a
// collective remove with RDATA are errors (fatal to the session); a record
// whose TTL means nothing (OpIgnore) is left out.
func ParsePush(m Message, t TLV, rrs []dns.RR) ([]dns.RR, error) {
	end := t.Offset + len(t.Data)
	if t.Offset < HeaderLen || end > len(m.Raw) {
		return rrs, ErrTruncated
	}
	if len(t.Data) == 0 {
		return rrs, ErrEmptyPush
	}
	msg := m.Raw[:end] // a record may not run past its TLV
	for off := t.Offset; off < end; {
		rr, next, err := dns.UnpackRR(msg, off)
		if err != nil || next <= off {
			return rrs, ErrRecord
		}
		off = next
		h := rr.Header()
		switch OpOf(rr) {
		case OpAdd, OpRemove:
			if h.Rrtype == dns.TypeANY || h.Class == dns.ClassANY {
				return rrs, ErrAnyInAdd
			}
		case OpRemoveCollective:
			if h.Rdlength != 0 {
				return rrs, ErrCollectiveRdata
			}
		case OpIgnore:
			continue
		}
		rrs = append(rrs, rr)
	}
	return rrs, nil
}
