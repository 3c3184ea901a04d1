package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestNames(t *testing.T) {
	for code, want := range map[uint16]string{
		NoError: "NO-ERROR", ServFull: "SERV-FULL", Static: "STATIC", FormatErr: "FORMAT-ERR",
		NoSuchLLQ: "NO-SUCH-LLQ", BadVers: "BAD-VERS", UnknownErr: "UNKNOWN-ERR", 7: "ERROR-7", 65535: "ERROR-65535",
	} {
		if got := ErrorName(code); got != want {
			t.Errorf("ErrorName(%d) = %q, want %q", code, got, want)
		}
	}
	for op, want := range map[uint16]string{0: "OPCODE-0", OpSetup: "SETUP", OpRefresh: "REFRESH", OpEvent: "EVENT", 4: "OPCODE-4", 1000: "OPCODE-1000"} {
		if got := OpName(op); got != want {
			t.Errorf("OpName(%d) = %q, want %q", op, got, want)
		}
	}
}

func query(opts ...*dns.EDNS0_LLQ) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	SetOptions(m, 1232, opts...)
	return m
}

func TestOptionsRoundTrip(t *testing.T) {
	a := NewOption(OpSetup, NoError, 0, 3600)
	b := NewOption(OpRefresh, NoSuchLLQ, 0xDEADBEEFCAFEF00D, 0xFFFFFFFF)
	if a.Version != Version || a.Code != dns.EDNS0LLQ || a.Option() != dns.EDNS0LLQ {
		t.Fatalf("NewOption: %+v", a)
	}
	m := query(a, b)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	raw, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckLengths(raw); err != nil {
		t.Fatalf("CheckLengths of a good message: %v", err)
	}
	back := new(dns.Msg)
	if err := back.Unpack(raw); err != nil {
		t.Fatal(err)
	}
	got := Options(back)
	if len(got) != 2 || got[0].String() != a.String() || got[1].String() != b.String() {
		t.Fatalf("options after a round trip: %v", got)
	}
	if back.IsEdns0().UDPSize() != 1232 {
		t.Fatalf("UDP size %d", back.IsEdns0().UDPSize())
	}
}

func TestOptionLayout(t *testing.T) {
	m := query(NewOption(OpEvent, Static, 0x0102030405060708, 0x0A0B0C0D))
	raw, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	opt := raw[len(raw)-4-OptionLen:]
	want := []byte{0, 1, 0, 18, 0, 1, 0, 3, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8, 0x0A, 0x0B, 0x0C, 0x0D}
	if string(opt) != string(want) {
		t.Fatalf("option bytes % x, want % x", opt, want)
	}
}

func TestOptionsNone(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	if Options(m) != nil {
		t.Fatalf("options without OPT")
	}
	m.SetEdns0(4096, true)
	if Options(m) != nil {
		t.Fatalf("options without LLQ")
	}
}

func TestSetOptionsReplaces(t *testing.T) {
	m := query(NewOption(OpSetup, NoError, 1, 1))
	m.Extra = append([]dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeA, Class: dns.ClassINET}}}, m.Extra...)
	m.Extra = append(m.Extra, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}) // a second OPT
	SetOptions(m, 512, NewOption(OpEvent, NoError, 2, 2))
	opts := 0
	for _, rr := range m.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			opts++
		}
	}
	if opts != 1 || len(m.Extra) != 2 || m.Extra[0].Header().Rrtype != dns.TypeA {
		t.Fatalf("extra after SetOptions: %v", m.Extra)
	}
	if o := Options(m); len(o) != 1 || o[0].Id != 2 || m.IsEdns0().UDPSize() != 512 {
		t.Fatalf("options after SetOptions: %v", o)
	}
	RemoveOPT(m)
	if m.IsEdns0() != nil || len(m.Extra) != 1 {
		t.Fatalf("extra after RemoveOPT: %v", m.Extra)
	}
	SetOptions(m, 1232) // an OPT with no option
	if m.IsEdns0() == nil || Options(m) != nil {
		t.Fatalf("bare OPT: %v", m.Extra)
	}
}

