package dso

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/miekg/dns"
)

// rawTLV is a TLV as walkIndependently sees it.
type rawTLV struct {
	typ  uint16
	data []byte
}

// walkIndependently decodes a DSO message a second way, with a reader
// instead of offsets, to check Parse and TLVIter against.
func walkIndependently(b []byte) ([]rawTLV, bool) {
	r := bytes.NewReader(b)
	var h struct{ ID, Flags, QD, AN, NS, AR uint16 }
	if binary.Read(r, binary.BigEndian, &h) != nil {
		return nil, false
	}
	if (h.Flags>>11)&0xF != 6 || h.QD|h.AN|h.NS|h.AR != 0 {
		return nil, false
	}
	var out []rawTLV
	for r.Len() > 0 {
		var th struct{ Type, Len uint16 }
		if binary.Read(r, binary.BigEndian, &th) != nil {
			return nil, false
		}
		data := make([]byte, th.Len)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, false
		}
		out = append(out, rawTLV{th.Type, data})
	}
	if len(out) == 0 && h.Flags&0x8000 == 0 {
		return nil, false
	}
	return out, true
}

func seedMessages(tb testing.TB) [][]byte {
	var out [][]byte
	var b Builder
	add := func() { out = append(out, append([]byte(nil), b.Message()...)) }
	b.Start(1, false, 0)
	b.Keepalive(Keepalive{15000, 3600000})
	add()
	b.Start(1, true, 0)
	b.Keepalive(Keepalive{Infinite, 3600000})
	b.Padding(3)
	add()
	b.Start(0, false, dns.RcodeServerFailure)
	b.RetryDelay(60000)
	add()
	b.Start(2, false, 0)
	_ = b.Subscribe(dns.Question{Name: "_ipp._tcp.example.org.", Qtype: dns.TypePTR, Qclass: dns.ClassINET})
	add()
	b.Start(2, true, RcodeDSOTypeNI)
	add()
	b.Start(0, false, 0)
	b.Unsubscribe(2)
	add()
	b.Start(0, false, 0)
	_ = b.UnsubscribeQuestion(dns.Question{Name: "_ipp._tcp.example.org.", Qtype: dns.TypePTR, Qclass: dns.ClassINET})
	add()
	b.Start(0, false, 0)
	_ = b.Reconfirm(rrs(tb, "a._ipp._tcp.example.org. 0 IN SRV 0 0 631 host.example.org.")[0])
	add()
	pushOf(tb, &b, append(rrs(tb,
		"_ipp._tcp.example.org. 120 IN PTR a._ipp._tcp.example.org.",
		"a._ipp._tcp.example.org. 120 IN TXT \"rp=q\"",
		"host.example.org. 4294967295 IN A 192.0.2.1"),
		CollectiveRemove("old.example.org.", dns.TypeANY, dns.ClassINET)))
	add()
	return out
}

// FuzzParse feeds arbitrary bytes to Parse and to every TLV decoder: none
// may panic, Parse must agree with an independent decode, and every TLV it
// decodes must build back into bytes that decode the same.
func FuzzParse(f *testing.F) {
	for _, m := range seedMessages(f) {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		want, ok := walkIndependently(b)
		if (err == nil) != ok {
			t.Fatalf("Parse error %v, independent decode ok=%v", err, ok)
		}
		if err != nil {
			if err != ErrNotDSO && !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v is neither ErrNotDSO nor a format error", err)
			}
			return
		}
		var got []rawTLV
		for it := m.TLVs(); ; {
			tlv, ok := it.Next()
			if !ok {
				break
			}
			if !bytes.Equal(b[tlv.Offset:tlv.Offset+len(tlv.Data)], tlv.Data) {
				t.Fatalf("TLV offset %d does not locate its data", tlv.Offset)
			}
			got = append(got, rawTLV{tlv.Type, tlv.Data})
			checkTLV(t, m, tlv)
		}
		if len(got) != len(want) {
			t.Fatalf("%d TLVs, independent decode %d", len(got), len(want))
		}
		for i := range got {
			if got[i].typ != want[i].typ || !bytes.Equal(got[i].data, want[i].data) {
				t.Fatalf("TLV %d: %x % x, independent decode %x % x", i, got[i].typ, got[i].data, want[i].typ, want[i].data)
			}
		}
	})
}

