package dso

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

func rrs(t testing.TB, lines ...string) []dns.RR {
	t.Helper()
	var out []dns.RR
	for _, s := range lines {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rr)
	}
	return out
}

func pushOf(t testing.TB, b *Builder, records []dns.RR) []byte {
	t.Helper()
	b.Start(0, false, 0)
	b.StartPush()
	for _, rr := range records {
		if err := b.AddRecord(rr); err != nil {
			t.Fatalf("AddRecord(%v): %v", rr, err)
		}
	}
	return b.Message()
}

func parsePush(t testing.TB, msg []byte) ([]dns.RR, error) {
	t.Helper()
	m, err := Parse(msg)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	p, _ := m.Primary()
	if p.Type != TypePush {
		t.Fatalf("primary is %s", TypeName(p.Type))
	}
	return ParsePush(m, p, nil)
}

func TestPushRoundTrip(t *testing.T) {
	in := rrs(t,
		"_ipp._tcp.example.org. 120 IN PTR a._ipp._tcp.example.org.",
		"_ipp._tcp.example.org. 120 IN PTR b._ipp._tcp.example.org.",
		"a._ipp._tcp.example.org. 0 IN SRV 0 0 631 host.example.org.",
		"a._ipp._tcp.example.org. 120 IN TXT \"rp=queue\"",
		"host.example.org. 4294967295 IN A 192.0.2.1",      // single remove
		"host.example.org. 2147483647 IN AAAA 2001:db8::1", // largest add TTL
	)
	in = append(in,
		CollectiveRemove("old.example.org.", dns.TypeA, dns.ClassINET),
		CollectiveRemove("old.example.org.", dns.TypeANY, dns.ClassINET),
		CollectiveRemove("gone.example.org.", 0, dns.ClassANY),
	)
	var b Builder
	msg := pushOf(t, &b, in)
	if b.Records() != len(in) {
		t.Errorf("Records() = %d", b.Records())
	}
	out, err := parsePush(t, msg)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("%d records back, want %d", len(out), len(in))
	}
	wantOps := []Op{OpAdd, OpAdd, OpAdd, OpAdd, OpRemove, OpAdd, OpRemoveCollective, OpRemoveCollective, OpRemoveCollective}
	for i := range in {
		h, g := in[i].Header(), out[i].Header()
		if h.Name != g.Name || h.Rrtype != g.Rrtype || h.Class != g.Class || h.Ttl != g.Ttl {
			t.Errorf("record %d: %v, want %v", i, out[i], in[i])
		}
		if OpOf(out[i]) != wantOps[i] {
			t.Errorf("record %d: op %d, want %d", i, OpOf(out[i]), wantOps[i])
		}
		if wantOps[i] != OpRemoveCollective && !dns.IsDuplicate(in[i], out[i]) {
			t.Errorf("record %d: %v, want %v", i, out[i], in[i])
		}
		if wantOps[i] == OpRemoveCollective && g.Rdlength != 0 {
			t.Errorf("record %d: collective remove with RDLEN %d", i, g.Rdlength)
		}
	}
	// Names are compressed: the message is much shorter than the records
	// packed one by one, and PTR targets point back at owner names.
	flat := HeaderLen + TLVHeaderLen
	for _, rr := range in {
		flat += dns.Len(rr)
	}
	if len(msg) > flat*2/3 {
		t.Errorf("PUSH is %d bytes, %d uncompressed: names not compressed", len(msg), flat)
	}
}

