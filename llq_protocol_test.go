package llq

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// These tests drive (*Engine).serve, the whole RFC 8764 exchange as the
// server sees it, with a real file zone behind it.

var (
	clientA  = netip.MustParseAddrPort("127.0.0.2:40001")
	clientA2 = netip.MustParseAddrPort("127.0.0.2:40002") // same host, other port
	clientB  = netip.MustParseAddrPort("127.0.0.3:40001")
)

var (
	qWWW   = question("www.example.org.", dns.TypeA)
	qNS1   = question("ns1.example.org.", dns.TypeA)
	qOther = question("www.example.net.", dns.TypeA) // no backend serves it
)

var wwwRecords = []string{"www.example.org. 3600 IN A 192.0.2.1", "www.example.org. 3600 IN A 192.0.2.2"}

func TestSetupChallenge(t *testing.T) {
	env := newTestEnv(t, nil)
	challenged := track(t, env.e.metrics.setups.WithLabelValues("challenged"))
	req := packMsg(t, llqMsg(0x1234, 1232, []dns.Question{qWWW}, setupOpt(0, 3600)))
	r, raw := env.serveRaw(t, req, clientA, false)

	if r.Id != 0x1234 || !r.Response || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("challenge header: %v", r.MsgHdr)
	}
	if len(r.Question) != 1 || r.Question[0] != qWWW {
		t.Fatalf("challenge question %v, want %v", r.Question, qWWW)
	}
	o := only(t, r)
	wantOpt(t, o, wire.OpSetup, wire.NoError)
	if o.Id == 0 {
		t.Fatalf("challenge with LLQ ID 0")
	}
	if o.LeaseLife != 3600 {
		t.Fatalf("granted lease %d, want 3600", o.LeaseLife)
	}
	if len(r.Answer)+len(r.Ns) != 0 {
		t.Fatalf("challenge carries records: %v", r)
	}
	if len(raw) > len(req) {
		t.Fatalf("challenge is %d bytes, request %d: amplification", len(raw), len(req))
	}
	if env.e.Stats().LLQs != 0 {
		t.Fatalf("a setup request created state")
	}
	if challenged.moved(t) != 1 {
		t.Fatalf("setups{challenged} moved %v", challenged.moved(t))
	}
}

func TestSetupLeaseClamped(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.minLease, c.maxLease = 20*time.Minute, time.Hour })
	for _, tc := range []struct{ asked, granted uint32 }{
		{0, 1200}, {1, 1200}, {1199, 1200}, {1200, 1200}, {1800, 1800}, {3600, 3600}, {3601, 3600}, {0xFFFFFFFF, 3600},
	} {
		r := env.exchange(t, llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, tc.asked)), clientA, false)
		if o := only(t, r); o.Error != wire.NoError || o.LeaseLife != tc.granted {
			t.Errorf("lease %d: got %v, want lease %d", tc.asked, o, tc.granted)
		}
		// The challenge response with the granted lease completes, and the
		// ACK grants the same.
		id, ack := env.establish(t, clientA, 1232, qWWW, tc.asked)
		if o := only(t, ack); o.LeaseLife != tc.granted {
			t.Errorf("lease %d: ACK grants %d, want %d", tc.asked, o.LeaseLife, tc.granted)
		}
		env.exchange(t, llqMsg(3, 1232, []dns.Question{qWWW}, refreshOpt(id, 0)), clientA, false)
	}
}

func TestDuplicateSetupSameChallenge(t *testing.T) {
	env := newTestEnv(t, nil)
	m := llqMsg(7, 1232, []dns.Question{qWWW}, setupOpt(0, 3600))
	// The challenge is a function of the epoch: retry when the two requests
	// straddle an epoch boundary.
	for try := 0; ; try++ {
		before := epochOf(time.Now())
		a := only(t, env.exchange(t, m, clientA, false))
		b := only(t, env.exchange(t, m, clientA, false))
		if epochOf(time.Now()) != before && try < 3 {
			continue
		}
		if a.Id != b.Id || a.LeaseLife != b.LeaseLife {
			t.Fatalf("duplicate setup: %v then %v", a, b)
		}
		break
	}
	// Another client or another question gets another ID.
	a := only(t, env.exchange(t, m, clientA, false))
	if b := only(t, env.exchange(t, m, clientB, false)); a.Id == b.Id {
		t.Fatalf("two clients share challenge %x", a.Id)
	}
	if b := only(t, env.exchange(t, llqMsg(7, 1232, []dns.Question{qNS1}, setupOpt(0, 3600)), clientA, false)); a.Id == b.Id {
		t.Fatalf("two questions share challenge %x", a.Id)
	}
}

