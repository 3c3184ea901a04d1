package llq

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/file"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Benchmarks of llq's hot paths. Run them with, for example,
//
//	go test -run '^$' -bench . -benchmem -count 10 . | tee new.txt
//	benchstat -filter '.name:ServeDNS' -col /handler new.txt   # llq versus the bare file plugin
//
// Every benchmark reports allocations. The machine these numbers come from
// is usually shared: compare ratios measured in one run, not absolute times
// across runs.

var (
	benchSrc    = netip.MustParseAddrPort("127.0.0.2:40001")
	benchQ      = question("www.example.org.", dns.TypeA)
	benchLocal  = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	benchRemote = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 40001}
)

// benchWriter is a dns.ResponseWriter that keeps the last reply and does no
// I/O, so that a benchmark measures the handlers and nothing else.
type benchWriter struct{ msg *dns.Msg }

func (w *benchWriter) LocalAddr() net.Addr         { return benchLocal }
func (w *benchWriter) RemoteAddr() net.Addr        { return benchRemote }
func (w *benchWriter) WriteMsg(m *dns.Msg) error   { w.msg = m; return nil }
func (w *benchWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *benchWriter) Close() error                { return nil }
func (w *benchWriter) TsigStatus() error           { return nil }
func (w *benchWriter) TsigTimersOnly(bool)         {}
func (w *benchWriter) Hijack()                     {}

// nopPlugin does nothing but hand the query on the way every CoreDNS plugin
// does (plugin.NextOrFailure, which wraps the writer). It is the floor for
// any plugin placed in front of file: what llq adds beyond it is llq's own.
type nopPlugin struct{ next plugin.Handler }

func (nopPlugin) Name() string { return "nop" }
func (p nopPlugin) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	return plugin.NextOrFailure(p.Name(), p.next, ctx, w, r)
}

