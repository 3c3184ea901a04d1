package llq

import (
	"net/netip"
	"testing"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// FuzzServe feeds raw packets to the LLQ listener's message handler. Besides
// not panicking, every reply must parse, echo the request's ID, never answer
// a response, and over UDP never be larger than the request (or 512 bytes)
// unless it is an ACK carrying answers, which only a valid challenge
// response earns and which must fit the client's advertised size.
func FuzzServe(f *testing.F) {
	env := newTestEnv(f, func(c *config) { c.setupRate = 0 })
	src := netip.MustParseAddrPort("127.0.0.2:40001")
	now := time.Now()
	pack := func(m *dns.Msg) []byte { return packMsg(f, m) }

	setup := pack(llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600)))
	chID := env.e.llq.chal.issue(now, src, qNS1)
	response := pack(llqMsg(2, 1232, []dns.Question{qNS1}, setupOpt(chID, 3600)))
	id, _ := env.establish(f, src, 1232, qWWW, 3600)
	refresh := pack(llqMsg(3, 1232, []dns.Question{qWWW}, refreshOpt(id, 3600)))
	terminate := pack(llqMsg(3, 1232, []dns.Question{qWWW}, refreshOpt(id, 0)))
	ack := new(dns.Msg)
	ack.Id, ack.Response, ack.Question = 4, true, []dns.Question{qWWW}
	wire.SetOptions(ack, 1232, wire.NewOption(wire.OpEvent, wire.NoError, id, 3600))
	multi := pack(llqMsg(5, 1232, []dns.Question{qWWW, qNS1, qOther},
		setupOpt(0, 3600), setupOpt(chID, 3600), setupOpt(0, 3600)))
	small := pack(llqMsg(6, 512, []dns.Question{qWWW}, setupOpt(id, 3600)))
	tcpSetup := setupOpt(0, 3600)
	tcpSetup.Error = 5353

	for _, seed := range [][]byte{
		setup, response, refresh, terminate, pack(ack), multi, small,
		pack(llqMsg(7, 1232, []dns.Question{qWWW}, tcpSetup)),
		setup[:len(setup)-5],                          // truncated
		setup[:12],                                    // a bare header
		withOptionLength(f, setup, 19),                // bad option length
		withOptionLength(f, response, 40),             // bad option length
		compressedQuestions(f, 20, 1),                 // many questions, one option
		{0xAB, 0xCD, 0x81, 0x00, 0, 1, 0, 0, 0, 0, 0}, // a runt response
		{},
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}

	f.Fuzz(func(t *testing.T, req []byte, tcp bool) {
		in := append([]byte(nil), req...)
		out := env.e.llq.serve(req, src, tcp)
		if string(in) != string(req) {
			t.Fatalf("serve modified its input")
		}
		if out == nil {
			return
		}
		if len(req) > 2 && req[2]&0x80 != 0 {
			t.Fatalf("answered a response")
		}
		r := new(dns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatalf("reply does not parse: %v\n% x", err, out)
		}
		if !r.Response || len(req) < 2 || r.Id != uint16(req[0])<<8|uint16(req[1]) {
			t.Fatalf("reply header %v for request % x", r.MsgHdr, req)
		}
		if tcp {
			return
		}
		if len(r.Answer) > 0 {
			isACK := false
			for _, o := range wire.Options(r) {
				isACK = isACK || (o.Opcode == wire.OpSetup && o.Error == wire.NoError && o.Id != 0)
			}
			if !isACK {
				t.Fatalf("answers in a reply that is no ACK:\n%v", r)
			}
			q := new(dns.Msg)
			if err := q.Unpack(req); err != nil {
				t.Fatalf("answers for an unparseable request")
			}
			limit := dns.MinMsgSize
			if opt := q.IsEdns0(); opt != nil && int(opt.UDPSize()) > limit {
				limit = int(opt.UDPSize())
			}
			if len(out) > limit {
				t.Fatalf("%d-byte ACK for a client that takes %d", len(out), limit)
			}
			return
		}
		if len(out) > max(len(req), dns.MinMsgSize) {
			t.Fatalf("%d-byte request drew a %d-byte reply:\n%v", len(req), len(out), r)
		}
	})
}