func TestChallengeResponseACK(t *testing.T) {
	env := newTestEnv(t, nil)
	established := track(t, env.e.metrics.setups.WithLabelValues("established"))
	duplicate := track(t, env.e.metrics.setups.WithLabelValues("duplicate"))
	live := track(t, env.e.metrics.liveLLQs)

	ch := only(t, env.exchange(t, llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600)), clientA, false))
	resp := llqMsg(0xBEEF, 1232, []dns.Question{qWWW}, setupOpt(ch.Id, ch.LeaseLife))
	ack := env.exchange(t, resp, clientA, false)
	if ack.Id != 0xBEEF || !ack.Response || !ack.Authoritative || ack.Truncated {
		t.Fatalf("ACK header %v", ack.MsgHdr)
	}
	o := only(t, ack)
	wantOpt(t, o, wire.OpSetup, wire.NoError)
	if o.Id != ch.Id || o.LeaseLife != 3600 {
		t.Fatalf("ACK option %v, challenge %v", o, ch)
	}
	sameRRs(t, ack.Answer, wwwRecords...)
	if st := env.e.Stats(); st.LLQs != 1 || st.Topics != 1 {
		t.Fatalf("stats after ACK: %+v", st)
	}

	// The ACK got lost: the client repeats itself and gets the answers again.
	again := env.exchange(t, resp, clientA, false)
	if o := only(t, again); o.Id != ch.Id || o.Error != wire.NoError {
		t.Fatalf("repeated ACK option %v", o)
	}
	sameRRs(t, again.Answer, wwwRecords...)
	if st := env.e.Stats(); st.LLQs != 1 || st.Topics != 1 {
		t.Fatalf("stats after repeated challenge response: %+v", st)
	}
	if established.moved(t) != 1 || duplicate.moved(t) != 1 || live.moved(t) != 1 {
		t.Fatalf("metrics: established %v duplicate %v live %v", established.moved(t), duplicate.moved(t), live.moved(t))
	}
}

func TestChallengeResponseRejected(t *testing.T) {
	env := newTestEnv(t, nil)
	bad := track(t, env.e.metrics.setups.WithLabelValues("bad-challenge"))
	noSuch := track(t, env.e.metrics.errorsSent.WithLabelValues("NO-SUCH-LLQ"))
	ch := only(t, env.exchange(t, llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600)), clientA, false))

	cases := []struct {
		name string
		src  netip.AddrPort
		q    dns.Question
		id   uint64
	}{
		{"forged", clientA, qWWW, ch.Id ^ 1},
		{"random", clientA, qWWW, 0x0123456789abcdef},
		{"other question", clientA, qNS1, ch.Id},
		{"other port", clientA2, qWWW, ch.Id},
		{"other address", clientB, qWWW, ch.Id},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := env.exchange(t, llqMsg(2, 1232, []dns.Question{tc.q}, setupOpt(tc.id, 3600)), tc.src, false)
			o := only(t, r)
			wantOpt(t, o, wire.OpSetup, wire.NoSuchLLQ)
			if len(r.Answer) != 0 {
				t.Fatalf("rejected challenge response carries answers")
			}
		})
	}
	if st := env.e.Stats(); st.LLQs != 0 {
		t.Fatalf("rejected challenge responses created %d LLQs", st.LLQs)
	}
	if bad.moved(t) != float64(len(cases)) || noSuch.moved(t) != float64(len(cases)) {
		t.Fatalf("metrics: bad-challenge %v, NO-SUCH-LLQ %v", bad.moved(t), noSuch.moved(t))
	}
	// The genuine one still works.
	if r := env.exchange(t, llqMsg(3, 1232, []dns.Question{qWWW}, setupOpt(ch.Id, 3600)), clientA, false); only(t, r).Error != wire.NoError {
		t.Fatalf("genuine challenge response refused: %v", r)
	}
}

func TestMultipleQuestions(t *testing.T) {
	env := newTestEnv(t, nil)
	qs := []dns.Question{qWWW, qNS1, qOther}
	ch := env.exchange(t, llqMsg(1, 1232, qs, setupOpt(0, 3600), setupOpt(0, 3600), setupOpt(0, 3600)), clientA, false)
	opts := wire.Options(ch)
	if len(opts) != 3 || len(ch.Question) != 3 {
		t.Fatalf("challenge has %d options for %d questions", len(opts), len(ch.Question))
	}
	wantOpt(t, opts[0], wire.OpSetup, wire.NoError)
	wantOpt(t, opts[1], wire.OpSetup, wire.NoError)
	wantOpt(t, opts[2], wire.OpSetup, wire.Static)
	if opts[0].Id == 0 || opts[1].Id == 0 || opts[0].Id == opts[1].Id {
		t.Fatalf("per-question IDs %x %x", opts[0].Id, opts[1].Id)
	}
	if len(ch.Answer) != 0 {
		t.Fatalf("challenge carries answers")
	}

	// Answer the first challenge, forge the second, repeat the static one.
	ack := env.exchange(t, llqMsg(2, 1232, qs, setupOpt(opts[0].Id, 3600), setupOpt(opts[1].Id+1, 3600), setupOpt(0, 3600)), clientA, false)
	got := wire.Options(ack)
	if len(got) != 3 {
		t.Fatalf("ACK has %d options", len(got))
	}
	wantOpt(t, got[0], wire.OpSetup, wire.NoError)
	wantOpt(t, got[1], wire.OpSetup, wire.NoSuchLLQ)
	wantOpt(t, got[2], wire.OpSetup, wire.Static)
	if got[0].Id != opts[0].Id {
		t.Fatalf("ACK ID %x, challenge %x", got[0].Id, opts[0].Id)
	}
	sameRRs(t, ack.Answer, wwwRecords...)
	if st := env.e.Stats(); st.LLQs != 1 {
		t.Fatalf("%d LLQs, want 1", st.LLQs)
	}
}