func TestPushCompressionAcrossTLVs(t *testing.T) {
	// Compression offsets count from the message start even when the PUSH
	// TLV is not the first thing after the header (a second PUSH TLV here).
	in := rrs(t, "a.example.org. 1 IN A 192.0.2.1", "b.example.org. 1 IN A 192.0.2.2")
	var b Builder
	b.Start(0, false, 0)
	b.StartPush()
	if err := b.AddRecord(in[0]); err != nil {
		t.Fatal(err)
	}
	b.StartPush()
	if err := b.AddRecord(in[1]); err != nil {
		t.Fatal(err)
	}
	m, err := Parse(b.Message())
	if err != nil {
		t.Fatal(err)
	}
	var out []dns.RR
	for it := m.TLVs(); ; {
		tlv, ok := it.Next()
		if !ok {
			break
		}
		if out, err = ParsePush(m, tlv, out); err != nil {
			t.Fatal(err)
		}
	}
	if len(out) != 2 || !dns.IsDuplicate(out[0], in[0]) || !dns.IsDuplicate(out[1], in[1]) {
		t.Errorf("got %v", out)
	}
}

func TestPushMalformed(t *testing.T) {
	owner := []byte("\x01a\x00")
	rec := func(typ, class uint16, ttl uint32, rdata ...byte) []byte {
		return cat(owner, []byte{byte(typ >> 8), byte(typ), byte(class >> 8), byte(class),
			byte(ttl >> 24), byte(ttl >> 16), byte(ttl >> 8), byte(ttl), byte(len(rdata) >> 8), byte(len(rdata))}, rdata)
	}
	a := rec(dns.TypeA, dns.ClassINET, 60, 192, 0, 2, 1)
	for _, tc := range []struct {
		name string
		data []byte
		err  error
		n    int
	}{
		{"empty", nil, ErrEmptyPush, 0},
		{"one add", a, nil, 1},
		{"half a record", a[:8], ErrRecord, 0},
		{"RDATA cut", a[:len(a)-1], ErrRecord, 0},
		{"add then garbage", cat(a, []byte{0}), ErrRecord, 0},
		{"short A rdata", rec(dns.TypeA, dns.ClassINET, 60, 1, 2, 3), ErrRecord, 0},
		{"add type ANY", rec(dns.TypeANY, dns.ClassINET, 60), ErrAnyInAdd, 0},
		{"add class ANY", rec(dns.TypeA, dns.ClassANY, 60, 1, 2, 3, 4), ErrAnyInAdd, 0},
		{"single remove type ANY", rec(dns.TypeANY, dns.ClassINET, RemoveRecordTTL), ErrAnyInAdd, 0},
		{"collective remove with RDATA", rec(dns.TypeA, dns.ClassINET, RemoveCollectiveTTL, 1, 2, 3, 4), ErrCollectiveRdata, 0},
		{"collective remove of ANY", rec(dns.TypeANY, dns.ClassINET, RemoveCollectiveTTL), nil, 1},
		{"empty-RDATA add", rec(dns.TypeA, dns.ClassINET, 0), nil, 1},
		{"meaningless TTL ignored", cat(rec(dns.TypeA, dns.ClassINET, 0x80000000, 1, 2, 3, 4), a), nil, 1},
		{"TTL 0xFFFFFFFD ignored", rec(dns.TypeA, dns.ClassINET, 0xFFFFFFFD, 1, 2, 3, 4), nil, 0},
		{"pointer loop", []byte{0xc0, 16, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0}, ErrRecord, 0},
		{"pointer to header", cat([]byte{0xc0, 0}, a[3:]), nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, p := tlvMsg(t, TypePush, tc.data)
			out, err := ParsePush(m, p, nil)
			if err != tc.err || (err == nil && len(out) != tc.n) {
				t.Errorf("ParsePush = %v, %v; want %d records, %v", out, err, tc.n, tc.err)
			}
			if err != nil && !errors.Is(err, ErrFormat) {
				t.Errorf("%v is not a format error", err)
			}
		})
	}
	// A record may not run into the next TLV even if its bytes would parse.
	m, err := Parse(cat(hdr(0, dsoOp, 0), []byte{0, 0x41, 0, 10}, a[:10], []byte{0, 3, 0, 7}, a[10:]))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := m.Primary()
	if _, err := ParsePush(m, p, nil); err != ErrRecord {
		t.Errorf("record spilling out of its TLV: %v, want ErrRecord", err)
	}
	if _, err := ParsePush(m, TLV{Type: TypePush, Data: p.Data, Offset: 3}, nil); err != ErrTruncated {
		t.Errorf("TLV inside the header: %v", err)
	}
}