// checkTLV decodes tlv by its type and, when that succeeds, builds it again
// and decodes the result: it must say the same thing.
func checkTLV(t *testing.T, m Message, tlv TLV) {
	var b Builder
	b.Start(0, false, 0)
	switch tlv.Type {
	case TypeKeepalive:
		k, err := ParseKeepalive(tlv)
		if err != nil {
			return
		}
		b.Keepalive(k)
		if k2, err := ParseKeepalive(primary(t, &b)); err != nil || k2 != k {
			t.Fatalf("keepalive %+v came back %+v %v", k, k2, err)
		}
	case TypeRetryDelay:
		d, err := ParseRetryDelay(tlv)
		if err != nil {
			return
		}
		b.RetryDelay(d)
		if d2, err := ParseRetryDelay(primary(t, &b)); err != nil || d2 != d {
			t.Fatalf("retry delay %d came back %d %v", d, d2, err)
		}
	case TypeSubscribe, TypeUnsubscribe:
		var q dns.Question
		if tlv.Type == TypeSubscribe {
			var err error
			if q, err = ParseSubscribe(m, tlv); err != nil {
				return
			}
		} else {
			u, err := ParseUnsubscribe(m, tlv)
			if err != nil || u.Question == nil {
				return
			}
			q = *u.Question
		}
		if err := b.Subscribe(q); err != nil {
			t.Fatalf("Subscribe(%+v) of a parsed question: %v", q, err)
		}
		m2, _ := Parse(b.Message())
		if q2, err := ParseSubscribe(m2, primary(t, &b)); err != nil || !sameQuestion(q, q2) {
			t.Fatalf("question %+v came back %+v %v", q, q2, err)
		}
	case TypeReconfirm:
		rr, err := ParseReconfirm(m, tlv)
		if err != nil || b.Reconfirm(rr) != nil {
			return // miekg/dns unpacks some RDATA it will not pack again
		}
		m2, _ := Parse(b.Message())
		// Compared on the wire: miekg/dns unpacks some RDATA (a URI target
		// holding a backslash) to a string that packs to other bytes, so
		// the parsed record is no fixed point, while the bytes sent are.
		if rr2, err := ParseReconfirm(m2, primary(t, &b)); err != nil || !sameWire(rr, rr2) {
			t.Fatalf("reconfirm %v came back %v %v", rr, rr2, err)
		}
	case TypePush:
		in, err := ParsePush(m, tlv, nil)
		if err != nil || len(in) == 0 {
			return
		}
		b.StartPush()
		for _, rr := range in {
			if !miekgRoundTrips(rr) {
				return // miekg/dns unpacks some short RDATA it cannot pack back
			}
			if b.AddRecord(rr) != nil {
				return
			}
		}
		m2, err := Parse(b.Message())
		if err != nil {
			t.Fatalf("built PUSH does not parse: %v", err)
		}
		p, _ := m2.Primary()
		out, err := ParsePush(m2, p, nil)
		if err != nil || len(out) != len(in) {
			t.Fatalf("PUSH of %d records came back %d, %v", len(in), len(out), err)
		}
		for i := range in {
			hi, ho := in[i].Header(), out[i].Header()
			// RDLENGTH is not compared: miekg/dns unpacks some short RDATA
			// leniently and packs it again in full.
			if !sameName(hi.Name, ho.Name) || hi.Rrtype != ho.Rrtype || hi.Class != ho.Class || hi.Ttl != ho.Ttl || in[i].String() != out[i].String() {
				t.Fatalf("record %d: %v came back %v", i, in[i], out[i])
			}
			if OpOf(in[i]) == OpRemoveCollective && ho.Rdlength != 0 {
				t.Fatalf("record %d: collective remove came back with RDATA", i)
			}
		}
	}
}

// miekgRoundTrips reports whether miekg/dns itself packs rr into a message
// that unpacks to the same record.
func miekgRoundTrips(rr dns.RR) bool {
	m := dns.Msg{Answer: []dns.RR{rr}}
	b, err := m.Pack()
	if err != nil {
		return false
	}
	var back dns.Msg
	return back.Unpack(b) == nil && len(back.Answer) == 1 && back.Answer[0].String() == rr.String()
}

// sameWire reports whether a and b pack to the same bytes.
func sameWire(a, b dns.RR) bool {
	wa, wb := make([]byte, dns.MaxMsgSize), make([]byte, dns.MaxMsgSize)
	na, ea := dns.PackRR(a, wa, 0, nil, false)
	nb, eb := dns.PackRR(b, wb, 0, nil, false)
	return ea == nil && eb == nil && bytes.Equal(wa[:na], wb[:nb])
}

func primary(t *testing.T, b *Builder) TLV {
	m, err := Parse(b.Message())
	if err != nil {
		t.Fatalf("built message does not parse: %v", err)
	}
	p, _ := m.Primary()
	return p
}