func TestRefresh(t *testing.T) {
	env := newTestEnv(t, nil)
	id, _ := env.establish(t, clientA, 1232, qWWW, 1000)
	refreshed := track(t, env.e.metrics.refreshes)

	for _, tc := range []struct{ asked, granted uint32 }{{3000, 3000}, {100000, 7200}, {10, 900}} {
		r := env.exchange(t, llqMsg(9, 1232, []dns.Question{qWWW}, refreshOpt(id, tc.asked)), clientA, false)
		if r.Id != 9 || len(r.Answer) != 0 {
			t.Fatalf("refresh reply %v", r)
		}
		o := only(t, r)
		wantOpt(t, o, wire.OpRefresh, wire.NoError)
		if o.Id != id || o.LeaseLife != tc.granted {
			t.Fatalf("refresh %d: got %v, want ID %x lease %d", tc.asked, o, id, tc.granted)
		}
		env.e.mu.Lock()
		left := env.e.llq.subs[id].remaining(time.Now())
		env.e.mu.Unlock()
		if left > tc.granted || left < tc.granted-5 {
			t.Fatalf("lease left %d after granting %d", left, tc.granted)
		}
	}
	// Another port of the same host may refresh (NAT rebinding)...
	if o := only(t, env.exchange(t, llqMsg(9, 1232, []dns.Question{qWWW}, refreshOpt(id, 3600)), clientA2, false)); o.Error != wire.NoError {
		t.Fatalf("refresh from another port: %v", o)
	}
	if refreshed.moved(t) != 4 {
		t.Fatalf("refreshes moved %v", refreshed.moved(t))
	}
	// ...but another host, another question or an unknown ID may not.
	for name, m := range map[string]struct {
		src netip.AddrPort
		q   dns.Question
		id  uint64
	}{
		"other host":     {clientB, qWWW, id},
		"other question": {clientA, qNS1, id},
		"unknown id":     {clientA, qWWW, id ^ 0xFF},
	} {
		r := env.exchange(t, llqMsg(9, 1232, []dns.Question{m.q}, refreshOpt(m.id, 3600)), m.src, false)
		if o := only(t, r); o.Opcode != wire.OpRefresh || o.Error != wire.NoSuchLLQ {
			t.Errorf("%s: %v, want NO-SUCH-LLQ", name, o)
		}
	}
	if st := env.e.Stats(); st.LLQs != 1 {
		t.Fatalf("%d LLQs, want 1", st.LLQs)
	}
}

func TestTerminate(t *testing.T) {
	env := newTestEnv(t, nil)
	id, _ := env.establish(t, clientA, 1232, qWWW, 3600)
	ns1, _ := env.establish(t, clientA, 1232, qNS1, 3600)
	terminated := track(t, env.e.metrics.terminations)
	env.e.mu.Lock()
	sub := env.e.llq.subs[id]
	env.e.mu.Unlock()

	r := env.exchange(t, llqMsg(5, 1232, []dns.Question{qWWW}, refreshOpt(id, 0)), clientA, false)
	o := only(t, r)
	wantOpt(t, o, wire.OpRefresh, wire.NoError)
	if o.Id != id || o.LeaseLife != 0 || len(r.Answer) != 0 {
		t.Fatalf("terminate reply %v", r)
	}
	if st := env.e.Stats(); st.LLQs != 1 || st.Topics != 1 {
		t.Fatalf("stats after terminate: %+v", st)
	}
	env.e.sched.mu.Lock()
	armed := sub.expiry.index >= 0
	env.e.sched.mu.Unlock()
	if armed {
		t.Fatalf("the terminated LLQ's lease timer is still armed")
	}
	if terminated.moved(t) != 1 {
		t.Fatalf("terminations moved %v", terminated.moved(t))
	}
	// It is gone: refreshing or terminating it again is NO-SUCH-LLQ.
	if o := only(t, env.exchange(t, llqMsg(6, 1232, []dns.Question{qWWW}, refreshOpt(id, 0)), clientA, false)); o.Error != wire.NoSuchLLQ {
		t.Fatalf("second terminate: %v", o)
	}
	// The other LLQ lives on.
	if o := only(t, env.exchange(t, llqMsg(7, 1232, []dns.Question{qNS1}, refreshOpt(ns1, 3600)), clientA, false)); o.Error != wire.NoError {
		t.Fatalf("refresh of the other LLQ: %v", o)
	}
}

func TestBadLLQVersion(t *testing.T) {
	env := newTestEnv(t, nil)
	for _, op := range []uint16{wire.OpSetup, wire.OpRefresh} {
		o := wire.NewOption(op, wire.NoError, 0, 3600)
		o.Version = 2
		r := env.exchange(t, llqMsg(1, 1232, []dns.Question{qWWW}, o), clientA, false)
		got := only(t, r)
		if got.Error != wire.BadVers || got.Version != wire.Version {
			t.Fatalf("LLQ version 2 (%s): %v, want BAD-VERS with version 1", wire.OpName(op), got)
		}
	}
}