// BenchmarkServeDNS is an ordinary query on CoreDNS's port: the file plugin
// alone (the baseline), file behind a do-nothing plugin, and file behind
// llq. The query comes without EDNS, with a plain OPT record, with a DNS
// cookie (what dig sends) and with an LLQ option (which llq strips).
func BenchmarkServeDNS(b *testing.B) {
	env := newTestEnv(b, nil)
	fileH := file.File{Zones: fileZones(env.zone)}
	l := &LLQ{Next: fileH, Zones: env.owner.Zones, cfg: env.owner.cfg}
	l.setEngine(env.e)
	handlers := []struct {
		name string
		h    plugin.Handler
	}{
		{"file", fileH},
		{"nop+file", nopPlugin{fileH}},
		{"llq+file", l},
	}
	queries := []struct {
		name string
		opts []dns.EDNS0 // nil: no OPT record at all
	}{
		{"plain", nil},
		{"edns", []dns.EDNS0{}},
		{"edns-cookie", []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef"}}},
		{"llq-option", []dns.EDNS0{setupOpt(0, 3600)}},
	}
	ctx := context.Background()
	for _, q := range queries {
		r := new(dns.Msg)
		r.SetQuestion(benchQ.Name, dns.TypeA)
		if q.opts != nil {
			r.SetEdns0(1232, false)
			r.IsEdns0().Option = q.opts
		}
		extra := r.Extra
		for _, h := range handlers {
			b.Run(fmt.Sprintf("query=%s/handler=%s", q.name, h.name), func(b *testing.B) {
				w := &benchWriter{}
				if rc, err := h.h.ServeDNS(ctx, w, r); err != nil || rc != dns.RcodeSuccess || w.msg == nil || len(w.msg.Answer) != 2 {
					b.Fatalf("rcode %d, err %v, reply %v", rc, err, w.msg)
				}
				b.ReportAllocs()
				for b.Loop() {
					r.Extra = extra // stripLLQ replaces the slice, never its contents
					h.h.ServeDNS(ctx, w, r)
				}
			})
		}
	}
}

// BenchmarkServeDNSOverhead isolates what llq itself costs an ordinary
// query: llq and the do-nothing plugin each in front of a backend that does
// nothing, so that the file plugin's microseconds (and their noise) do not
// hide the difference. Both pay plugin.NextOrFailure's writer wrapper.
func BenchmarkServeDNSOverhead(b *testing.B) {
	env := newTestEnv(b, nil)
	null := plugin.HandlerFunc(func(context.Context, dns.ResponseWriter, *dns.Msg) (int, error) {
		return dns.RcodeSuccess, nil
	})
	l := &LLQ{Next: null, Zones: env.owner.Zones, cfg: env.owner.cfg}
	l.setEngine(env.e)
	handlers := []struct {
		name string
		h    plugin.Handler
	}{
		{"nop+null", nopPlugin{null}},
		{"llq+null", l},
	}
	ctx := context.Background()
	for _, q := range []struct {
		name string
		opts []dns.EDNS0
	}{
		{"plain", nil},
		{"edns-cookie", []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef"}}},
		{"llq-option", []dns.EDNS0{setupOpt(0, 3600)}},
	} {
		r := new(dns.Msg)
		r.SetQuestion(benchQ.Name, dns.TypeA)
		if q.opts != nil {
			r.SetEdns0(1232, false)
			r.IsEdns0().Option = q.opts
		}
		extra := r.Extra
		for _, h := range handlers {
			b.Run(fmt.Sprintf("query=%s/handler=%s", q.name, h.name), func(b *testing.B) {
				w := &benchWriter{}
				b.ReportAllocs()
				for b.Loop() {
					r.Extra = extra
					h.h.ServeDNS(ctx, w, r)
				}
			})
		}
	}
}

// benchEnv is a test engine with relaxed limits, so that benchmarks can
// create as many LLQs as they like, and a retransmission interval long
// enough that no timer fires while one runs.
func benchEnv(b *testing.B) *testEnv {
	return newTestEnv(b, func(c *config) {
		c.maxLLQs, c.maxPerClient, c.setupRate = 0, 0, 0
		c.retransmit = time.Hour
	})
}

// BenchmarkServe is one LLQ message on the LLQ listener, from the raw
// request to the packed reply.
func BenchmarkServe(b *testing.B) {
	run := func(b *testing.B, env *testEnv, raw []byte, want uint16) {
		r, _ := env.serveRaw(b, raw, benchSrc, false)
		if o := only(b, r); o.Error != wire.NoError || o.Opcode != want {
			b.Fatalf("reply option %v", o)
		}
		b.ReportAllocs()
		for b.Loop() {
			env.e.llq.serve(raw, benchSrc, false)
		}
	}
	qs := []dns.Question{benchQ}
	b.Run("op=setup-challenge", func(b *testing.B) {
		env := benchEnv(b)
		run(b, env, packMsg(b, llqMsg(1, 1232, qs, setupOpt(0, 3600))), wire.OpSetup)
	})
	b.Run("op=challenge-response-duplicate", func(b *testing.B) {
		// The ACK got lost and the client repeats its challenge response:
		// the LLQ exists, so the reply is another ACK with the answers.
		env := benchEnv(b)
		id, _ := env.establish(b, benchSrc, 1232, benchQ, 3600)
		run(b, env, packMsg(b, llqMsg(2, 1232, qs, setupOpt(id, 3600))), wire.OpSetup)
	})
	b.Run("op=challenge-response-duplicate-100rr-tcp", func(b *testing.B) {
		// The same for a name with 100 records, repeated over TCP after a
		// truncated UDP ACK: the ACK lists every record in order.
		env := benchEnv(b)
		var lines []string
		for i := range 100 {
			lines = append(lines, fmt.Sprintf("many IN A 10.0.0.%d", i+1))
		}
		swapZone(b, env.zone, withRecords(lines...))
		q := question("many.example.org.", dns.TypeA)
		id, _ := env.establish(b, benchSrc, 1232, q, 3600)
		raw := packMsg(b, llqMsg(2, 1232, []dns.Question{q}, setupOpt(id, 3600)))
		if r, _ := env.serveRaw(b, raw, benchSrc, true); len(r.Answer) != 100 {
			b.Fatalf("ACK with %d answers", len(r.Answer))
		}
		b.ReportAllocs()
		for b.Loop() {
			env.e.llq.serve(raw, benchSrc, true)
		}
	})
	b.Run("op=refresh", func(b *testing.B) {
		env := benchEnv(b)
		id, _ := env.establish(b, benchSrc, 1232, benchQ, 3600)
		run(b, env, packMsg(b, llqMsg(3, 1232, qs, refreshOpt(id, 3600))), wire.OpRefresh)
	})
	b.Run("op=event-ack", func(b *testing.B) {
		// An acknowledgement as it arrives on the socket: unpack, then
		// acknowledge (see BenchmarkAcknowledge for the matching alone).
		env := benchEnv(b)
		id, _ := env.establish(b, benchSrc, 1232, benchQ, 3600)
		ids := pendingEvents(b, env, id, 4)
		a := new(dns.Msg)
		a.Id = ids[len(ids)-1]
		a.Response = true
		a.Question = qs
		wire.SetOptions(a, 1232, wire.NewOption(wire.OpEvent, wire.NoError, id, 3600))
		raw := packMsg(b, a)
		b.ReportAllocs()
		for b.Loop() {
			if env.e.llq.serve(raw, benchSrc, false) != nil {
				b.Fatal("an ack drew a reply")
			}
		}
	})
}

// BenchmarkWire is the parsing serve does besides dns.Msg.Unpack.
func BenchmarkWire(b *testing.B) {
	m := llqMsg(1, 1232, []dns.Question{benchQ}, setupOpt(0, 3600))
	raw := packMsg(b, m)
	m = unpackMsg(b, raw)
	b.Run("fn=Options", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if len(wire.Options(m)) != 1 {
				b.Fatal("no option")
			}
		}
	})
	b.Run("fn=CheckLengths", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if wire.CheckLengths(raw) != nil {
				b.Fatal("bad lengths")
			}
		}
	})
}

