package dso

import (
	"encoding/binary"
	"errors"

	"github.com/miekg/dns"
)

// ErrFull reports a record that does not fit in the message's size limit.
// The message is left as it was before the call: send it and start another.
var ErrFull = errors.New("dso: message full")

// Builder writes DSO messages into a buffer it reuses from message to
// message, with room for the 2-byte TCP length prefix in front, so that a
// message is written to a connection (TLS included) in one Write and built
// without allocating once the buffer has grown. The zero value is ready to
// use; a Builder is not safe for concurrent use.
//
// A message is Start, then TLVs (the first is the primary TLV), then Message
// or Frame. Errors leave the message as it was before the failing call.
type Builder struct {
	// Limit caps the message length (prefix excluded) for AddRecord; zero
	// means MaxPushLen.
	Limit int

	buf  []byte // length prefix, then the message
	tlv  int    // offset in buf of the open TLV's header, or 0 for none
	n    int    // records in the open TLV
	comp map[string]int
	wrap privateHeader
	bare dns.RR_Header // a collective remove, packed without RDATA
}

// NewBuilder returns a Builder that writes into buf's storage.
func NewBuilder(buf []byte) *Builder { return &Builder{buf: buf[:0]} }

// Start begins a new message with the given MESSAGE ID, QR bit and RCODE
// (its low four bits). IDs: non-zero for a request and its response, zero
// for a unidirectional message.
func (b *Builder) Start(id uint16, response bool, rcode int) {
	b.buf = append(b.buf[:0], 0, 0, // length prefix, set by Frame
		byte(id>>8), byte(id), OpcodeDSO<<3, byte(rcode&0xF),
		0, 0, 0, 0, 0, 0, 0, 0)
	if response {
		b.buf[4] |= 0x80
	}
	b.tlv, b.n = 0, 0
	clear(b.comp)
}

// Message closes the open TLV and returns the message. It aliases the
// Builder's buffer and is valid until the next Start.
func (b *Builder) Message() []byte { b.closeTLV(); return b.buf[2:] }

// Frame is Message with the 2-byte TCP length prefix in front.
func (b *Builder) Frame() []byte {
	b.closeTLV()
	binary.BigEndian.PutUint16(b.buf, uint16(len(b.buf)-2))
	return b.buf
}

// Len is the length of the message so far, prefix excluded.
func (b *Builder) Len() int { return len(b.buf) - 2 }

// TLV appends a TLV with the given type and data.
func (b *Builder) TLV(typ uint16, data []byte) {
	b.OpenTLV(typ)
	b.buf = append(b.buf, data...)
}

// OpenTLV starts a TLV whose data the following calls append (AddRecord, or
// anything appended to the message by hand); the next TLV, Message or Frame
// closes it and writes its DSO-LENGTH.
func (b *Builder) OpenTLV(typ uint16) {
	b.closeTLV()
	b.tlv, b.n = len(b.buf), 0
	b.buf = append(b.buf, byte(typ>>8), byte(typ), 0, 0)
}

func (b *Builder) closeTLV() {
	if b.tlv == 0 {
		return
	}
	binary.BigEndian.PutUint16(b.buf[b.tlv+2:], uint16(len(b.buf)-b.tlv-TLVHeaderLen))
	b.tlv = 0
}

// Keepalive appends a Keepalive TLV (RFC 8490 section 7.1).
func (b *Builder) Keepalive(k Keepalive) {
	b.OpenTLV(TypeKeepalive)
	b.buf = binary.BigEndian.AppendUint32(b.buf, k.Inactivity)
	b.buf = binary.BigEndian.AppendUint32(b.buf, k.Interval)
}

// RetryDelay appends a Retry Delay TLV of ms milliseconds (RFC 8490 section 7.2).
func (b *Builder) RetryDelay(ms uint32) {
	b.OpenTLV(TypeRetryDelay)
	b.buf = binary.BigEndian.AppendUint32(b.buf, ms)
}

// Padding appends an Encryption Padding TLV of n zero bytes (RFC 8490 section 7.3).
func (b *Builder) Padding(n int) {
	b.OpenTLV(TypePadding)
	for range n {
		b.buf = append(b.buf, 0)
	}
}

// Subscribe appends a SUBSCRIBE TLV for q (RFC 8765 section 6.2), the name
// uncompressed.
func (b *Builder) Subscribe(q dns.Question) error { return b.question(TypeSubscribe, q) }

// Unsubscribe appends an UNSUBSCRIBE TLV naming the SUBSCRIBE message ID id
// (RFC 8765 section 6.4).
func (b *Builder) Unsubscribe(id uint16) {
	b.OpenTLV(TypeUnsubscribe)
	b.buf = append(b.buf, byte(id>>8), byte(id))
}

// UnsubscribeQuestion appends an UNSUBSCRIBE TLV in the form of early drafts
// that Apple's client still sends: NAME, TYPE and CLASS instead of an ID.
func (b *Builder) UnsubscribeQuestion(q dns.Question) error { return b.question(TypeUnsubscribe, q) }

func (b *Builder) question(typ uint16, q dns.Question) error {
	mark, tlv, n := len(b.buf), b.tlv, b.n
	b.OpenTLV(typ)
	off := len(b.buf)
	b.grow(off + 255 + 4)
	end, err := dns.PackDomainName(q.Name, b.buf[:cap(b.buf)], off, nil, false)
	if err != nil || end == off { // "" packs to nothing: not a name
		b.buf, b.tlv, b.n = b.buf[:mark], tlv, n
		return ErrName
	}
	b.buf = b.buf[:end]
	b.buf = binary.BigEndian.AppendUint16(b.buf, q.Qtype)
	b.buf = binary.BigEndian.AppendUint16(b.buf, q.Qclass)
	return nil
}

