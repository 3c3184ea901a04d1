package dso

import "encoding/binary"

// Message is a DSO message checked by Parse. It aliases the bytes it was
// parsed from: copy what must outlive them.
type Message struct {
	// Raw is the whole message, header included. Compression pointers in
	// PUSH and RECONFIRM records are offsets into it.
	Raw []byte
	// ID is the MESSAGE ID: non-zero for a request and its response, zero
	// for a unidirectional message.
	ID uint16
	// Response is the QR bit.
	Response bool
	// Rcode is the header's 4-bit RCODE (DSOTYPENI, 11, fits in it).
	Rcode int
}

// TLV is one DSO TLV of a parsed message.
type TLV struct {
	Type uint16
	// Data is DSO-DATA, aliasing the message.
	Data []byte
	// Offset is where Data starts in the message, for records whose
	// compression pointers count from the message start.
	Offset int
}

// Parse checks b as a DSO message: a DNS header with opcode 6 and zero
// section counts, then TLVs that exactly fill the rest. It returns ErrNotDSO
// for any other opcode and an error matching ErrFormat for a malformed
// message. A request or unidirectional message (QR clear) must carry a
// primary TLV; a response may carry none. Parse does not look inside TLVs and
// never allocates.
func Parse(b []byte) (Message, error) {
	if len(b) < HeaderLen {
		return Message{}, ErrShort
	}
	if int(b[2]>>3&0xF) != OpcodeDSO {
		return Message{}, ErrNotDSO
	}
	m := Message{Raw: b, ID: binary.BigEndian.Uint16(b), Response: b[2]&0x80 != 0, Rcode: int(b[3] & 0xF)}
	// The AA, TC, RD, RA, Z, AD and CD bits are unused in DSO: senders
	// clear them and receivers ignore them (RFC 8490 section 5.4).
	if binary.BigEndian.Uint64(b[4:12]) != 0 {
		return m, ErrCounts
	}
	n := 0
	for off := HeaderLen; off < len(b); n++ {
		if len(b)-off < TLVHeaderLen {
			return m, ErrTruncated
		}
		l := int(binary.BigEndian.Uint16(b[off+2:]))
		off += TLVHeaderLen + l
		if off > len(b) {
			return m, ErrTruncated
		}
	}
	if n == 0 && !m.Response {
		return m, ErrNoPrimary
	}
	return m, nil
}

// Unidirectional reports a message that gets no response: MESSAGE ID 0.
func (m Message) Unidirectional() bool { return m.ID == 0 }

// Primary returns the first TLV: the primary TLV of a request or
// unidirectional message, or of a response whose first TLV has the
// request's type (a response need not carry one).
func (m Message) Primary() (TLV, bool) {
	it := m.TLVs()
	return it.Next()
}

// TLVs returns an iterator over all of m's TLVs in order, primary first.
func (m Message) TLVs() TLVIter { return TLVIter{raw: m.Raw, off: HeaderLen} }

// TLVIter walks the TLVs of a message. The zero value yields nothing.
type TLVIter struct {
	raw []byte
	off int
}

// Next returns the next TLV, or false after the last one (or at a TLV that
// overruns the message, which Parse has already rejected).
func (it *TLVIter) Next() (TLV, bool) {
	if it.off+TLVHeaderLen > len(it.raw) {
		return TLV{}, false
	}
	typ := binary.BigEndian.Uint16(it.raw[it.off:])
	l := int(binary.BigEndian.Uint16(it.raw[it.off+2:]))
	start := it.off + TLVHeaderLen
	if start+l > len(it.raw) {
		it.off = len(it.raw)
		return TLV{}, false
	}
	it.off = start + l
	return TLV{Type: typ, Data: it.raw[start : start+l : start+l], Offset: start}, true
}