func TestPushLimit(t *testing.T) {
	var b Builder
	b.Start(0, false, 0)
	b.StartPush()
	var added []dns.RR
	for i := 0; ; i++ {
		rr := rrs(t, fmt.Sprintf("host%d.sub%d.example.org. 60 IN TXT \"%0100d\"", i, i%7, i))[0]
		before := b.Len()
		err := b.AddRecord(rr)
		if err == ErrFull {
			if b.Len() != before {
				t.Fatalf("ErrFull left %d bytes, had %d", b.Len(), before)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		added = append(added, rr)
	}
	msg := b.Message()
	if len(msg) > MaxPushLen || len(msg) < MaxPushLen-200 {
		t.Errorf("full PUSH is %d bytes, want just under %d", len(msg), MaxPushLen)
	}
	if f := b.Frame(); len(f) != len(msg)+2 || int(f[0])<<8|int(f[1]) != len(msg) {
		t.Errorf("frame prefix % x for %d bytes", f[:2], len(msg))
	}
	out, err := parsePush(t, msg)
	if err != nil || len(out) != len(added) {
		t.Fatalf("%d records back (%v), want %d", len(out), err, len(added))
	}
	for i := range out {
		if !dns.IsDuplicate(out[i], added[i]) {
			t.Fatalf("record %d: %v, want %v", i, out[i], added[i])
		}
	}
	// The record refused, whose names were offered for compression and
	// taken back, goes first into the next message.
	b.Limit = 600
	b.Start(0, false, 0)
	b.StartPush()
	n := 0
	for i := len(added); ; i++ {
		rr := rrs(t, fmt.Sprintf("host%d.sub%d.example.org. 60 IN TXT \"%0100d\"", i%3, i%7, i))[0]
		if b.AddRecord(rr) != nil {
			break
		}
		n++
	}
	if out, err := parsePush(t, b.Message()); err != nil || len(out) != n || len(b.Message()) > 600 {
		t.Errorf("limit 600: %d of %d records back, %d bytes, %v", len(out), n, len(b.Message()), err)
	}
}

// TestAddRecordLeavesRecordAlone packs one set of records from many
// goroutines at once, as a server pushing one change to many sessions
// does: under the race detector this fails if packing writes to a record.
func TestAddRecordLeavesRecordAlone(t *testing.T) {
	in := rrs(t, "a.example.org. 60 IN A 192.0.2.1", "example.org. 60 IN MX 10 a.example.org.")
	for _, rr := range in {
		rr.Header().Rdlength = 0
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			var b Builder
			for range 50 {
				pushOf(t, &b, in)
			}
		})
	}
	wg.Wait()
	for _, rr := range in {
		if rr.Header().Rdlength != 0 {
			t.Errorf("%v: Rdlength written", rr)
		}
	}
}

func TestBuildAndParseAllocate(t *testing.T) {
	in := rrs(t,
		"_ipp._tcp.example.org. 120 IN PTR a._ipp._tcp.example.org.",
		"a._ipp._tcp.example.org. 120 IN SRV 0 0 631 host.example.org.",
		"host.example.org. 120 IN A 192.0.2.1")
	b := NewBuilder(make([]byte, 0, 4096))
	pushOf(t, b, in) // warm the compression map
	var msg []byte
	if n := testing.AllocsPerRun(100, func() { msg = pushOf(t, b, in) }); n != 0 {
		t.Errorf("building a PUSH: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		b.Start(0, false, 0)
		b.Keepalive(Keepalive{1, 2})
		b.RetryDelay(3)
		b.Unsubscribe(4)
		_ = b.Frame()
	}); n != 0 {
		t.Errorf("building session TLVs: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		m, _ := Parse(msg)
		for it := m.TLVs(); ; {
			if _, ok := it.Next(); !ok {
				break
			}
		}
	}); n != 0 {
		t.Errorf("Parse and walk: %v allocations", n)
	}
	framed := bytes.Repeat(AppendFrame(nil, msg), 3)
	r := bytes.NewReader(framed)
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(1, func() {
		r.Reset(framed)
		for range 3 {
			if _, err := ReadMessage(r, buf, MaxMessageLen); err != nil {
				t.Fatal(err)
			}
		}
	}); n != 0 {
		t.Errorf("ReadMessage: %v allocations", n)
	}
}

