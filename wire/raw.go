package wire

import (
	"encoding/binary"
	"errors"

	"github.com/miekg/dns"
)

// The functions in this file read raw messages without unpacking them. They
// serve the two messages an LLQ sends once per event: the event itself, read
// by the client, and its acknowledgement, read by the server. A change fanned
// out to a hundred thousand LLQs is that many of each, and unpacking them
// whole (a dns.Msg, its slices, a string per name, an object per record and
// option) was a large share of both ends' CPU and garbage. Each is fuzzed
// against miekg/dns's full unpack, which stays the reference: every other
// message is unpacked with it.

// ErrBadLength reports an LLQ option whose length is not 18: miekg/dns rejects
// shorter ones on its own but silently accepts longer ones.
var ErrBadLength = errors.New("LLQ option length is not 18")

// errOption is a malformed option list, as miekg/dns rejects it.
var errOption = errors.New("dns: overflow unpacking opt")

// CheckLengths walks the additional section of the raw message b and returns
// ErrBadLength when an LLQ option (code 1) in an OPT record is not exactly 18
// bytes long. It only looks at lengths: b must already have unpacked cleanly.
// Unlike miekg/dns it takes header counts that overstate for an error.
func CheckLengths(b []byte) error {
	off, ar, err := additional(b)
	if err != nil {
		return err
	}
	for range ar {
		var typ uint16
		var rdata []byte
		if typ, _, rdata, off, err = skipRR(b, off); err != nil {
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

func checkOptionLengths(rdata []byte) error {
	return options(rdata, func(code uint16, data []byte) error {
		if code == dns.EDNS0LLQ && len(data) != OptionLen {
			return ErrBadLength
		}
		return nil
	})
}

// options calls f with the code and data of every option in the data of an
// OPT record, and fails, as miekg/dns does, on one that overruns it.
func options(rdata []byte, f func(code uint16, data []byte) error) error {
	for len(rdata) > 0 {
		if len(rdata) < 4 {
			return errOption
		}
		n := int(binary.BigEndian.Uint16(rdata[2:]))
		if 4+n > len(rdata) {
			return errOption
		}
		if err := f(binary.BigEndian.Uint16(rdata), rdata[4:4+n]); err != nil {
			return err
		}
		rdata = rdata[4+n:]
	}
	return nil
}

// Scan walks the raw message b. It calls answer for every record of the
// answer section, with its type, TTL and data, and llq for every LLQ option
// of an OPT record in the additional section, read as miekg/dns reads it
// (the first 18 bytes of an option at least that long). It returns an error
// when b does not parse to the end of its additional section; the calls made
// before then are void.
func Scan(b []byte, answer func(typ uint16, ttl uint32, rdata []byte), llq func(o dns.EDNS0_LLQ)) error {
	if len(b) < 12 {
		return dns.ErrShortRead
	}
	off, err := skipQuestions(b)
	if err != nil {
		return err
	}
	counts := [3]int{int(binary.BigEndian.Uint16(b[6:])), int(binary.BigEndian.Uint16(b[8:])), int(binary.BigEndian.Uint16(b[10:]))}
	for section, n := range counts {
		for range n {
			if off == len(b) {
				return nil // the counts overstate, which miekg/dns forgives
			}
			var typ uint16
			var ttl uint32
			var rdata []byte
			if typ, ttl, rdata, off, err = skipRR(b, off); err != nil {
				return err
			}
			switch {
			case section == 0 && answer != nil:
				answer(typ, ttl, rdata)
			case section == 2 && typ == dns.TypeOPT:
				if err := llqOptions(rdata, llq); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// llqOptions calls f for every LLQ option in the data of an OPT record.
func llqOptions(rdata []byte, f func(o dns.EDNS0_LLQ)) error {
	return options(rdata, func(code uint16, o []byte) error {
		if code != dns.EDNS0LLQ {
			return nil
		}
		if len(o) < OptionLen {
			return dns.ErrBuf
		}
		if f != nil {
			f(dns.EDNS0_LLQ{
				Code:      dns.EDNS0LLQ,
				Version:   binary.BigEndian.Uint16(o),
				Opcode:    binary.BigEndian.Uint16(o[2:]),
				Error:     binary.BigEndian.Uint16(o[4:]),
				Id:        binary.BigEndian.Uint64(o[6:]),
				LeaseLife: binary.BigEndian.Uint32(o[14:]),
			})
		}
		return nil
	})
}

// EventAcks calls f with the message ID of the raw DNS response b and the
// LLQ ID of every event acknowledgement in it (an LLQ option with opcode
// OpEvent). A message that is no standard response, or does not parse,
// yields no acks.
func EventAcks(b []byte, f func(msgID uint16, llqID uint64)) error {
	if len(b) < 12 {
		return dns.ErrShortRead
	}
	if b[2]&0x80 == 0 || (b[2]>>3)&0xF != dns.OpcodeQuery {
		return nil
	}
	var room [4]uint64 // a client acks one question per message
	found := room[:0]
	err := Scan(b, nil, func(o dns.EDNS0_LLQ) {
		if o.Opcode == OpEvent {
			found = append(found, o.Id)
		}
	})
	if err != nil {
		return err
	}
	for _, id := range found {
		f(binary.BigEndian.Uint16(b), id)
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
	if off, err = skipQuestions(b); err != nil {
		return 0, 0, err
	}
	rrs := int(binary.BigEndian.Uint16(b[6:])) + int(binary.BigEndian.Uint16(b[8:]))
	for range rrs {
		if _, _, _, off, err = skipRR(b, off); err != nil {
			return 0, 0, err
		}
	}
	return off, int(binary.BigEndian.Uint16(b[10:])), nil
}

// skipQuestions returns the offset just past the question section of the
// raw message b, which is at least a header long. Like miekg/dns it takes a
// message that ends early, even inside a question after its name or type,
// as one whose counts overstate.
func skipQuestions(b []byte) (off int, err error) {
	off = 12
	for range int(binary.BigEndian.Uint16(b[4:])) {
		if off == len(b) {
			return off, nil
		}
		if off, err = skipName(b, off); err != nil {
			return 0, err
		}
		for range 2 { // type and class
			if off == len(b) {
				return off, nil
			}
			if off += 2; off > len(b) {
				return 0, dns.ErrShortRead
			}
		}
	}
	return off, nil
}

// skipRR returns the type, TTL and data of the record at off and the offset
// just past it.
func skipRR(b []byte, off int) (typ uint16, ttl uint32, rdata []byte, next int, err error) {
	if off, err = skipName(b, off); err != nil {
		return 0, 0, nil, 0, err
	}
	if off+10 > len(b) {
		return 0, 0, nil, 0, dns.ErrShortRead
	}
	typ = binary.BigEndian.Uint16(b[off:])
	ttl = binary.BigEndian.Uint32(b[off+4:])
	rdlen := int(binary.BigEndian.Uint16(b[off+8:]))
	off += 10
	if off+rdlen > len(b) {
		return 0, 0, nil, 0, dns.ErrShortRead
	}
	return typ, ttl, b[off : off+rdlen], off + rdlen, nil
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