func TestBadEDNSVersion(t *testing.T) {
	env := newTestEnv(t, nil)
	m := llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600))
	m.IsEdns0().SetVersion(1)
	r := env.exchange(t, m, clientA, false)
	if r.Rcode != dns.RcodeBadVers {
		t.Fatalf("rcode %s, want BADVERS", dns.RcodeToString[r.Rcode])
	}
	opt := r.IsEdns0()
	if opt == nil || opt.Version() != 0 {
		t.Fatalf("BADVERS reply must carry an OPT of version 0: %v", r)
	}
}

// withOptionLength rewrites the LLQ option of a packed message, which must
// be the last thing in it, to claim n bytes, padding or cutting its data.
func withOptionLength(t testing.TB, b []byte, n int) []byte {
	t.Helper()
	start := len(b) - 4 - wire.OptionLen // option code
	if binary.BigEndian.Uint16(b[start:]) != dns.EDNS0LLQ {
		t.Fatalf("LLQ option is not last")
	}
	out := append([]byte(nil), b[:start+4]...)
	binary.BigEndian.PutUint16(out[start+2:], uint16(n))
	data := append([]byte(nil), b[start+4:]...)
	for len(data) < n {
		data = append(data, 0)
	}
	out = append(out, data[:n]...)
	rdlen := start - 2
	binary.BigEndian.PutUint16(out[rdlen:], binary.BigEndian.Uint16(b[rdlen:])+uint16(n-wire.OptionLen))
	return out
}

func TestOptionLength(t *testing.T) {
	env := newTestEnv(t, nil)
	raw := packMsg(t, llqMsg(0x4242, 1232, []dns.Question{qWWW}, setupOpt(0, 3600)))
	for _, n := range []int{19, 20, 40} {
		r, _ := env.serveRaw(t, withOptionLength(t, raw, n), clientA, false)
		if r.Rcode != dns.RcodeFormatError || r.Id != 0x4242 {
			t.Fatalf("length %d: rcode %s id %x", n, dns.RcodeToString[r.Rcode], r.Id)
		}
		if o := only(t, r); o.Error != wire.FormatErr {
			t.Fatalf("length %d: option %v, want FORMAT-ERR", n, o)
		}
	}
	// Too short for miekg/dns to parse at all: a bare FORMERR header.
	out := env.e.llq.serve(withOptionLength(t, raw, 17), clientA, false)
	if len(out) != 12 || out[0] != 0x42 || out[1] != 0x42 || out[2]&0x80 == 0 || out[3]&0x0F != dns.RcodeFormatError {
		t.Fatalf("length 17: reply % x, want a FORMERR header", out)
	}
	// The exact length passes.
	if r, _ := env.serveRaw(t, withOptionLength(t, raw, 18), clientA, false); only(t, r).Error != wire.NoError {
		t.Fatalf("length 18 refused: %v", r)
	}
}

func TestOptionCountMismatch(t *testing.T) {
	env := newTestEnv(t, nil)
	for name, m := range map[string]*dns.Msg{
		"two options, one question": llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600), setupOpt(0, 3600)),
		"one option, two questions": llqMsg(1, 1232, []dns.Question{qWWW, qNS1}, setupOpt(0, 3600)),
		"no question":               llqMsg(1, 1232, nil, setupOpt(0, 3600)),
	} {
		r := env.exchange(t, m, clientA, false)
		if r.Rcode != dns.RcodeFormatError {
			t.Errorf("%s: rcode %s, want FORMERR", name, dns.RcodeToString[r.Rcode])
		}
		for _, o := range wire.Options(r) {
			if o.Error != wire.FormatErr {
				t.Errorf("%s: option %v, want FORMAT-ERR", name, o)
			}
		}
	}
	if st := env.e.Stats(); st.LLQs != 0 {
		t.Fatalf("malformed requests created LLQs")
	}
}

func TestBadOpcodes(t *testing.T) {
	env := newTestEnv(t, nil)
	for _, op := range []uint16{wire.OpEvent, 0, 4, 0xFFFF} {
		o := wire.NewOption(op, wire.NoError, 0, 3600)
		r := env.exchange(t, llqMsg(1, 1232, []dns.Question{qWWW}, o), clientA, false)
		if got := only(t, r); got.Error != wire.FormatErr || got.Opcode != op {
			t.Errorf("LLQ opcode %d in a query: %v, want FORMAT-ERR", op, got)
		}
	}
}

func TestStatic(t *testing.T) {
	env := newTestEnv(t, nil)
	static := track(t, env.e.metrics.setups.WithLabelValues("static"))
	r := env.exchange(t, llqMsg(1, 1232, []dns.Question{qOther}, setupOpt(0, 3600)), clientA, false)
	if o := only(t, r); o.Error != wire.Static || len(r.Answer) != 0 {
		t.Fatalf("out-of-zone setup: %v", r)
	}
	if static.moved(t) != 1 {
		t.Fatalf("setups{static} moved %v", static.moved(t))
	}
}

