package dso

import (
	"encoding/binary"
	"time"

	"github.com/miekg/dns"
)

// Keepalive is the DSO-DATA of a Keepalive TLV (RFC 8490 section 7.1), both
// values in milliseconds, Infinite for none.
type Keepalive struct {
	// Inactivity is how long a session with no active operation may stay
	// open. Zero means close once the current operations are done.
	Inactivity uint32
	// Interval is how long either side may stay silent; never below
	// MinKeepaliveInterval when a server sends it.
	Interval uint32
}

// ParseKeepalive decodes a Keepalive TLV: exactly 8 bytes.
func ParseKeepalive(t TLV) (Keepalive, error) {
	if len(t.Data) != 8 {
		return Keepalive{}, ErrLength
	}
	return Keepalive{binary.BigEndian.Uint32(t.Data), binary.BigEndian.Uint32(t.Data[4:])}, nil
}

// ParseRetryDelay decodes a Retry Delay TLV: exactly 4 bytes, milliseconds.
func ParseRetryDelay(t TLV) (uint32, error) {
	if len(t.Data) != 4 {
		return 0, ErrLength
	}
	return binary.BigEndian.Uint32(t.Data), nil
}

// Duration converts a Keepalive or Retry Delay value in milliseconds to a
// duration; ok is false for Infinite.
func Duration(ms uint32) (d time.Duration, ok bool) {
	if ms == Infinite {
		return 0, false
	}
	return time.Duration(ms) * time.Millisecond, true
}

// Millis converts d to whole milliseconds for a Keepalive or Retry Delay,
// capped at the largest finite value 0xFFFFFFFE; negative is 0.
func Millis(d time.Duration) uint32 {
	ms := d.Milliseconds()
	switch {
	case ms < 0:
		return 0
	case ms >= Infinite:
		return Infinite - 1
	}
	return uint32(ms)
}

// ParseSubscribe decodes the SUBSCRIBE TLV t of m (RFC 8765 section 6.2):
// NAME, TYPE, CLASS, nothing after. The name is unpacked by miekg/dns.
func ParseSubscribe(m Message, t TLV) (dns.Question, error) {
	return parseQuestion(m, t)
}

// Unsubscribe is a decoded UNSUBSCRIBE TLV.
type Unsubscribe struct {
	// ID is the MESSAGE ID of the SUBSCRIBE being cancelled (RFC 8765
	// section 6.4), when Question is unset.
	ID uint16
	// Question is set instead of ID for the early drafts' form that
	// Apple's client sends: the subscription's NAME, TYPE and CLASS.
	Question *dns.Question
}

// ParseUnsubscribe decodes an UNSUBSCRIBE TLV: a 2-byte ID, or the early
// drafts' NAME/TYPE/CLASS.
func ParseUnsubscribe(m Message, t TLV) (Unsubscribe, error) {
	if len(t.Data) == 2 {
		return Unsubscribe{ID: binary.BigEndian.Uint16(t.Data)}, nil
	}
	q, err := parseQuestion(m, t)
	if err != nil {
		return Unsubscribe{}, err
	}
	return Unsubscribe{Question: &q}, nil
}

// ParseReconfirm decodes a RECONFIRM TLV (RFC 8765 section 6.5): NAME,
// TYPE, CLASS and RDATA filling the rest of the TLV, returned as the record
// they describe with a zero TTL. TYPE or CLASS ANY is ErrAnyInAdd.
func ParseReconfirm(m Message, t TLV) (dns.RR, error) {
	end := t.Offset + len(t.Data)
	if t.Offset < HeaderLen || end > len(m.Raw) {
		return nil, ErrTruncated
	}
	name, off, err := dns.UnpackDomainName(m.Raw[:end], t.Offset)
	if err != nil {
		return nil, ErrName
	}
	if end-off < 4 {
		return nil, ErrLength
	}
	h := dns.RR_Header{
		Name:     name,
		Rrtype:   binary.BigEndian.Uint16(m.Raw[off:]),
		Class:    binary.BigEndian.Uint16(m.Raw[off+2:]),
		Rdlength: uint16(end - off - 4),
	}
	if h.Rrtype == dns.TypeANY || h.Class == dns.ClassANY {
		return nil, ErrAnyInAdd
	}
	rr, _, err := dns.UnpackRRWithHeader(h, m.Raw[:end], off+4)
	if err != nil {
		return nil, ErrRecord
	}
	return rr, nil
}

func parseQuestion(m Message, t TLV) (dns.Question, error) {
	end := t.Offset + len(t.Data)
	if t.Offset < HeaderLen || end > len(m.Raw) {
		return dns.Question{}, ErrTruncated
	}
	name, off, err := dns.UnpackDomainName(m.Raw[:end], t.Offset)
	if err != nil {
		return dns.Question{}, ErrName
	}
	switch {
	case end-off < 4:
		return dns.Question{}, ErrLength
	case end-off > 4:
		return dns.Question{}, ErrTrailing
	}
	return dns.Question{Name: name, Qtype: binary.BigEndian.Uint16(m.Raw[off:]), Qclass: binary.BigEndian.Uint16(m.Raw[off+2:])}, nil
}
