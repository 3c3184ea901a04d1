package dso

import (
	"errors"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// tlvMsg parses a unidirectional message with one TLV of type typ and data
// written by hand, and returns it with that TLV.
func tlvMsg(t *testing.T, typ uint16, data []byte) (Message, TLV) {
	t.Helper()
	raw := cat(hdr(0, dsoOp, 0), []byte{byte(typ >> 8), byte(typ), byte(len(data) >> 8), byte(len(data))}, data)
	m, err := Parse(raw)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	p, _ := m.Primary()
	return m, p
}

func built(t *testing.T, b *Builder) (Message, TLV) {
	t.Helper()
	m, err := Parse(b.Message())
	if err != nil {
		t.Fatalf("Parse(built): %v", err)
	}
	p, ok := m.Primary()
	if !ok {
		t.Fatal("built message has no TLV")
	}
	return m, p
}

func TestKeepalive(t *testing.T) {
	var b Builder
	b.Start(7, false, 0)
	b.Keepalive(Keepalive{Inactivity: 15000, Interval: Infinite})
	if got := b.Message(); string(got[12:]) != "\x00\x01\x00\x08\x00\x00\x3a\x98\xff\xff\xff\xff" {
		t.Fatalf("wire % x", got)
	}
	_, p := built(t, &b)
	k, err := ParseKeepalive(p)
	if err != nil || k != (Keepalive{15000, Infinite}) {
		t.Errorf("ParseKeepalive = %+v, %v", k, err)
	}
	for _, n := range []int{0, 4, 7, 9, 16} {
		_, p := tlvMsg(t, TypeKeepalive, make([]byte, n))
		if _, err := ParseKeepalive(p); err != ErrLength {
			t.Errorf("%d-byte keepalive: %v, want ErrLength", n, err)
		}
	}
}

func TestRetryDelay(t *testing.T) {
	var b Builder
	b.Start(0, false, dns.RcodeServerFailure)
	b.RetryDelay(60000)
	m, p := built(t, &b)
	if m.Rcode != dns.RcodeServerFailure || !m.Unidirectional() {
		t.Errorf("header %+v", m)
	}
	if ms, err := ParseRetryDelay(p); err != nil || ms != 60000 {
		t.Errorf("ParseRetryDelay = %d, %v", ms, err)
	}
	for _, n := range []int{0, 3, 5, 8} {
		_, p := tlvMsg(t, TypeRetryDelay, make([]byte, n))
		if _, err := ParseRetryDelay(p); err != ErrLength {
			t.Errorf("%d-byte retry delay: %v, want ErrLength", n, err)
		}
	}
}

func TestDurations(t *testing.T) {
	if d, ok := Duration(1500); !ok || d != 1500*time.Millisecond {
		t.Errorf("Duration(1500) = %v %v", d, ok)
	}
	if _, ok := Duration(Infinite); ok {
		t.Error("Duration(Infinite) is finite")
	}
	for d, want := range map[time.Duration]uint32{-time.Second: 0, 0: 0, time.Hour: 3600000, 100 * time.Hour * 24 * 365: Infinite - 1} {
		if got := Millis(d); got != want {
			t.Errorf("Millis(%v) = %d, want %d", d, got, want)
		}
	}
}

func TestPadding(t *testing.T) {
	var b Builder
	b.Start(9, false, 0)
	b.Keepalive(Keepalive{1, 2})
	b.Padding(5)
	m, _ := built(t, &b)
	it := m.TLVs()
	it.Next()
	p, ok := it.Next()
	if !ok || p.Type != TypePadding || string(p.Data) != "\x00\x00\x00\x00\x00" {
		t.Errorf("padding %+v", p)
	}
}

func TestSubscribe(t *testing.T) {
	q := dns.Question{Name: "_ipp._tcp.example.org.", Qtype: dns.TypePTR, Qclass: dns.ClassINET}
	var b Builder
	b.Start(0x1234, false, 0)
	if err := b.Subscribe(q); err != nil {
		t.Fatal(err)
	}
	m, p := built(t, &b)
	if p.Type != TypeSubscribe || len(p.Data) != 23+4 {
		t.Errorf("TLV %+v", p)
	}
	got, err := ParseSubscribe(m, p)
	if err != nil || got != q {
		t.Errorf("ParseSubscribe = %+v, %v", got, err)
	}
	name := []byte("\x04_ipp\x04_tcp\x07example\x03org\x00")
	for _, tc := range []struct {
		name string
		data []byte
		err  error
	}{
		{"empty", nil, ErrName},
		{"label overruns", []byte("\x09abc"), ErrName},
		{"no root label", []byte("\x03abc"), ErrName},
		{"pointer out of message", []byte{0xc0, 0xff, 0, 12, 0, 1}, ErrName},
		{"no class", cat(name, []byte{0, 12}), ErrLength},
		{"half a type", cat(name, []byte{0}), ErrLength},
		{"trailing", cat(name, []byte{0, 12, 0, 1, 0}), ErrTrailing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, p := tlvMsg(t, TypeSubscribe, tc.data)
			if _, err := ParseSubscribe(m, p); err != tc.err {
				t.Errorf("ParseSubscribe: %v, want %v", err, tc.err)
			}
		})
	}
	b.Start(1, false, 0)
	for _, bad := range []string{"", "not.fqdn", "a..b."} {
		if err := b.Subscribe(dns.Question{Name: bad, Qtype: 1, Qclass: 1}); err != ErrName {
			t.Errorf("Subscribe(%q): %v, want ErrName", bad, err)
		}
	}
	if b.Len() != HeaderLen {
		t.Errorf("failed Subscribe left %d bytes", b.Len())
	}
}