// sameName compares names as the wire sees them: case-insensitively and
// whatever escapes their presentation form uses.
func sameName(a, b string) bool {
	wa, wb := make([]byte, 256), make([]byte, 256)
	na, ea := dns.PackDomainName(a, wa, 0, nil, false)
	nb, eb := dns.PackDomainName(b, wb, 0, nil, false)
	if ea != nil || eb != nil {
		return a == b
	}
	return bytes.Equal(lower(wa[:na]), lower(wb[:nb]))
}

func lower(b []byte) []byte {
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return b
}

func sameQuestion(a, b dns.Question) bool {
	return sameName(a.Name, b.Name) && a.Qtype == b.Qtype && a.Qclass == b.Qclass
}

// FuzzRoundTrip builds messages from arbitrary field values and parses them
// back: what comes out is what went in.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint16(1), false, uint8(0), uint32(15000), uint32(3600000), "_ipp._tcp.example.org.", uint16(12), uint16(1), uint32(120), []byte{192, 0, 2, 1})
	f.Add(uint16(0), true, uint8(11), uint32(Infinite), uint32(0), "a.", uint16(255), uint16(255), uint32(RemoveRecordTTL), []byte{})
	f.Add(uint16(65535), false, uint8(2), uint32(0), uint32(10000), "\\046.\\000.", uint16(1), uint16(3), uint32(RemoveCollectiveTTL), []byte{1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, id uint16, qr bool, rcode uint8, inactivity, interval uint32, name string, qtype, qclass uint16, ttl uint32, ip []byte) {
		var b Builder
		b.Start(id, qr, int(rcode))
		b.Keepalive(Keepalive{inactivity, interval})
		b.RetryDelay(interval)
		q := dns.Question{Name: name, Qtype: qtype, Qclass: qclass}
		subscribed := b.Subscribe(q) == nil
		b.Unsubscribe(id)
		var rr dns.RR
		if len(ip) == 4 {
			rr = &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: qclass, Ttl: ttl}, A: net.IP(ip)}
		} else {
			rr = CollectiveRemove(name, qtype, qclass)
		}
		b.StartPush()
		pushed := subscribed && b.AddRecord(rr) == nil

		m, err := Parse(b.Message())
		if err != nil {
			t.Fatalf("built message does not parse: %v", err)
		}
		if m.ID != id || m.Response != qr || m.Rcode != int(rcode&0xF) {
			t.Fatalf("header %+v", m)
		}
		it := m.TLVs()
		tlv, _ := it.Next()
		if k, err := ParseKeepalive(tlv); err != nil || k != (Keepalive{inactivity, interval}) {
			t.Fatalf("keepalive %+v %v", k, err)
		}
		tlv, _ = it.Next()
		if d, err := ParseRetryDelay(tlv); err != nil || d != interval {
			t.Fatalf("retry delay %d %v", d, err)
		}
		if subscribed {
			tlv, _ = it.Next()
			if q2, err := ParseSubscribe(m, tlv); err != nil || !sameQuestion(q, q2) {
				t.Fatalf("subscribe %+v came back %+v %v", q, q2, err)
			}
		}
		tlv, _ = it.Next()
		if u, err := ParseUnsubscribe(m, tlv); err != nil || u.ID != id {
			t.Fatalf("unsubscribe %+v %v", u, err)
		}
		tlv, ok := it.Next()
		if !ok || tlv.Type != TypePush {
			t.Fatalf("no PUSH TLV: %+v", tlv)
		}
		out, err := ParsePush(m, tlv, nil)
		if !pushed {
			if err != ErrEmptyPush {
				t.Fatalf("empty PUSH: %v", err)
			}
			return
		}
		op := OpOf(rr)
		h := rr.Header()
		anyInAdd := (op == OpAdd || op == OpRemove) && (h.Rrtype == dns.TypeANY || h.Class == dns.ClassANY)
		switch {
		case anyInAdd:
			if err != ErrAnyInAdd {
				t.Fatalf("%v: %v, want ErrAnyInAdd", rr, err)
			}
		case op == OpIgnore:
			if err != nil || len(out) != 0 {
				t.Fatalf("%v: %v %v, want it ignored", rr, out, err)
			}
		default:
			if err != nil || len(out) != 1 {
				t.Fatalf("%v came back %v %v", rr, out, err)
			}
			g := out[0].Header()
			if !sameName(g.Name, h.Name) || g.Rrtype != h.Rrtype || g.Class != h.Class || g.Ttl != h.Ttl {
				t.Fatalf("%v came back %v", rr, out[0])
			}
			if op == OpRemoveCollective {
				if g.Rdlength != 0 {
					t.Fatalf("%v: collective remove sent with RDATA", rr)
				}
			} else if a, isA := rr.(*dns.A); isA && !out[0].(*dns.A).A.Equal(a.A) {
				t.Fatalf("%v came back %v", rr, out[0])
			}
		}
	})
}
