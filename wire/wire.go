// Package wire holds the parts of RFC 8764 (DNS Long-Lived Queries) that the
// server plugin and the client share: the option's constants, how to find the
// LLQ options of a message, and how to write them. miekg/dns already packs and
// unpacks the option itself (dns.EDNS0_LLQ) but names none of its values.
package wire

import (
	"encoding/binary"
	"errors"

	"github.com/miekg/dns"
)

// Version is the only LLQ version there is.
const Version = 1

// OptionLen is the fixed length of the LLQ option data.
const OptionLen = 18

// LLQ opcodes (RFC 8764 section 3.2).
const (
	OpSetup   = 1
	OpRefresh = 2
	OpEvent   = 3
)

// LLQ error codes (RFC 8764 section 3.2).
const (
	NoError    = 0
	ServFull   = 1
	Static     = 2
	FormatErr  = 3
	NoSuchLLQ  = 4
	BadVers    = 5
	UnknownErr = 6
)

// RemoveTTL marks a removed record in an event.
const RemoveTTL = 0xFFFFFFFF

// ServiceLabel is prepended to a zone to find its LLQ server (RFC 8764 section 7).
const ServiceLabel = "_dns-llq._udp."

// DefaultPort is the port Apple's dnsextd used for LLQ (DNSEXTPort).
const DefaultPort = 5352

var errorNames = [...]string{"NO-ERROR", "SERV-FULL", "STATIC", "FORMAT-ERR", "NO-SUCH-LLQ", "BAD-VERS", "UNKNOWN-ERR"}

// ErrorName returns the RFC name of an LLQ error code.
func ErrorName(code uint16) string {
	if int(code) < len(errorNames) {
		return errorNames[code]
	}
	return "ERROR-" + itoa(code)
}

var opNames = [...]string{"", "SETUP", "REFRESH", "EVENT"}

// OpName returns the RFC name of an LLQ opcode.
func OpName(op uint16) string {
	if op > 0 && int(op) < len(opNames) {
		return opNames[op]
	}
	return "OPCODE-" + itoa(op)
}

func itoa(v uint16) string {
	var b [5]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// Options returns the LLQ options of m in the order they appear, or nil when
// m carries none.
func Options(m *dns.Msg) []*dns.EDNS0_LLQ {
	opt := m.IsEdns0()
	if opt == nil {
		return nil
	}
	var out []*dns.EDNS0_LLQ
	for _, o := range opt.Option {
		if l, ok := o.(*dns.EDNS0_LLQ); ok {
			out = append(out, l)
		}
	}
	return out
}

// NewOption returns an LLQ option with the given fields and version 1.
func NewOption(op, code uint16, id uint64, lease uint32) *dns.EDNS0_LLQ {
	return &dns.EDNS0_LLQ{Code: dns.EDNS0LLQ, Version: Version, Opcode: op, Error: code, Id: id, LeaseLife: lease}
}

// SetOptions replaces m's OPT record with one that carries exactly opts and
// advertises udpSize.
func SetOptions(m *dns.Msg, udpSize uint16, opts ...*dns.EDNS0_LLQ) {
	RemoveOPT(m)
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: udpSize}}
	for _, l := range opts {
		o.Option = append(o.Option, l)
	}
	m.Extra = append(m.Extra, o)
}

// RemoveOPT drops every OPT record from m's additional section.
func RemoveOPT(m *dns.Msg) {
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
}

// ErrBadLength reports an LLQ option whose length is not 18: miekg/dns rejects
// shorter ones on its own but silently accepts longer ones.
var ErrBadLength = errors.New("LLQ option length is not 18")

// CheckLengths walks the additional section of the raw message b and returns
// ErrBadLength when an LLQ option (code 1) in an OPT record is not exactly 18
// bytes long. It only looks at lengths: b must already have unpacked cleanly.
func CheckLengths(b []byte) error {
	off, ar, err := additional(b)
	if err != nil {
		return err
	}
	for range ar {
		var typ uint16
		var rdata []byte
		if typ, rdata, off, err = skipRR(b, off); err != nil {
			return err
		}
		if typ == dns.TypeOPT {
			if err := checkOptionLengths(rdata); err != nil {
				return err
			}
		}
	}
	return nil
}

