package dso

import (
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"

	"github.com/llqdns/llq/internal/tsharktest"
	"github.com/miekg/dns"
)

// TestTsharkDecodes writes a session of DSO messages built by this package
// into a pcap file as TCP segments on port 53 and has Wireshark's DSO
// dissector, a decoder we did not write, read them back.
func TestTsharkDecodes(t *testing.T) {
	_, err := exec.LookPath("tshark")
	if err != nil {
		t.Skip("tshark is not installed (Debian package tshark; .ci/run installs it): DSO bytes not checked by Wireshark's dissector")
	}
	type want struct {
		id, rcode           int
		response            bool
		types               []uint16
		lens                []int
		inactivity, keepint string
		retry               string
		data                []byte // DSO-DATA of the primary TLV
	}
	var b Builder
	var frames [][]byte
	var wants []want
	record := func(fromClient bool, w want) {
		m := b.Message()
		parsed, err := Parse(m)
		if err != nil {
			t.Fatal(err)
		}
		for it := parsed.TLVs(); ; {
			tlv, ok := it.Next()
			if !ok {
				break
			}
			w.types = append(w.types, tlv.Type)
			w.lens = append(w.lens, len(tlv.Data))
			if w.data == nil {
				w.data = tlv.Data
			}
		}
		w.data = append([]byte(nil), w.data...)
		frames = append(frames, append([]byte{boolByte(fromClient)}, b.Frame()...))
		wants = append(wants, w)
	}
	b.Start(1, false, 0)
	b.Keepalive(Keepalive{15000, 3600000})
	record(true, want{id: 1, inactivity: "15000", keepint: "3600000"})
	b.Start(1, true, 0)
	b.Keepalive(Keepalive{Infinite, 3600000})
	b.Padding(4)
	record(false, want{id: 1, response: true, inactivity: "4294967295", keepint: "3600000"})
	b.Start(2, false, 0)
	if err := b.Subscribe(dns.Question{Name: "_ipp._tcp.example.org.", Qtype: dns.TypePTR, Qclass: dns.ClassINET}); err != nil {
		t.Fatal(err)
	}
	record(true, want{id: 2})
	b.Start(2, true, 0)
	record(false, want{id: 2, response: true})
	pushOf(t, &b, append(rrs(t,
		"_ipp._tcp.example.org. 120 IN PTR a._ipp._tcp.example.org.",
		"a._ipp._tcp.example.org. 120 IN SRV 0 0 631 host.example.org.",
		"host.example.org. 4294967295 IN A 192.0.2.1"),
		CollectiveRemove("old.example.org.", dns.TypeANY, dns.ClassINET)))
	record(false, want{id: 0})
	b.Start(0, false, 0)
	b.Unsubscribe(2)
	record(true, want{id: 0})
	b.Start(3, true, RcodeDSOTypeNI)
	record(false, want{id: 3, response: true, rcode: RcodeDSOTypeNI})
	b.Start(0, false, dns.RcodeServerFailure)
	b.RetryDelay(60000)
	record(false, want{id: 0, rcode: dns.RcodeServerFailure, retry: "60000"})

	rows := tsharktest.Frames(t, frames, "dns.id", "dns.flags.opcode", "dns.flags.response", "dns.flags.rcode",
		"dns.dso.tlv.type", "dns.dso.tlv.length", "dns.dso.tlv.data",
		"dns.dso.tlv.keepalive.inactivity", "dns.dso.tlv.keepalive.interval", "dns.dso.tlv.retrydelay.retrydelay", "_ws.malformed")
	if len(rows) != len(wants) {
		t.Fatalf("tshark decoded %d packets, want %d: %q", len(rows), len(wants), rows)
	}
	for i, w := range wants {
		f := rows[i]
		check := func(field, got, want string) {
			t.Helper()
			if got != want {
				t.Errorf("message %d: %s = %q, want %q (line %q)", i, field, got, want, strings.Join(f, "|"))
			}
		}
		check("dns.id", f[0], hexID(w.id))
		check("dns.flags.opcode", f[1], "6")
		check("dns.flags.response", f[2], map[bool]string{true: "1", false: "0"}[w.response])
		rcode := "" // the dissector shows RCODE in responses only
		if w.response {
			rcode = itoa(w.rcode)
		}
		check("dns.flags.rcode", f[3], rcode)
		var types, lens []string
		for j := range w.types {
			types = append(types, itoa(int(w.types[j])))
			lens = append(lens, itoa(w.lens[j]))
		}
		check("dns.dso.tlv.type", f[4], strings.Join(types, ","))
		check("dns.dso.tlv.length", f[5], strings.Join(lens, ","))
		if len(w.types) > 0 && w.types[0] >= TypeSubscribe {
			// The dissector shows the DNS Push TLVs' data as bytes.
			check("dns.dso.tlv.data", strings.ReplaceAll(strings.Split(f[6], ",")[0], ":", ""), hex.EncodeToString(w.data))
		}
		check("keepalive inactivity", f[7], w.inactivity)
		check("keepalive interval", f[8], w.keepint)
		check("retry delay", f[9], w.retry)
		// Wireshark 4.0's dissector throws on a DSO message with no TLV,
		// which RFC 8490 section 5.4.4 allows for a response (the SUBSCRIBE
		// response has none): only there is "malformed" its fault.
		if len(w.types) > 0 {
			check("_ws.malformed", f[10], "")
		}
	}
}

func hexID(id int) string { return "0x" + hex.EncodeToString([]byte{byte(id >> 8), byte(id)}) }

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}