// benchRecords returns n A records of one name and the same set with its
// first record replaced by another.
func benchRecords(b *testing.B, n int) (old, next []dns.RR) {
	for i := range n {
		old = append(old, mustRR(b, fmt.Sprintf("www.example.org. 300 IN A 10.0.%d.%d", i/250, i%250+1)))
	}
	next = append([]dns.RR{mustRR(b, "www.example.org. 300 IN A 10.1.0.1")}, old[1:]...)
	return old, next
}

// BenchmarkAnswerSet is what a change pass does per topic: build the new
// answer set and diff it against the current one; and what every ACK does:
// list the answers in order.
func BenchmarkAnswerSet(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		oldRRs, nextRRs := benchRecords(b, n)
		old := newAnswerSet(oldRRs)
		b.Run(fmt.Sprintf("fn=newAnswerSet+diff/records=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				added, removed := old.diff(newAnswerSet(nextRRs))
				if len(added) != 1 || len(removed) != 1 {
					b.Fatalf("added %d removed %d", len(added), len(removed))
				}
			}
		})
		b.Run(fmt.Sprintf("fn=records/records=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if len(old.records()) != n {
					b.Fatal("records lost")
				}
			}
		})
	}
}

// BenchmarkBuildEvent packs the event for a two-record change (one record
// added, one removed) and patches one subscriber's fields in.
func BenchmarkBuildEvent(b *testing.B) {
	rrs := []dns.RR{mustRR(b, "www.example.org. 300 IN A 192.0.2.3"), mustRR(b, "www.example.org. 300 IN A 192.0.2.2")}
	adds := []bool{true, false}
	b.ReportAllocs()
	for b.Loop() {
		p, err := buildEvent(benchQ, rrs, adds, 0, 0, 0)
		if err != nil {
			b.Fatal(err)
		}
		patch(p, 0x1234, 0x0123456789abcdef, 3600)
	}
}

// benchTopic establishes n LLQs for benchQ, each from its own port, and
// returns their topic.
func benchTopic(b *testing.B, env *testEnv, n int) *topic {
	now := time.Now()
	for i := range n {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 1, byte(i % 250)}), uint16(10000+i))
		if _, _, err := env.e.llq.establish(uint64(i+1), benchQ, client, true, 3600, 1232, now, nil); err != nil {
			b.Fatalf("establish: %v", err)
		}
	}
	env.e.mu.Lock()
	defer env.e.mu.Unlock()
	t := env.e.topics[topicKey{questionKey: keyOf(benchQ)}]
	if t == nil || len(t.subs) != n {
		b.Fatalf("no topic with %d subscribers", n)
	}
	return t
}

// benchChange changes t's answers: the first record goes, a new one with
// address 198.51.100.k comes. It returns the arguments publish takes for
// that change.
func benchChange(b testing.TB, env *testEnv, t *topic, k int) (added, removed []string, old answerSet) {
	env.e.mu.Lock()
	defer env.e.mu.Unlock()
	old = t.answers
	next := newAnswerSet(append(old.records()[1:], mustRR(b, fmt.Sprintf("www.example.org. 300 IN A 198.51.100.%d", k))))
	added, removed = old.diff(next)
	if len(added) != 1 || len(removed) != 1 {
		b.Fatalf("change: added %d removed %d", len(added), len(removed))
	}
	t.setAnswers(next)
	return added, removed, old
}