func TestMaxLLQs(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.maxLLQs = 1 })
	full := track(t, env.e.metrics.limitRejections.WithLabelValues("max-llqs"))
	// B is challenged while there is room; then A takes the only slot.
	chB := only(t, env.exchange(t, llqMsg(1, 1232, []dns.Question{qNS1}, setupOpt(0, 3600)), clientB, false))
	env.establish(t, clientA, 1232, qWWW, 3600)

	// At setup...
	r := env.exchange(t, llqMsg(1, 1232, []dns.Question{qNS1}, setupOpt(0, 3600)), clientB, false)
	o := only(t, r)
	wantOpt(t, o, wire.OpSetup, wire.ServFull)
	if o.LeaseLife != 300 {
		t.Fatalf("SERV-FULL retry-after %d, want 300", o.LeaseLife)
	}
	// ...and at the challenge response.
	r = env.exchange(t, llqMsg(2, 1232, []dns.Question{qNS1}, setupOpt(chB.Id, 3600)), clientB, false)
	o = only(t, r)
	wantOpt(t, o, wire.OpSetup, wire.ServFull)
	if o.LeaseLife != 300 || len(r.Answer) != 0 {
		t.Fatalf("challenge response when full: %v", r)
	}
	if st := env.e.Stats(); st.LLQs != 1 {
		t.Fatalf("%d LLQs beyond max-llqs 1", st.LLQs)
	}
	if full.moved(t) != 2 {
		t.Fatalf("limit_rejections{max-llqs} moved %v", full.moved(t))
	}
}

func TestMaxLLQsPerClient(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.maxPerClient = 1 })
	full := track(t, env.e.metrics.limitRejections.WithLabelValues("max-llqs-per-client"))
	ch := only(t, env.exchange(t, llqMsg(1, 1232, []dns.Question{qNS1}, setupOpt(0, 3600)), clientA, false))
	env.establish(t, clientA, 1232, qWWW, 3600)

	r := env.exchange(t, llqMsg(1, 1232, []dns.Question{qNS1}, setupOpt(0, 3600)), clientA2, false)
	if o := only(t, r); o.Error != wire.ServFull || o.LeaseLife != 300 {
		t.Fatalf("setup beyond the per-client limit: %v", o)
	}
	r = env.exchange(t, llqMsg(2, 1232, []dns.Question{qNS1}, setupOpt(ch.Id, 3600)), clientA, false)
	if o := only(t, r); o.Error != wire.ServFull || o.LeaseLife != 300 || len(r.Answer) != 0 {
		t.Fatalf("challenge response beyond the per-client limit: %v", r)
	}
	// Another client is not affected.
	env.establish(t, clientB, 1232, qNS1, 3600)
	if full.moved(t) != 2 {
		t.Fatalf("limit_rejections{max-llqs-per-client} moved %v", full.moved(t))
	}
}

func TestSetupRate(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.setupRate, c.setupBurst = 0.5, 1 })
	limited := track(t, env.e.metrics.limitRejections.WithLabelValues("setup-rate"))
	env.establish(t, clientA, 1232, qWWW, 3600)
	ch := only(t, env.exchange(t, llqMsg(1, 1232, []dns.Question{qNS1}, setupOpt(0, 3600)), clientA, false))
	r := env.exchange(t, llqMsg(2, 1232, []dns.Question{qNS1}, setupOpt(ch.Id, 3600)), clientA, false)
	o := only(t, r)
	wantOpt(t, o, wire.OpSetup, wire.ServFull)
	if o.LeaseLife < 1 || o.LeaseLife > 3 {
		t.Fatalf("retry-after %d, want about 2 s at 0.5 setups/s", o.LeaseLife)
	}
	if limited.moved(t) != 1 {
		t.Fatalf("limit_rejections{setup-rate} moved %v", limited.moved(t))
	}
	// The budget is per address.
	env.establish(t, clientB, 1232, qNS1, 3600)
}

func TestNonLLQQueryRefused(t *testing.T) {
	env := newTestEnv(t, nil)
	plain := new(dns.Msg)
	plain.SetQuestion("www.example.org.", dns.TypeA)
	withEDNS := plain.Copy()
	withEDNS.SetEdns0(1232, false)
	for name, m := range map[string]*dns.Msg{"plain": plain, "edns": withEDNS} {
		r := env.exchange(t, m, clientA, false)
		if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 || r.Id != m.Id {
			t.Errorf("%s query on the LLQ listener: %v", name, r)
		}
	}
	// Other opcodes are not implemented here.
	notify := llqMsg(3, 1232, []dns.Question{qWWW}, setupOpt(0, 3600))
	notify.Opcode = dns.OpcodeNotify
	if r := env.exchange(t, notify, clientA, false); r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("NOTIFY: rcode %s", dns.RcodeToString[r.Rcode])
	}
}

