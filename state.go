package llq

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// The state file keeps the LLQ table across a restart or a crash (the
// `state` option). Its layout, version 2:
//
//	magic "LLQSTATE", version uint16
//	saved      uvarint, Unix milliseconds when the snapshot was taken
//	topics     uvarint count, then per topic:
//	  message  uvarint length + a packed DNS message: the question and, as
//	           answers, what its subscribers were last told
//	  llqs     uvarint count, then per LLQ:
//	    id       8 bytes
//	    addr     1 byte length (4 or 16; 17 = 16 and a zone follows as a
//	             uvarint length + text), then the address
//	    port     2 bytes: where its events go
//	    lease    uvarint seconds left at saved
//	    udp size 2 bytes
//	    proven   1 byte: 1 when its event port had proven it wants events
//	    unsettled uvarint length + a packed DNS message whose answers are the
//	             records of its unacknowledged events (0: none)
//	mac        HMAC-SHA256 of everything before it, with the key file's key
//
// Integers are big-endian. Messages are compressed by miekg/dns, so a topic's
// name is written once however many answers it has, and an LLQ costs about 20
// bytes. The MAC detects truncation and corruption as well as tampering:
// nothing is believed before it checks out.
const (
	stateMagic   = "LLQSTATE"
	stateVersion = 2
	stateMACLen  = sha256.Size
	// stateMaxSize bounds what a load reads into memory before the MAC can
	// vouch for it. 100,000 LLQs take about 2 MB.
	stateMaxSize = 256 << 20
)

// snapshot is the LLQ table as the state file holds it: plain data, made
// under the engine lock and encoded outside it.
type snapshot struct {
	saved  time.Time
	topics []savedTopic
}

type savedTopic struct {
	q dns.Question
	// answers is what every LLQ of the topic was last told, except for the
	// records each lists as unsettled.
	answers []dns.RR
	llqs    []savedLLQ
}

type savedLLQ struct {
	id        uint64
	client    netip.AddrPort // where its events go
	remaining uint32         // seconds of lease left at snapshot.saved
	udpSize   uint16
	proven    bool // its event port had shown it wants events (see llqSub.proven)
	// unsettled holds the records of events the client has not yet
	// acknowledged: it may or may not know their truth, so a restore states
	// it again.
	unsettled []dns.RR
}

func (s *snapshot) llqs() int {
	n := 0
	for i := range s.topics {
		n += len(s.topics[i].llqs)
	}
	return n
}

var errStateMAC = errors.New("MAC does not match: truncated, corrupt, or not written with this key")

// encodeState returns the file's bytes for snap, authenticated with key.
func encodeState(snap *snapshot, key []byte) ([]byte, error) {
	b := make([]byte, 0, 64+len(snap.topics)*64)
	b = append(b, stateMagic...)
	b = binary.BigEndian.AppendUint16(b, stateVersion)
	b = binary.AppendUvarint(b, uint64(snap.saved.UnixMilli()))
	b = binary.AppendUvarint(b, uint64(len(snap.topics)))
	var scratch []byte
	for i := range snap.topics {
		t := &snap.topics[i]
		m := &dns.Msg{Compress: true, Question: []dns.Question{t.q}, Answer: t.answers}
		packed, err := m.PackBuffer(scratch)
		if err != nil {
			return nil, fmt.Errorf("topic %s: %v", t.q.Name, err)
		}
		scratch = packed
		b = binary.AppendUvarint(b, uint64(len(packed)))
		b = append(b, packed...)
		b = binary.AppendUvarint(b, uint64(len(t.llqs)))
		for j := range t.llqs {
			l := &t.llqs[j]
			b = binary.BigEndian.AppendUint64(b, l.id)
			b = appendAddr(b, l.client.Addr())
			b = binary.BigEndian.AppendUint16(b, l.client.Port())
			b = binary.AppendUvarint(b, uint64(l.remaining))
			b = binary.BigEndian.AppendUint16(b, l.udpSize)
			if l.proven {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
			if len(l.unsettled) == 0 {
				b = append(b, 0)
				continue
			}
			m := &dns.Msg{Compress: true, Answer: l.unsettled}
			packed, err := m.PackBuffer(scratch)
			if err != nil {
				return nil, fmt.Errorf("LLQ %x: %v", l.id, err)
			}
			scratch = packed
			b = binary.AppendUvarint(b, uint64(len(packed)))
			b = append(b, packed...)
		}
	}
	return append(b, stateMAC(key, b)...), nil
}

func stateMAC(key, b []byte) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write(b)
	return mac.Sum(nil)
}

func appendAddr(b []byte, a netip.Addr) []byte {
	switch {
	case a.Is4():
		v := a.As4()
		return append(append(b, 4), v[:]...)
	case a.Zone() == "":
		v := a.As16()
		return append(append(b, 16), v[:]...)
	default:
		v := a.As16()
		b = append(append(b, 17), v[:]...)
		b = binary.AppendUvarint(b, uint64(len(a.Zone())))
		return append(b, a.Zone()...)
	}
}

// decodeState checks data's magic, version and MAC and then decodes and
// validates all of it. It returns a snapshot only when every part is sound,
// so that a caller never applies half a file.
func decodeState(data, key []byte) (*snapshot, error) {
	head := len(stateMagic) + 2
	if len(data) < head || string(data[:len(stateMagic)]) != stateMagic {
		return nil, errors.New("not an llq state file")
	}
	if v := binary.BigEndian.Uint16(data[len(stateMagic):]); v != stateVersion {
		return nil, fmt.Errorf("version %d, this llq reads version %d", v, stateVersion)
	}
	if len(data) < head+stateMACLen {
		return nil, errStateMAC
	}
	body, sum := data[:len(data)-stateMACLen], data[len(data)-stateMACLen:]
	if !hmac.Equal(stateMAC(key, body), sum) {
		return nil, errStateMAC
	}
	return decodeBody(body[head:])
}