// setLength rewrites the last option of a packed message (an LLQ option) to
// claim n data bytes, padding or cutting.
func setLength(raw []byte, n int) []byte {
	start := len(raw) - 4 - OptionLen
	out := append([]byte(nil), raw[:start+4]...)
	binary.BigEndian.PutUint16(out[start+2:], uint16(n))
	data := append([]byte(nil), raw[start+4:]...)
	for len(data) < n {
		data = append(data, 0)
	}
	out = append(out, data[:n]...)
	binary.BigEndian.PutUint16(out[start-2:], binary.BigEndian.Uint16(raw[start-2:])+uint16(n-OptionLen))
	return out
}

func TestCheckLengths(t *testing.T) {
	m := query(NewOption(OpSetup, NoError, 0, 3600))
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: []byte{192, 0, 2, 1}}}
	m.Compress = true // names as pointers
	raw, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckLengths(raw); err != nil {
		t.Fatalf("good message: %v", err)
	}
	for _, n := range []int{19, 20, 100} {
		b := setLength(raw, n)
		if err := new(dns.Msg).Unpack(b); err != nil {
			t.Fatalf("length %d: miekg/dns refuses it (%v); the check is moot", n, err)
		}
		if err := CheckLengths(b); !errors.Is(err, ErrBadLength) {
			t.Errorf("length %d: %v, want ErrBadLength", n, err)
		}
	}
	if err := CheckLengths(setLength(raw, 17)); !errors.Is(err, ErrBadLength) {
		t.Errorf("length 17: %v", err)
	}
	// Cut short anywhere: an error, never a panic.
	for i := 0; i < len(raw); i++ {
		if err := CheckLengths(raw[:i]); err == nil {
			t.Errorf("cut at %d of %d: no error", i, len(raw))
		}
	}
	// An OPT-typed record outside the additional section is not looked at.
	odd := new(dns.Msg)
	odd.SetQuestion("www.example.org.", dns.TypeA)
	odd.Answer = []dns.RR{&dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}, Option: []dns.EDNS0{NewOption(OpSetup, NoError, 0, 1)}}}
	oraw, err := odd.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckLengths(setLength(oraw, 19)); err != nil {
		t.Errorf("OPT in the answer section checked: %v", err)
	}
	// Unknown label types are refused.
	lbl := append([]byte(nil), raw...)
	lbl[12] = 0x40
	if err := CheckLengths(lbl); err == nil {
		t.Errorf("label type 0x40 accepted")
	}
}

// ackMsg is an event acknowledgement as clients send it: the event's
// question and ID, QR set, and one LLQ option per question.
func ackMsg(id uint16, llqIDs ...uint64) *dns.Msg {
	m := new(dns.Msg)
	m.Id = id
	m.Response = true
	var opts []*dns.EDNS0_LLQ
	for i, l := range llqIDs {
		m.Question = append(m.Question, dns.Question{Name: fmt.Sprintf("n%d.example.org.", i), Qtype: dns.TypeA, Qclass: dns.ClassINET})
		opts = append(opts, NewOption(OpEvent, NoError, l, 3600))
	}
	SetOptions(m, 1232, opts...)
	return m
}

// unpackedAcks is what EventAcks must agree with: the acks miekg/dns finds
// when it unpacks the whole message.
func unpackedAcks(b []byte) (acks []string, ok bool) {
	m := new(dns.Msg)
	if m.Unpack(b) != nil {
		return nil, false
	}
	if !m.Response || m.Opcode != dns.OpcodeQuery {
		return nil, true
	}
	for _, o := range Options(m) {
		if o.Opcode == OpEvent {
			acks = append(acks, fmt.Sprintf("%d/%x", m.Id, o.Id))
		}
	}
	return acks, true
}

func eventAcks(b []byte) (acks []string, err error) {
	err = EventAcks(b, func(msgID uint16, llqID uint64) { acks = append(acks, fmt.Sprintf("%d/%x", msgID, llqID)) })
	return acks, err
}

