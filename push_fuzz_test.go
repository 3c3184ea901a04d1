package llq

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/llqdns/llq/dso"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// FuzzSession drives a DSO session's state machine with a stream of
// messages (each with its 2-byte length, as on the wire): whatever they
// say, handling them must not panic, every message the session queues must
// be a well-formed DSO or DNS message, and once the session ends (on a fatal
// message or at the end of the input) it must leave no subscription and no
// topic behind.
func FuzzSession(f *testing.F) {
	env, _ := newPushEnv(f, nil)
	var b dso.Builder
	frame := func(build func()) []byte { build(); return append([]byte(nil), b.Frame()...) }
	sub := func(id uint16, name string, t uint16) []byte {
		return frame(func() { b.Start(id, false, 0); b.Subscribe(dns.Question{Name: name, Qtype: t, Qclass: dns.ClassINET}) })
	}
	ka := frame(func() { b.Start(7, false, 0); b.Keepalive(dso.Keepalive{Inactivity: 1000, Interval: 20000}) })
	unsub := frame(func() { b.Start(0, false, 0); b.Unsubscribe(1) })
	unsubQ := frame(func() {
		b.Start(0, false, 0)
		b.UnsubscribeQuestion(dns.Question{Name: "www.example.org.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	})
	reconfirm := frame(func() { b.Start(0, false, 0); b.Reconfirm(mustRR(f, "www.example.org. 1 IN A 192.0.2.1")) })
	unknown := frame(func() { b.Start(9, false, 0); b.TLV(0xF900, []byte{1}) })
	// Private LLQ: a setup on the session, an event ack, a refresh and a
	// terminate (their IDs will not match: the fuzzer finds its way).
	q := dns.Question{Name: "www.example.org.", Qtype: dns.TypeA, Qclass: dns.ClassINET}
	llq := func(o *dns.EDNS0_LLQ, response bool) []byte {
		m := llqMsg(3, 1232, []dns.Question{q}, o)
		m.Response = response
		return dso.AppendFrame(nil, packMsg(f, m))
	}
	private := append(append(llq(setupOpt(0, 3600), false), llq(wire.NewOption(wire.OpEvent, 0, 1, 3600), true)...),
		append(llq(refreshOpt(1, 3600), false), llq(refreshOpt(1, 0), false)...)...)
	// Bad input on the session (TestPrivateLLQBadInput): an ack for an
	// unknown LLQ, a challenge response with an ID never issued, oversize
	// and short LLQ options, an unknown LLQ opcode, and two questions in
	// one setup.
	two := llqMsg(4, 1232, []dns.Question{q, {Name: "ns1.example.org.", Qtype: dns.TypeA, Qclass: dns.ClassINET}}, setupOpt(0, 3600), setupOpt(0, 60))
	badLLQ := append(append(llq(wire.NewOption(wire.OpEvent, 0, 0xdead, 3600), true), llq(setupOpt(0xbeef, 3600), false)...),
		append(dso.AppendFrame(nil, resizeOption(packMsg(f, llqMsg(5, 1232, []dns.Question{q}, setupOpt(0, 3600))), 2)),
			dso.AppendFrame(nil, resizeOption(packMsg(f, llqMsg(6, 1232, []dns.Question{q}, setupOpt(0, 3600))), -4))...)...)
	badLLQ = append(append(badLLQ, llq(wire.NewOption(9, 0, 0, 3600), false)...), dso.AppendFrame(nil, packMsg(f, two))...)
	seeds := [][]byte{
		private,
		badLLQ,
		append(append(llq(setupOpt(0, 3600), false), sub(1, "www.example.org.", dns.TypeA)...), unsub...),
		sub(1, "www.example.org.", dns.TypeA),
		append(append(ka, sub(1, "www.example.org.", dns.TypeANY)...), unsub...),
		append(append(sub(1, "www.example.org.", dns.TypeA), sub(2, "nope.example.net.", dns.TypeA)...), unsubQ...),
		append(append(sub(1, "www.example.org.", dns.TypeA), reconfirm...), unknown...),
		append(sub(1, "www.example.org.", dns.TypeA), sub(1, "ns1.example.org.", dns.TypeA)...),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	p := env.e.push
	f.Fuzz(func(t *testing.T, in []byte) {
		s := newSession(p, nil, netip.MustParseAddrPort("127.0.0.3:5000"))
		for len(in) >= 2 {
			n := int(binary.BigEndian.Uint16(in))
			if n > len(in)-2 {
				break
			}
			msg := in[2 : 2+n]
			in = in[2+n:]
			if !s.handle(msg) {
				break
			}
		}
		s.out.mu.Lock()
		items := s.out.items
		s.out.mu.Unlock()
		for _, it := range items {
			if it.frame == nil {
				continue
			}
			if m, err := dso.Parse(it.frame[2:]); err != nil && err != dso.ErrNotDSO {
				t.Fatalf("queued a malformed message: %v", err)
			} else if err == dso.ErrNotDSO {
				if new(dns.Msg).Unpack(it.frame[2:]) != nil {
					t.Fatalf("queued a malformed DNS message")
				}
			} else if !m.Response && !m.Unidirectional() {
				t.Fatalf("the server sent a request")
			}
		}
		s.end()
		if st := env.e.Stats(); st.PushSubs != 0 || st.Topics != 0 || st.LLQs != 0 {
			t.Fatalf("left behind: %+v", st)
		}
	})
}