// forgetEvents cancels every pending event of t's subscribers and forgets
// their transmissions, as if each had been acknowledged long ago.
func forgetEvents(env *testEnv, t *topic) {
	env.e.mu.Lock()
	for _, x := range t.subs {
		s := x.(*llqSub)
		for _, tr := range s.pending {
			env.e.sched.cancel(&tr.ev.retry)
		}
		s.pending = s.pending[:0]
	}
	env.e.mu.Unlock()
}

// BenchmarkPublish fans one change out to 1,000 LLQs of one topic: the
// work done under the engine lock, without the socket writes (see
// BenchmarkSend for those).
func BenchmarkPublish(b *testing.B) {
	const subs = 1000
	env := benchEnv(b)
	t := benchTopic(b, env, subs)
	added, removed, old := benchChange(b, env, t, 1)
	b.ReportAllocs()
	for b.Loop() {
		now := time.Now()
		env.e.mu.Lock()
		ds := env.e.llq.publish(t, added, removed, old, now)
		env.e.mu.Unlock()
		if len(ds) != subs {
			b.Fatalf("%d deliveries", len(ds))
		}
		b.StopTimer()
		forgetEvents(env, t)
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/subs, "ns/llq")
}

// BenchmarkSend is one event packet written to a real loopback UDP socket:
// the cost per subscriber that BenchmarkPublish leaves out.
func BenchmarkSend(b *testing.B) {
	env := benchEnv(b)
	c := newUDPClient(b)
	rrs := []dns.RR{mustRR(b, "www.example.org. 300 IN A 192.0.2.3")}
	p, err := buildEvent(benchQ, rrs, []bool{true}, 0, 0, 0)
	if err != nil {
		b.Fatal(err)
	}
	ds := []delivery{{to: c.addr, msgID: 1, llqID: 2, lease: 3600, packet: p}}
	env.e.llq.send(ds, "event")
	c.read(b, 5*time.Second) // the socket works
	b.ReportAllocs()
	for b.Loop() {
		// Nobody reads: once the socket buffer is full the kernel drops
		// the packets, after the write this measures.
		env.e.llq.send(ds, "event")
	}
}

// pendingEvents publishes n changes to LLQ id and returns the DNS IDs of
// the event packets, oldest first.
func pendingEvents(b *testing.B, env *testEnv, id uint64, n int) []uint16 {
	env.e.mu.Lock()
	t := env.e.llq.subs[id].topic
	env.e.mu.Unlock()
	var ids []uint16
	for k := range n {
		added, removed, old := benchChange(b, env, t, k+1)
		env.e.mu.Lock()
		for _, d := range env.e.llq.publish(t, added, removed, old, time.Now()) {
			ids = append(ids, d.msgID)
		}
		env.e.mu.Unlock()
	}
	return ids
}

// BenchmarkAcknowledge matches an event ack to one of four packets pending
// for its LLQ. The acknowledged packet states the current truth.
func BenchmarkAcknowledge(b *testing.B) {
	env := benchEnv(b)
	id, _ := env.establish(b, benchSrc, 1232, benchQ, 3600)
	ids := pendingEvents(b, env, id, 4)
	msgID := ids[len(ids)-1]
	b.ReportAllocs()
	for b.Loop() {
		env.e.llq.acknowledge(msgID, id, benchSrc, nil)
	}
}

// BenchmarkEstablish creates LLQs on an existing topic (the last step of a
// setup, after the challenge response checked out). B/op counts every
// allocation, transient ones included; the retained-B/llq metric is the
// heap one live LLQ keeps, measured over 10,000 of them.
func BenchmarkEstablish(b *testing.B) {
	const batch = 10000
	env := benchEnv(b)
	e := env.e
	benchTopic(b, env, 1) // LLQ 1 keeps the topic alive throughout
	next := uint64(2)
	dropAll := func() {
		e.mu.Lock()
		for id, s := range e.llq.subs {
			if id != 1 {
				e.llq.drop(s)
			}
		}
		e.mu.Unlock()
	}
	add := func(now time.Time) {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 2, byte(next % 250)}), uint16(next))
		if _, _, err := e.llq.establish(next, benchQ, client, true, 3600, 1232, now, nil); err != nil {
			b.Fatalf("establish: %v", err)
		}
		next++
	}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	now := time.Now()
	for range batch {
		add(now)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	retained := float64(after.HeapAlloc-before.HeapAlloc) / batch
	dropAll()

	b.ReportAllocs()
	n := 0
	for b.Loop() {
		add(now)
		if n++; n == batch {
			b.StopTimer()
			dropAll()
			n = 0
			b.StartTimer()
		}
	}
	b.StopTimer()
	dropAll()
	b.ReportMetric(retained, "retained-B/llq")
}