func TestGarbage(t *testing.T) {
	env := newTestEnv(t, nil)
	for i := 0; i < 200; i++ {
		b := make([]byte, 1+i%40)
		rand.Read(b)
		if i%2 == 0 && len(b) > 2 {
			b[2] &^= 0x80 // a query
		}
		out := env.e.llq.serve(b, clientA, false)
		if out == nil {
			continue
		}
		if len(b) > 2 && b[2]&0x80 != 0 {
			t.Fatalf("answered a response % x with % x", b, out)
		}
		r := unpackMsg(t, out)
		if !r.Response || r.Id != binary.BigEndian.Uint16(b) {
			t.Fatalf("reply % x to % x", out, b)
		}
	}
	// Unparseable queries get a bare FORMERR header...
	q := []byte{0xAB, 0xCD, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x05, 'x'}
	out := env.e.llq.serve(q, clientA, false)
	if !bytes.Equal(out, []byte{0xAB, 0xCD, 0x80, dns.RcodeFormatError, 0, 0, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("FORMERR header % x", out)
	}
	// ...unparseable responses and runts nothing.
	q[2] |= 0x80
	if out := env.e.llq.serve(q, clientA, false); out != nil {
		t.Fatalf("answered a broken response: % x", out)
	}
	if out := env.e.llq.serve([]byte{1, 2, 3}, clientA, false); out != nil {
		t.Fatalf("answered a runt: % x", out)
	}
	// A well-formed response that is no event ack is ignored too.
	resp := llqMsg(9, 1232, []dns.Question{qWWW}, setupOpt(0, 3600))
	resp.Response = true
	if out := env.e.llq.serve(packMsg(t, resp), clientA, false); out != nil {
		t.Fatalf("answered a response: % x", out)
	}
}

func TestTCPSetup(t *testing.T) {
	env := newTestEnv(t, nil)
	tcpSrc := netip.MustParseAddrPort("127.0.0.2:50123")

	// mDNSResponder names its UDP event port in ERROR.
	o := setupOpt(0, 3600)
	o.Error = 5353
	r := env.exchange(t, llqMsg(0, 1232, []dns.Question{qWWW}, o), tcpSrc, true)
	got := only(t, r)
	wantOpt(t, got, wire.OpSetup, wire.NoError)
	if got.Id == 0 || got.LeaseLife != 3600 {
		t.Fatalf("TCP ACK option %v", got)
	}
	sameRRs(t, r.Answer, wwwRecords...)
	env.e.mu.Lock()
	s := env.e.llq.subs[got.Id]
	env.e.mu.Unlock()
	if s == nil || s.client != netip.MustParseAddrPort("127.0.0.2:5353") {
		t.Fatalf("events go to %v, want 127.0.0.2:5353", s)
	}

	// Without a port in ERROR, events go to the TCP source port.
	r = env.exchange(t, llqMsg(0, 1232, []dns.Question{qNS1}, setupOpt(0, 3600)), tcpSrc, true)
	id := only(t, r).Id
	env.e.mu.Lock()
	s = env.e.llq.subs[id]
	env.e.mu.Unlock()
	if s == nil || s.client != tcpSrc {
		t.Fatalf("events go to %v, want %v", s, tcpSrc)
	}

	// An unknown non-zero ID over TCP is no challenge response.
	r = env.exchange(t, llqMsg(0, 1232, []dns.Question{qWWW}, setupOpt(12345, 3600)), tcpSrc, true)
	if o := only(t, r); o.Error != wire.NoSuchLLQ {
		t.Fatalf("unknown ID over TCP: %v", o)
	}

	// A refresh over TCP moves events to the port in ERROR.
	ro := refreshOpt(id, 3600)
	ro.Error = 6000
	if o := only(t, env.exchange(t, llqMsg(0, 1232, []dns.Question{qNS1}, ro), netip.MustParseAddrPort("127.0.0.2:50999"), true)); o.Error != wire.NoError {
		t.Fatalf("TCP refresh: %v", o)
	}
	env.e.mu.Lock()
	to := env.e.llq.subs[id].client
	env.e.mu.Unlock()
	if to != netip.MustParseAddrPort("127.0.0.2:6000") {
		t.Fatalf("events go to %v after a TCP refresh naming port 6000", to)
	}
}

// An ACK whose answers do not fit the client's UDP size is never TC-only:
// it carries what fits and the rest follows as events, acknowledged and
// retransmitted like any; the client ends up with the whole set.
func TestOversizeACKRestAsEvents(t *testing.T) {
	env := newTestEnv(t, nil)
	big := bigTXT("big", 30, 200)
	swapZone(t, env.zone, withRecords(big...))
	q := question("big.example.org.", dns.TypeTXT)
	c := newUDPClient(t)

	ch := only(t, env.exchange(t, llqMsg(1, 512, []dns.Question{q}, setupOpt(0, 3600)), c.addr, false))
	if ch.Error != wire.NoError {
		t.Fatalf("challenge %v", ch)
	}
	acked := track(t, env.e.metrics.acks)
	resp := llqMsg(2, 512, []dns.Question{q}, setupOpt(ch.Id, 3600))
	r, raw := env.serveRaw(t, packMsg(t, resp), c.addr, false)
	if r.Truncated || len(r.Answer) == 0 {
		t.Fatalf("oversize UDP ACK: TC=%v with %d answers, want what fits and no TC", r.Truncated, len(r.Answer))
	}
	if len(raw) > 512 {
		t.Fatalf("ACK is %d bytes", len(raw))
	}
	if o := only(t, r); o.Error != wire.NoError || o.Id != ch.Id {
		t.Fatalf("ACK option %v", o)
	}
	held := rrStrings(r.Answer)
	packets := 0
	for len(held) < len(big) {
		ev, n := c.read(t, wait)
		wantEvent(t, ev, q, ch.Id)
		if n > 512 {
			t.Fatalf("event of %d bytes to a 512-byte client", n)
		}
		held = append(held, rrStrings(ev.Answer)...)
		env.ack(t, c, ev)
		packets++
	}
	if got := len(slices.Compact(sortedStrings(held))); got != len(big) {
		t.Fatalf("ACK and events hold %d distinct records, want %d", got, len(big))
	}
	eventually(t, "the events' acks", func() bool { return acked.moved(t) == float64(packets) }, wait)
	if st := env.e.Stats(); st.LLQs != 1 {
		t.Fatalf("want the one LLQ: %+v", st)
	}
	// A repeat over TCP still gets the whole set in one ACK.
	r = env.exchange(t, resp, c.addr, true)
	if r.Truncated || len(r.Answer) != len(big) {
		t.Fatalf("TCP ACK: TC=%v with %d answers, want %d", r.Truncated, len(r.Answer), len(big))
	}
}

func sortedStrings(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestLeaseExpiry(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.minLease, c.maxLease = time.Second, time.Second })
	expired := track(t, env.e.metrics.expirations)
	live := track(t, env.e.metrics.liveLLQs)
	id, ack := env.establish(t, clientA, 1232, qWWW, 3600)
	if o := only(t, ack); o.LeaseLife != 1 {
		t.Fatalf("granted %d, want 1", o.LeaseLife)
	}
	eventually(t, "the LLQ to expire", func() bool { return env.e.Stats().LLQs == 0 }, 5*time.Second)
	if st := env.e.Stats(); st.Topics != 0 {
		t.Fatalf("topic outlived its last LLQ: %+v", st)
	}
	if expired.moved(t) != 1 || live.moved(t) != 0 {
		t.Fatalf("expirations moved %v, subscriptions %v", expired.moved(t), live.moved(t))
	}
	if o := only(t, env.exchange(t, llqMsg(3, 1232, []dns.Question{qWWW}, refreshOpt(id, 1)), clientA, false)); o.Error != wire.NoSuchLLQ {
		t.Fatalf("refresh after expiry: %v", o)
	}
}