func TestUnsubscribe(t *testing.T) {
	var b Builder
	b.Start(0, false, 0)
	b.Unsubscribe(0x1234)
	m, p := built(t, &b)
	u, err := ParseUnsubscribe(m, p)
	if err != nil || u.ID != 0x1234 || u.Question != nil || len(p.Data) != 2 {
		t.Errorf("ParseUnsubscribe = %+v, %v", u, err)
	}
	// The early drafts' form, as Apple's client sends it: 27 bytes for
	// _ipp._tcp.example.org PTR.
	q := dns.Question{Name: "_ipp._tcp.example.org.", Qtype: dns.TypePTR, Qclass: dns.ClassINET}
	b.Start(0, false, 0)
	if err := b.UnsubscribeQuestion(q); err != nil {
		t.Fatal(err)
	}
	m, p = built(t, &b)
	if len(p.Data) != 27 {
		t.Errorf("old-form UNSUBSCRIBE is %d bytes, want 27", len(p.Data))
	}
	u, err = ParseUnsubscribe(m, p)
	if err != nil || u.Question == nil || *u.Question != q {
		t.Errorf("ParseUnsubscribe(old form) = %+v, %v", u, err)
	}
	for _, n := range []int{0, 1, 3} {
		m, p := tlvMsg(t, TypeUnsubscribe, make([]byte, n))
		if _, err := ParseUnsubscribe(m, p); !errors.Is(err, ErrFormat) {
			t.Errorf("%d-byte UNSUBSCRIBE: %v, want a format error", n, err)
		}
	}
}

func TestReconfirm(t *testing.T) {
	for _, s := range []string{
		"printer._ipp._tcp.example.org. 0 IN SRV 0 0 631 host.example.org.",
		"_ipp._tcp.example.org. 0 IN PTR printer._ipp._tcp.example.org.",
		"host.example.org. 0 IN A 192.0.2.1",
		"host.example.org. 0 IN TXT \"a=b\" \"c\"",
	} {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		rr.Header().Rdlength = 0
		var b Builder
		b.Start(0, false, 0)
		if err := b.Reconfirm(rr); err != nil {
			t.Fatal(err)
		}
		if rr.Header().Rdlength != 0 {
			t.Error("Reconfirm wrote into the record's header")
		}
		m, p := built(t, &b)
		// NAME TYPE CLASS RDATA: the record's wire length less TTL and RDLENGTH.
		if want := dns.Len(rr) - 6; len(p.Data) != want {
			t.Errorf("%s: TLV %d bytes, want %d", s, len(p.Data), want)
		}
		got, err := ParseReconfirm(m, p)
		if err != nil || !dns.IsDuplicate(got, rr) {
			t.Errorf("ParseReconfirm = %v, %v; want %v", got, err, rr)
		}
	}
	anyRR := &dns.ANY{Hdr: dns.RR_Header{Name: "a.", Rrtype: dns.TypeANY, Class: dns.ClassINET}}
	var b Builder
	b.Start(0, false, 0)
	if err := b.Reconfirm(anyRR); err != ErrAnyInAdd {
		t.Errorf("Reconfirm(ANY) = %v", err)
	}
	name := []byte("\x01a\x00")
	for _, tc := range []struct {
		name string
		data []byte
		err  error
	}{
		{"bad name", []byte("\x05a"), ErrName},
		{"no class", cat(name, []byte{0, 1}), ErrLength},
		{"type ANY", cat(name, []byte{0, 255, 0, 1}), ErrAnyInAdd},
		{"class ANY", cat(name, []byte{0, 1, 0, 255, 1, 2, 3, 4}), ErrAnyInAdd},
		{"short A", cat(name, []byte{0, 1, 0, 1, 1, 2, 3}), ErrRecord},
		{"long A", cat(name, []byte{0, 1, 0, 1, 1, 2, 3, 4, 5}), ErrRecord},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, p := tlvMsg(t, TypeReconfirm, tc.data)
			if _, err := ParseReconfirm(m, p); err != tc.err {
				t.Errorf("ParseReconfirm: %v, want %v", err, tc.err)
			}
		})
	}
}