// additional returns the offset of the additional section of the raw
// message b and its record count, having checked that every question and
// record before it fits in b.
func additional(b []byte) (off, count int, err error) {
	if len(b) < 12 {
		return 0, 0, dns.ErrShortRead
	}
	qd := int(binary.BigEndian.Uint16(b[4:]))
	rrs := int(binary.BigEndian.Uint16(b[6:])) + int(binary.BigEndian.Uint16(b[8:]))
	off = 12
	for range qd {
		if off, err = skipName(b, off); err != nil {
			return 0, 0, err
		}
		off += 4
	}
	for range rrs {
		if _, _, off, err = skipRR(b, off); err != nil {
			return 0, 0, err
		}
	}
	return off, int(binary.BigEndian.Uint16(b[10:])), nil
}

// skipRR returns the type and data of the record at off and the offset just
// past it.
func skipRR(b []byte, off int) (typ uint16, rdata []byte, next int, err error) {
	if off, err = skipName(b, off); err != nil {
		return 0, nil, 0, err
	}
	if off+10 > len(b) {
		return 0, nil, 0, dns.ErrShortRead
	}
	typ = binary.BigEndian.Uint16(b[off:])
	rdlen := int(binary.BigEndian.Uint16(b[off+8:]))
	off += 10
	if off+rdlen > len(b) {
		return 0, nil, 0, dns.ErrShortRead
	}
	return typ, b[off : off+rdlen], off + rdlen, nil
}

func checkOptionLengths(rdata []byte) error {
	for len(rdata) >= 4 {
		code := binary.BigEndian.Uint16(rdata)
		n := int(binary.BigEndian.Uint16(rdata[2:]))
		if code == dns.EDNS0LLQ && n != OptionLen {
			return ErrBadLength
		}
		if 4+n > len(rdata) {
			return dns.ErrShortRead
		}
		rdata = rdata[4+n:]
	}
	return nil
}

// EventAcks calls f with the message ID of the raw DNS response b and the
// LLQ ID of every event acknowledgement in it (an LLQ option with opcode
// OpEvent). It unpacks only the OPT record, with miekg/dns: an ack is
// the one message a server receives for every event it sends, and the
// question it echoes needs no decoding. A message that is no standard
// response, or does not parse, yields no acks.
func EventAcks(b []byte, f func(msgID uint16, llqID uint64)) error {
	if len(b) < 12 {
		return dns.ErrShortRead
	}
	if b[2]&0x80 == 0 || (b[2]>>3)&0xF != dns.OpcodeQuery {
		return nil
	}
	off, ar, err := additional(b)
	if err != nil {
		return err
	}
	var found []uint64
	for range ar {
		var rr dns.RR
		if rr, off, err = dns.UnpackRR(b, off); err != nil {
			return err
		}
		if opt, ok := rr.(*dns.OPT); ok {
			for _, o := range opt.Option {
				if l, ok := o.(*dns.EDNS0_LLQ); ok && l.Opcode == OpEvent {
					found = append(found, l.Id)
				}
			}
		}
	}
	// Only a message that parsed to its end counts.
	for _, id := range found {
		f(binary.BigEndian.Uint16(b), id)
	}
	return nil
}

// skipName returns the offset just past the (possibly compressed) name at off.
func skipName(b []byte, off int) (int, error) {
	for {
		if off >= len(b) {
			return 0, dns.ErrShortRead
		}
		c := int(b[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				return off + 1, nil
			}
			off += 1 + c
		case 0xC0:
			return off + 2, nil
		default:
			return 0, dns.ErrRdata
		}
	}
}

// RecordKey returns the identity of rr as LLQ answer sets see it: the record
// in wire form with its TTL zeroed and its owner name lower-cased, so that a
// TTL-only change or a change of case is no change at all. Server and client
// both key their answer sets by it. buf is scratch space that may be reused
// between calls.
func RecordKey(rr dns.RR, buf []byte) (string, []byte) {
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