// A refresh keeps an LLQ alive past its first lease.
func TestRefreshPostponesExpiry(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.minLease, c.maxLease = time.Second, time.Hour })
	id, _ := env.establish(t, clientA, 1232, qWWW, 1)
	if o := only(t, env.exchange(t, llqMsg(3, 1232, []dns.Question{qWWW}, refreshOpt(id, 3600)), clientA, false)); o.LeaseLife != 3600 {
		t.Fatalf("refresh: %v", o)
	}
	// The old expiry time passes; the LLQ stays.
	expired := track(t, env.e.metrics.expirations)
	time.Sleep(1500 * time.Millisecond)
	if st := env.e.Stats(); st.LLQs != 1 || expired.moved(t) != 0 {
		t.Fatalf("refreshed LLQ expired at its old lease: %+v", st)
	}
}

func TestErrorMetrics(t *testing.T) {
	env := newTestEnv(t, nil)
	for _, code := range []uint16{wire.Static, wire.FormatErr, wire.NoSuchLLQ, wire.BadVers} {
		d := track(t, env.e.metrics.errorsSent.WithLabelValues(wire.ErrorName(code)))
		var m *dns.Msg
		switch code {
		case wire.Static:
			m = llqMsg(1, 1232, []dns.Question{qOther}, setupOpt(0, 3600))
		case wire.FormatErr:
			m = llqMsg(1, 1232, []dns.Question{qWWW}, wire.NewOption(9, 0, 0, 0))
		case wire.NoSuchLLQ:
			m = llqMsg(1, 1232, []dns.Question{qWWW}, refreshOpt(77, 3600))
		case wire.BadVers:
			o := setupOpt(0, 3600)
			o.Version = 9
			m = llqMsg(1, 1232, []dns.Question{qWWW}, o)
		}
		if o := only(t, env.exchange(t, m, clientA, false)); o.Error != code {
			t.Fatalf("got %v, want %s", o, wire.ErrorName(code))
		}
		if d.moved(t) != 1 {
			t.Errorf("errors_total{%s} moved %v", wire.ErrorName(code), d.moved(t))
		}
	}
	d := track(t, env.e.metrics.errorsSent.WithLabelValues("BADVERS"))
	m := llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600))
	m.IsEdns0().SetVersion(3)
	env.exchange(t, m, clientA, false)
	if d.moved(t) != 1 {
		t.Errorf("errors_total{BADVERS} moved %v", d.moved(t))
	}
}