// decodeBody parses what follows the version. It is separate from the MAC
// check so that the fuzzer reaches it.
func decodeBody(b []byte) (*snapshot, error) {
	r := stateReader{b: b}
	ms := r.uvarint()
	if ms > 1<<53 { // years beyond any clock; keeps time.UnixMilli sane
		r.fail("bad save time")
	}
	snap := &snapshot{saved: time.UnixMilli(int64(ms))}
	n := r.count(3) // a topic takes at least 3 bytes
	snap.topics = make([]savedTopic, 0, n)
	ids := make(map[uint64]struct{})
	// A question may come more than once: topics are kept per block and,
	// where answers depend on it, per client (see topicKey).
	for range n {
		var t savedTopic
		m := r.msg()
		if r.err != nil {
			break
		}
		if m == nil || len(m.Question) != 1 {
			r.fail("a topic without exactly one question")
			break
		}
		t.q = m.Question[0]
		if !servable(t.q) {
			// No setup could have made it (see llq_protocol.go).
			r.fail("topic %s: class %d type %d cannot be subscribed to", t.q.Name, t.q.Qclass, t.q.Qtype)
			break
		}
		t.answers = m.Answer
		if !plainAnswers(t.answers) {
			r.fail("topic %s: an OPT record among its answers", t.q.Name)
			break
		}
		nl := r.count(14) // an LLQ takes at least 14 bytes
		t.llqs = make([]savedLLQ, 0, nl)
		for range nl {
			l := r.llq()
			if r.err != nil {
				break
			}
			if _, dup := ids[l.id]; dup {
				r.fail("LLQ %x twice", l.id)
				break
			}
			ids[l.id] = struct{}{}
			t.llqs = append(t.llqs, l)
		}
		if r.err != nil {
			break
		}
		snap.topics = append(snap.topics, t)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d bytes after the last topic", len(r.b))
	}
	if r.err != nil {
		return nil, r.err
	}
	return snap, nil
}

func plainAnswers(rrs []dns.RR) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			return false
		}
	}
	return true
}

// stateReader reads the body; the first error sticks and every read after
// it returns zero values.
type stateReader struct {
	b   []byte
	err error
}

func (r *stateReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
	r.b = nil
}

func (r *stateReader) take(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.b) {
		r.fail("truncated")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *stateReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a count of items of at least min bytes each, refusing one the
// rest of the body cannot hold, so that a lying count allocates nothing.
func (r *stateReader) count(min int) int {
	n := r.uvarint()
	if n > uint64(len(r.b)/min) {
		r.fail("count %d exceeds what the file holds", n)
		return 0
	}
	return int(n)
}

// msg reads a length-prefixed packed DNS message; length 0 is nil.
func (r *stateReader) msg() *dns.Msg {
	n := r.uvarint()
	if n == 0 || r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail("truncated")
		return nil
	}
	b := r.take(int(n))
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		r.fail("bad message: %v", err)
		return nil
	}
	return m
}

func (r *stateReader) llq() savedLLQ {
	var l savedLLQ
	if b := r.take(8); b != nil {
		l.id = binary.BigEndian.Uint64(b)
	}
	addr := r.addr()
	var port uint16
	if b := r.take(2); b != nil {
		port = binary.BigEndian.Uint16(b)
	}
	lease := r.uvarint()
	if b := r.take(2); b != nil {
		l.udpSize = binary.BigEndian.Uint16(b)
	}
	var proven byte
	if b := r.take(1); b != nil {
		proven = b[0]
	}
	m := r.msg()
	if r.err != nil {
		return l
	}
	switch {
	case l.id == 0:
		r.fail("LLQ ID 0")
	case !addr.IsValid() || addr.IsUnspecified() || addr.IsMulticast() || port == 0:
		r.fail("LLQ %x: no unicast address to send events to", l.id)
	case lease > 1<<32-1:
		r.fail("LLQ %x: lease out of range", l.id)
	case l.udpSize < dns.MinMsgSize:
		r.fail("LLQ %x: UDP size %d below %d", l.id, l.udpSize, dns.MinMsgSize)
	case proven > 1:
		r.fail("LLQ %x: bad proven flag %d", l.id, proven)
	case m != nil && (len(m.Question) != 0 || len(m.Answer) == 0 || !plainAnswers(m.Answer)):
		r.fail("LLQ %x: bad unsettled records", l.id)
	}
	l.client = netip.AddrPortFrom(addr, port)
	l.remaining = uint32(lease)
	l.proven = proven == 1
	if m != nil {
		l.unsettled = m.Answer
	}
	return l
}

func (r *stateReader) addr() netip.Addr {
	b := r.take(1)
	if b == nil {
		return netip.Addr{}
	}
	switch b[0] {
	case 4:
		if v := r.take(4); v != nil {
			return netip.AddrFrom4([4]byte(v))
		}
	case 16, 17:
		v := r.take(16)
		if v == nil {
			return netip.Addr{}
		}
		a := netip.AddrFrom16([16]byte(v))
		if b[0] == 16 {
			return a
		}
		n := r.uvarint()
		if n == 0 || n > 64 || n > uint64(len(r.b)) {
			r.fail("bad address zone")
			return netip.Addr{}
		}
		zone := string(r.take(int(n)))
		if a.Is4In6() || strings.ContainsAny(zone, "%\x00") {
			r.fail("bad address zone")
			return netip.Addr{}
		}
		return a.WithZone(zone)
	default:
		r.fail("bad address length %d", b[0])
	}
	return netip.Addr{}
}
