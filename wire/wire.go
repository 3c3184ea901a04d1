// Package wire holds the parts of RFC 8764 (DNS Long-Lived Queries) that the
// server plugin and the client share: the option's constants, how to find the
// LLQ options of a message, and how to write them. miekg/dns already packs and
// unpacks the option itself (dns.EDNS0_LLQ) but names none of its values.
package wire

import (
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