// compressedQuestions builds a query whose n questions all point at the
// first one's long name: a few bytes each on the wire.
func compressedQuestions(t testing.TB, n int, llqOpts int) []byte {
	t.Helper()
	long := ""
	for len(long) < 200 {
		long += "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuv."
	}
	first := question(long+"example.org.", dns.TypeA)
	m := llqMsg(1, 1232, []dns.Question{first})
	for i := 0; i < llqOpts; i++ {
		m.IsEdns0().Option = append(m.IsEdns0().Option, setupOpt(0, 3600))
	}
	b := packMsg(t, m)
	// Splice n-1 more questions, each a pointer to the first name, in
	// after the first question.
	qend := 12 + len(first.Name) + 1 + 4
	extra := make([]byte, 0, 6*(n-1))
	for i := 1; i < n; i++ {
		extra = append(extra, 0xC0, 12, 0, byte(dns.TypeA), 0, 1)
	}
	out := append(append(append([]byte(nil), b[:qend]...), extra...), b[qend:]...)
	binary.BigEndian.PutUint16(out[4:], uint16(n))
	return out
}

// No reply may be larger than the request that caused it, except an ACK to a
// valid challenge response: the listener must not amplify spoofed traffic.
func TestNoAmplification(t *testing.T) {
	env := newTestEnv(t, nil)
	for _, tc := range []struct {
		name string
		opts int
	}{
		{"refused", 0},       // no LLQ option: REFUSED
		{"formerr", 1},       // 1 option for 100 questions
		{"too many opts", 3}, // still a mismatch
	} {
		req := compressedQuestions(t, 100, tc.opts)
		if n := len(unpackMsg(t, req).Question); n != 100 {
			t.Fatalf("built %d questions", n)
		}
		out := env.e.llq.serve(req, clientA, false)
		if len(out) > len(req) {
			t.Errorf("%s: %d-byte request drew a %d-byte reply", tc.name, len(req), len(out))
		}
	}
	// The same with a bad EDNS version and with a foreign opcode.
	badvers := unpackMsg(t, compressedQuestions(t, 100, 100))
	badvers.IsEdns0().SetVersion(1)
	notimp := unpackMsg(t, compressedQuestions(t, 100, 100))
	notimp.Opcode = dns.OpcodeUpdate
	for name, m := range map[string]*dns.Msg{"badvers": badvers, "notimp": notimp} {
		m.Compress = true
		req := packMsg(t, m)
		out := env.e.llq.serve(req, clientA, false)
		if len(out) > len(req) {
			t.Errorf("%s: %d-byte request drew a %d-byte reply", name, len(req), len(out))
		}
	}
}

// midLabelQuestions builds a query whose n (at most 49) questions are
// compression pointers into a blob carried in an unknown EDNS option: a run
// of '0' bytes, which read as 48-byte labels, then zeros. Each start offset
// cuts the run into labels at other places, so the names are long, distinct
// and share no label-aligned suffix: no compressor can shrink their echo.
func midLabelQuestions(t testing.TB, n int, llq bool) []byte {
	t.Helper()
	blob := append(bytes.Repeat([]byte{'0'}, 196), make([]byte, 49)...)
	nopts := 0
	if llq {
		nopts = n
	}
	blobAt := 12 + 6*n + 11 + 4
	var b []byte
	b = binary.BigEndian.AppendUint16(b, 0x5151)
	b = append(b, 0, 0)                             // query, opcode 0
	b = binary.BigEndian.AppendUint16(b, uint16(n)) // questions
	b = append(b, 0, 0, 0, 0, 0, 1)                 // one additional: the OPT
	for i := 0; i < n; i++ {
		b = binary.BigEndian.AppendUint16(b, 0xC000|uint16(blobAt+i))
		b = append(b, 0, 1, 0, 1) // A IN
	}
	rdlen := 4 + len(blob) + nopts*(4+wire.OptionLen)
	b = append(b, 0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0) // root, OPT, size 1232, TTL 0
	b = binary.BigEndian.AppendUint16(b, uint16(rdlen))
	b = append(b, 0xFD, 0xE9) // option 65001
	b = binary.BigEndian.AppendUint16(b, uint16(len(blob)))
	b = append(b, blob...)
	for i := 0; i < nopts; i++ {
		b = append(b, 0, 1, 0, wire.OptionLen, 0, 1, 0, 1) // LLQ, version 1, SETUP
		b = append(b, make([]byte, 2+8)...)                // no error, ID 0
		b = binary.BigEndian.AppendUint32(b, 3600)
	}
	m := unpackMsg(t, b)
	if len(m.Question) != n || len(wire.Options(m)) != nopts {
		t.Fatalf("built %d questions and %d options", len(m.Question), len(wire.Options(m)))
	}
	return b
}

func TestNoAmplificationMidLabelPointers(t *testing.T) {
	env := newTestEnv(t, nil)
	for _, llq := range []bool{false, true} { // REFUSED, and STATIC for each question
		req := midLabelQuestions(t, 49, llq)
		if out := env.e.llq.serve(req, clientA, false); len(out) > len(req) {
			t.Errorf("llq %v: %d-byte request drew a %d-byte reply", llq, len(req), len(out))
		}
		// Over TCP the source address is proven: the reply may be large.
		if out := env.e.llq.serve(req, clientA, true); out == nil {
			t.Errorf("llq %v: no reply over TCP", llq)
		}
	}
}