// Reconfirm appends a RECONFIRM TLV for rr (RFC 8765 section 6.5): its NAME,
// TYPE, CLASS and RDATA, with no TTL or RDLENGTH. rr is not modified.
func (b *Builder) Reconfirm(rr dns.RR) error {
	h := rr.Header()
	if h.Rrtype == dns.TypeANY || h.Class == dns.ClassANY {
		return ErrAnyInAdd
	}
	mark, tlv, n := len(b.buf), b.tlv, b.n
	b.OpenTLV(TypeReconfirm)
	end, err := b.pack(rr, false, rr.Header().Ttl)
	if err != nil {
		b.buf, b.tlv, b.n = b.buf[:mark], tlv, n
		return err
	}
	// Drop the TTL and RDLENGTH from the packed record: shift RDATA over them.
	b.buf = b.buf[:end]
	rdata := end - int(b.wrap.hdr.Rdlength)
	copy(b.buf[rdata-6:], b.buf[rdata:end])
	b.buf = b.buf[:end-6]
	return nil
}

// StartPush starts a PUSH TLV (RFC 8765 section 6.3) for AddRecord to fill.
func (b *Builder) StartPush() { b.OpenTLV(TypePush) }

// Records is the number of records AddRecord put in the open TLV.
func (b *Builder) Records() int { return b.n }

// AddRecord appends rr to the open TLV, compressing its names against the
// names already in the message (offsets count from the message start, as
// RFC 8765 section 6.3 asks). It returns ErrFull, leaving the message as it
// was, when the message would outgrow Limit. rr is not modified, so records
// shared with other goroutines may be passed as they are.
//
// The TTL says what the record means: 0 to MaxAddTTL adds it,
// RemoveRecordTTL removes it, and RemoveCollectiveTTL on a record without
// RDATA (see CollectiveRemove) removes many.
func (b *Builder) AddRecord(rr dns.RR) error { return b.AddRecordTTL(rr, rr.Header().Ttl) }

// AddRecordTTL is AddRecord with ttl in place of rr's own TTL: a single
// remove (RemoveRecordTTL) or an add with another TTL, written without
// copying a record that a backend may share with other readers.
func (b *Builder) AddRecordTTL(rr dns.RR, ttl uint32) error {
	if b.comp == nil {
		b.comp = make(map[string]int)
	}
	mark := len(b.buf)
	end, err := b.pack(rr, true, ttl)
	limit := b.Limit
	if limit == 0 {
		limit = MaxPushLen
	}
	if err == nil && end-2 > limit {
		err = ErrFull
	}
	if err != nil {
		b.buf = b.buf[:mark]
		b.forget(mark)
		return err
	}
	b.buf = b.buf[:end]
	b.n++
	return nil
}

// forget drops the compression targets at or after offset mark of b.buf:
// names of a record that was packed and then taken back.
func (b *Builder) forget(mark int) {
	for name, off := range b.comp {
		if off >= mark-2 {
			delete(b.comp, name)
		}
	}
}

// pack packs rr with the given TTL at the end of the buffer with miekg/dns
// and returns the end offset in b.buf; it does not extend b.buf.
func (b *Builder) pack(rr dns.RR, compress bool, ttl uint32) (int, error) {
	if compress && ttl == RemoveCollectiveTTL {
		// A collective remove has no RDATA whatever its type: miekg/dns
		// would pack the empty fields of an MX, say, as bytes.
		b.bare = *rr.Header()
		rr = &b.bare
	}
	b.wrap.RR, b.wrap.hdr = rr, *rr.Header()
	b.wrap.hdr.Ttl = ttl
	defer func() { b.wrap.RR = nil }()
	var comp map[string]int
	if compress {
		comp = b.comp
	}
	off := len(b.buf)
	for try := 0; ; try++ {
		// The message starts after the length prefix: compression offsets
		// count from there.
		end, err := dns.PackRR(&b.wrap, b.buf[2:cap(b.buf)], off-2, comp, compress)
		if err == nil {
			return end + 2, nil
		}
		b.forget(off)
		if try > 0 || cap(b.buf) >= off+dns.Len(rr) {
			return 0, ErrRecord
		}
		b.grow(off + dns.Len(rr))
	}
}

// grow makes room for n bytes in b.buf without changing its length.
func (b *Builder) grow(n int) {
	if n > cap(b.buf) {
		nb := make([]byte, len(b.buf), max(n, 2*cap(b.buf), 512))
		copy(nb, b.buf)
		b.buf = nb
	}
}

// privateHeader packs a record through its own copy of the record's header:
// dns.PackRR stores the RDATA length in the header it packs, and the records
// llq pushes belong to backends whose readers on other goroutines would race
// with that write. Embedding the interface lends privateHeader the record's
// unexported packing methods; only Header is its own.
type privateHeader struct {
	dns.RR
	hdr dns.RR_Header
}

func (p *privateHeader) Header() *dns.RR_Header { return &p.hdr }

// CollectiveRemove returns the PUSH record that removes every record of
// rrtype and class at name (RFC 8765 section 6.3.1): TTL RemoveCollectiveTTL,
// no RDATA. rrtype dns.TypeANY removes every type of the class; class
// dns.ClassANY removes everything at the name, and rrtype is then ignored.
func CollectiveRemove(name string, rrtype, class uint16) dns.RR {
	return &dns.RR_Header{Name: name, Rrtype: rrtype, Class: class, Ttl: RemoveCollectiveTTL}
}
