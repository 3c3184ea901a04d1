package dso

import (
	"errors"
	"testing"
)

// hdr returns a DSO header: ID, flags byte 1 (QR|opcode|...), flags byte 2 (RCODE...), counts.
func hdr(id uint16, b2, b3 byte, counts ...byte) []byte {
	h := []byte{byte(id >> 8), byte(id), b2, b3, 0, 0, 0, 0, 0, 0, 0, 0}
	copy(h[4:], counts)
	return h
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

const dsoOp = OpcodeDSO << 3

func TestParseHeader(t *testing.T) {
	keepalive := []byte{0, 1, 0, 8, 0, 0, 0x3a, 0x98, 0, 0, 0x3a, 0x98}
	for _, tc := range []struct {
		name string
		msg  []byte
		err  error
		tlvs int
	}{
		{"short", hdr(1, dsoOp, 0)[:11], ErrShort, 0},
		{"empty", nil, ErrShort, 0},
		{"query opcode", cat(hdr(1, 0, 0), keepalive), ErrNotDSO, 0},
		{"update opcode", cat(hdr(1, 5<<3, 0), keepalive), ErrNotDSO, 0},
		{"qdcount", cat(hdr(1, dsoOp, 0, 0, 1), keepalive), ErrCounts, 0},
		{"ancount", cat(hdr(1, dsoOp, 0, 0, 0, 0, 1), keepalive), ErrCounts, 0},
		{"nscount", cat(hdr(1, dsoOp, 0, 0, 0, 0, 0, 1, 0), keepalive), ErrCounts, 0},
		{"arcount", cat(hdr(1, dsoOp, 0, 0, 0, 0, 0, 0, 0, 0, 1), keepalive), ErrCounts, 0},
		{"arcount high byte", cat(hdr(1, dsoOp, 0, 0, 0, 0, 0, 0, 0, 1, 0), keepalive), ErrCounts, 0},
		{"request without TLV", hdr(1, dsoOp, 0), ErrNoPrimary, 0},
		{"unidirectional without TLV", hdr(0, dsoOp, 0), ErrNoPrimary, 0},
		{"response without TLV", hdr(1, 0x80|dsoOp, 0), nil, 0},
		{"TLV header cut to 1", cat(hdr(1, dsoOp, 0), []byte{0}), ErrTruncated, 0},
		{"TLV header cut to 3", cat(hdr(1, dsoOp, 0), []byte{0, 1, 0}), ErrTruncated, 0},
		{"TLV length overrun by one", cat(hdr(1, dsoOp, 0), keepalive[:11]), ErrTruncated, 0},
		{"second TLV overrun", cat(hdr(1, dsoOp, 0), keepalive, []byte{0, 3, 0, 1}), ErrTruncated, 0},
		{"max length overrun", cat(hdr(1, dsoOp, 0), []byte{0, 3, 0xff, 0xff}), ErrTruncated, 0},
		{"keepalive", cat(hdr(1, dsoOp, 0), keepalive), nil, 1},
		{"zero-length TLV", cat(hdr(1, dsoOp, 0), []byte{0, 3, 0, 0}), nil, 1},
		{"three TLVs", cat(hdr(1, dsoOp, 0), keepalive, []byte{0, 3, 0, 0}, []byte{0, 3, 0, 2, 0, 0}), nil, 3},
		{"unused flag bits ignored", cat(hdr(1, dsoOp|0x7, 0x70), keepalive), nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse(tc.msg)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("Parse error %v, want %v", err, tc.err)
			}
			if err != nil {
				if tc.err != ErrNotDSO && !errors.Is(err, ErrFormat) {
					t.Errorf("%v does not match ErrFormat", err)
				}
				return
			}
			n := 0
			for it := m.TLVs(); ; n++ {
				if _, ok := it.Next(); !ok {
					break
				}
			}
			if n != tc.tlvs {
				t.Errorf("%d TLVs, want %d", n, tc.tlvs)
			}
		})
	}
	if errors.Is(ErrNotDSO, ErrFormat) {
		t.Error("ErrNotDSO matches ErrFormat: a server could not tell a query from garbage")
	}
}

func TestParseFields(t *testing.T) {
	m, err := Parse(cat(hdr(0xBEEF, 0x80|dsoOp, 11), []byte{0, 2, 0, 4, 0, 0, 0, 7}))
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != 0xBEEF || !m.Response || m.Rcode != RcodeDSOTypeNI || m.Unidirectional() {
		t.Errorf("got %+v", m)
	}
	p, ok := m.Primary()
	if !ok || p.Type != TypeRetryDelay || p.Offset != 16 || string(p.Data) != "\x00\x00\x00\x07" {
		t.Errorf("primary %+v %v", p, ok)
	}
	if ms, err := ParseRetryDelay(p); err != nil || ms != 7 {
		t.Errorf("retry delay %d %v", ms, err)
	}
	var it TLVIter
	if _, ok := it.Next(); ok {
		t.Error("zero TLVIter yielded a TLV")
	}
}

func TestTypeName(t *testing.T) {
	for typ, want := range map[uint16]string{1: "KEEPALIVE", 2: "RETRY-DELAY", 3: "ENCRYPTION-PADDING",
		0x40: "SUBSCRIBE", 0x41: "PUSH", 0x42: "UNSUBSCRIBE", 0x43: "RECONFIRM", 0xF800: "TYPE0xF800", 0: "TYPE0x0000"} {
		if got := TypeName(typ); got != want {
			t.Errorf("TypeName(%#x) = %q, want %q", typ, got, want)
		}
	}
}
