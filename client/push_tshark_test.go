package client

import (
	"strings"
	"testing"

	"github.com/llqdns/llq/internal/tsharktest"
)

// TestPushSessionTshark records a real session of the client over TLS on
// loopback and has Wireshark's DSO dissector decode it: each message the
// client sent and received is a well-formed DSO message of the type and
// MESSAGE ID RFC 8765 prescribes at that point of the session.
func TestPushSessionTshark(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	capture := tsharktest.Start(t, p.addr.Port())
	keys, keylog := tsharktest.KeyLog(t)
	cfg := ca.ClientConfig()
	cfg.KeyLogWriter = keys

	c := dialPush(t, p, ca, PushOptions{TLS: cfg})
	s, id := subscribe(t, p, c, pushQ, rr(t, "_ipp._tcp.example.org. 60 IN PTR a._ipp._tcp.example.org."))
	nextPush(t, s.Events())
	s.Close()
	p.recv() // UNSUBSCRIBE
	c.Close()
	p.recvEOF()
	file := capture.Stop()

	rows := tsharktest.Fields(t, file, keylog, p.addr.Port(), []string{"-Y", "dns"},
		"dns.id", "dns.flags.opcode", "dns.flags.response", "dns.dso.tlv.type", "dns.dso.tlv.length",
		"dns.dso.tlv.keepalive.inactivity", "dns.dso.tlv.keepalive.interval", "_ws.malformed")
	var got []string
	for _, r := range rows {
		if r[1] != "6" {
			t.Errorf("opcode %s in %q", r[1], r)
		}
		// Wireshark 4.0 calls a DSO message without TLVs malformed; RFC
		// 8490 allows it for responses (the SUBSCRIBE response).
		if r[7] != "" && !(r[2] == "1" && r[3] == "") {
			t.Errorf("malformed: %q", r)
		}
		got = append(got, strings.Join(r[:7], " "))
	}
	sid := hexID(id)
	want := []string{
		"ID 6 0 1 8 15000 3600000", // Keepalive request: the client's wishes (15 s, 1 h)
		"ID 6 1 1 8 15000 3600000", // its response, the server's values
		sid + " 6 0 64 27  ",       // SUBSCRIBE _ipp._tcp.example.org PTR IN
		sid + " 6 1    ",           // its response: no TLV
		"0x0000 6 0 65 37  ",       // the initial PUSH: 23-byte owner, 10 bytes, "a" and a pointer to the owner
		"0x0000 6 0 66 2  ",        // UNSUBSCRIBE naming the SUBSCRIBE's ID
	}
	if len(got) != len(want) {
		t.Fatalf("tshark decoded %d DNS messages, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		w := want[i]
		if strings.HasPrefix(w, "ID ") {
			w = got[i][:6] + w[2:] // the Keepalive's ID is the client's choice
		}
		if got[i] != w {
			t.Errorf("message %d: %q, want %q", i, got[i], w)
		}
	}
	if s.Err() == nil {
		t.Error("subscription still live")
	}
}

func hexID(id uint16) string {
	const digits = "0123456789abcdef"
	return "0x" + string([]byte{digits[id>>12], digits[id>>8&15], digits[id>>4&15], digits[id&15]})
}