func TestReadMessage(t *testing.T) {
	var b Builder
	b.Start(5, false, 0)
	b.Keepalive(Keepalive{1, 2})
	one := append([]byte(nil), b.Frame()...)
	b.Start(0, false, 0)
	b.RetryDelay(9)
	two := append([]byte(nil), b.Frame()...)
	r := bytes.NewReader(cat(one, two))
	var buf []byte
	for i, want := range [][]byte{one[2:], two[2:]} {
		got, err := ReadMessage(r, buf, 64)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("message %d: % x, %v", i, got, err)
		}
	}
	if _, err := ReadMessage(r, buf, 64); err != io.EOF {
		t.Errorf("at end: %v, want io.EOF", err)
	}
	if _, err := ReadMessage(bytes.NewReader(one[:len(one)-1]), nil, 64); err != io.ErrUnexpectedEOF {
		t.Errorf("cut message: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := ReadMessage(bytes.NewReader(one[:1]), nil, 64); err != io.ErrUnexpectedEOF {
		t.Errorf("cut prefix: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := ReadMessage(bytes.NewReader(one), nil, len(one)-3); err != ErrTooLong {
		t.Errorf("over max: %v, want ErrTooLong", err)
	}
	if got, err := ReadMessage(bytes.NewReader([]byte{0, 0}), nil, 64); err != nil || len(got) != 0 {
		t.Errorf("empty frame: % x, %v", got, err)
	}
}

// A collective remove goes out without RDATA whatever record carries it:
// miekg/dns packs the empty fields of most types as bytes.
func TestCollectiveRemoveHasNoRdata(t *testing.T) {
	for _, rr := range []dns.RR{
		&dns.MX{Hdr: dns.RR_Header{Name: "a.example.", Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: RemoveCollectiveTTL}},
		&dns.SRV{Hdr: dns.RR_Header{Name: "a.example.", Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: RemoveCollectiveTTL}},
		&dns.SOA{Hdr: dns.RR_Header{Name: "a.example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: RemoveCollectiveTTL}},
	} {
		var b Builder
		out, err := parsePush(t, pushOf(t, &b, []dns.RR{rr}))
		if err != nil || len(out) != 1 || out[0].Header().Rdlength != 0 || OpOf(out[0]) != OpRemoveCollective {
			t.Errorf("%T: %v %v", rr, out, err)
		}
	}
}

// AddRecordTTL writes its TTL, not the record's, and leaves the record as
// it was: a remove is written without copying the backend's record.
func TestAddRecordTTL(t *testing.T) {
	in := rrs(t, "host.example.org. 300 IN A 192.0.2.1", "host.example.org. 300 IN AAAA 2001:db8::1")
	b := NewBuilder(nil)
	b.Start(0, false, 0)
	b.StartPush()
	if err := b.AddRecordTTL(in[0], RemoveRecordTTL); err != nil {
		t.Fatal(err)
	}
	if err := b.AddRecordTTL(in[1], 7); err != nil {
		t.Fatal(err)
	}
	out, err := parsePush(t, b.Message())
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || OpOf(out[0]) != OpRemove || out[1].Header().Ttl != 7 {
		t.Fatalf("got %v", out)
	}
	if in[0].Header().Ttl != 300 || in[1].Header().Ttl != 300 {
		t.Fatalf("records changed: %v", in)
	}
}