func TestEventAcks(t *testing.T) {
	withAnswer := ackMsg(7, 0xfeed)
	withAnswer.Answer = append(withAnswer.Answer, &dns.A{Hdr: dns.RR_Header{Name: "n0.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
	query := ackMsg(9, 0xbeef)
	query.Response = false
	setup := ackMsg(10, 0xcafe)
	setup.IsEdns0().Option[0].(*dns.EDNS0_LLQ).Opcode = OpSetup
	for _, tc := range []struct {
		name string
		m    *dns.Msg
		want []string
	}{
		{"one", ackMsg(1, 0x1122334455667788), []string{"1/1122334455667788"}},
		{"two questions", ackMsg(2, 1, 2), []string{"2/1", "2/2"}},
		{"answers echoed", withAnswer, []string{"7/feed"}},
		{"not a response", query, nil},
		{"not an event", setup, nil},
	} {
		b, err := tc.m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		got, err := eventAcks(b)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: acks %v, error %v; want %v", tc.name, got, err, tc.want)
		}
		if want, _ := unpackedAcks(b); !slices.Equal(got, want) {
			t.Errorf("%s: %v, but a full unpack finds %v", tc.name, got, want)
		}
		// Cut short anywhere, a message yields no ack.
		for n := range len(b) {
			if got, _ := eventAcks(b[:n]); got != nil {
				t.Fatalf("%s cut to %d bytes: acks %v", tc.name, n, got)
			}
		}
	}
}

// FuzzEventAcks: on any input EventAcks does not panic, and whenever
// miekg/dns unpacks the whole message it finds exactly the same acks.
func FuzzEventAcks(f *testing.F) {
	for _, m := range []*dns.Msg{ackMsg(1, 42), ackMsg(2, 1, 2, 3)} {
		b, _ := m.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, _ := eventAcks(b)
		if want, ok := unpackedAcks(b); ok && !slices.Equal(got, want) {
			t.Fatalf("EventAcks %v, full unpack %v", got, want)
		}
	})
}

// scanned is what Scan reports of a raw message, as text.
func scanned(b []byte) (answers, opts []string, err error) {
	err = Scan(b,
		func(typ uint16, ttl uint32, rdata []byte) {
			answers = append(answers, fmt.Sprintf("%d %d %x", typ, ttl, rdata))
		},
		func(o dns.EDNS0_LLQ) { opts = append(opts, o.String()) })
	return answers, opts, err
}

// unpackedScan is what Scan must agree with: the answers and the LLQ options
// of every OPT record that miekg/dns finds when it unpacks the whole message.
// Record data is compared for A records, the one type whose data miekg/dns
// keeps as the wire has it.
func unpackedScan(b []byte) (answers, opts []string, ok bool) {
	m := new(dns.Msg)
	if m.Unpack(b) != nil {
		return nil, nil, false
	}
	for _, rr := range m.Answer {
		h := rr.Header()
		answers = append(answers, fmt.Sprintf("%d %d", h.Rrtype, h.Ttl))
	}
	for _, rr := range m.Extra {
		if opt, isOPT := rr.(*dns.OPT); isOPT {
			for _, o := range opt.Option {
				if l, isLLQ := o.(*dns.EDNS0_LLQ); isLLQ {
					opts = append(opts, l.String())
				}
			}
		}
	}
	return answers, opts, true
}

// sameScan compares Scan's answers with a full unpack's, which lack the data
// of any but A records.
func sameScan(t *testing.T, b []byte, got, want []string) {
	t.Helper()
	m := new(dns.Msg)
	m.Unpack(b)
	if len(got) != len(want) {
		t.Fatalf("Scan answers %v, full unpack %v", got, want)
	}
	for i := range got {
		if !strings.HasPrefix(got[i], want[i]+" ") {
			t.Fatalf("Scan answer %d %q, full unpack %q", i, got[i], want[i])
		}
		if a, ok := m.Answer[i].(*dns.A); ok && len(a.A.To4()) == 4 && !strings.HasSuffix(got[i], fmt.Sprintf(" %x", []byte(a.A.To4()))) {
			t.Fatalf("Scan answer %d %q, full unpack %s", i, got[i], a)
		}
	}
}

func TestScan(t *testing.T) {
	event := ackMsg(7, 0xfeed)
	event.Answer = []dns.RR{
		&dns.A{Hdr: dns.RR_Header{Name: "n0.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)},
		&dns.A{Hdr: dns.RR_Header{Name: "n0.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: RemoveTTL}, A: net.IPv4(192, 0, 2, 2)},
		&dns.TXT{Hdr: dns.RR_Header{Name: "n0.example.org.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 5}, Txt: []string{"x"}},
	}
	event.Compress = true
	b, err := event.Pack()
	if err != nil {
		t.Fatal(err)
	}
	answers, opts, err := scanned(b)
	want := []string{"1 60 c0000201", fmt.Sprintf("1 %d c0000202", RemoveTTL), "16 5 0178"}
	if err != nil || !slices.Equal(answers, want) {
		t.Fatalf("answers %v, error %v; want %v", answers, err, want)
	}
	if wantOpt := NewOption(OpEvent, NoError, 0xfeed, 3600).String(); !slices.Equal(opts, []string{wantOpt}) {
		t.Fatalf("options %v, want %s", opts, wantOpt)
	}
	// Cut short anywhere, a message reads as miekg/dns reads it, and never
	// with its option, which ends it.
	for n := range len(b) {
		answers, opts, err := scanned(b[:n])
		if opts != nil {
			t.Fatalf("cut to %d bytes: options %v", n, opts)
		}
		if want, _, ok := unpackedScan(b[:n]); ok {
			if err != nil {
				t.Fatalf("cut to %d bytes: %v, but a full unpack succeeds", n, err)
			}
			sameScan(t, b[:n], answers, want)
		}
	}
	// An LLQ option longer than 18 bytes reads as miekg/dns reads it; a
	// shorter one, or a stray byte after the options, is an error.
	// The LLQ option is the message's last 22 bytes, after the OPT
	// record's RDLENGTH.
	for _, tc := range []struct {
		name string
		edit func([]byte) []byte
		ok   bool
	}{
		{"long", func(o []byte) []byte { o[3] += 2; return append(o, 0, 0) }, true},
		{"short", func(o []byte) []byte { o[3] -= 2; return o[:len(o)-2] }, false},
		{"stray byte", func(o []byte) []byte { return append(o, 0) }, false},
	} {
		cut := len(b) - 4 - OptionLen
		option := tc.edit(append([]byte(nil), b[cut:]...))
		edited := append(append([]byte(nil), b[:cut]...), option...)
		binary.BigEndian.PutUint16(edited[cut-2:], uint16(len(option)))
		_, opts, err := scanned(edited)
		if (err == nil) != tc.ok {
			t.Errorf("%s: options %v, error %v", tc.name, opts, err)
		}
		if _, want, ok := unpackedScan(edited); ok != tc.ok || (ok && !slices.Equal(opts, want)) {
			t.Errorf("%s: Scan %v, full unpack %v (ok %v)", tc.name, opts, want, ok)
		}
	}
}

// FuzzScan: on any input Scan does not panic, and whenever miekg/dns
// unpacks the whole message Scan parses it too and finds the same answers
// and LLQ options.
func FuzzScan(f *testing.F) {
	event := ackMsg(3, 42)
	event.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "n0.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: RemoveTTL}, A: net.IPv4(192, 0, 2, 1)}}
	for _, m := range []*dns.Msg{ackMsg(1, 42), ackMsg(2, 1, 2, 3), event} {
		b, _ := m.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		answers, opts, err := scanned(b)
		wantAnswers, wantOpts, ok := unpackedScan(b)
		if !ok {
			return
		}
		if err != nil {
			t.Fatalf("Scan: %v, but a full unpack succeeds", err)
		}
		sameScan(t, b, answers, wantAnswers)
		if !slices.Equal(opts, wantOpts) {
			t.Fatalf("Scan options %v, full unpack %v", opts, wantOpts)
		}
	})
}
