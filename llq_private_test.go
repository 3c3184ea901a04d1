package llq

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// privateClient speaks LLQ on a TLS session of the DNS Push listener with
// miekg/dns's message framing over the connection.
type privateClient struct {
	t    testing.TB
	conn *dns.Conn
}

func dialPrivate(t testing.TB, env *testEnv, ca *testCA) *privateClient {
	t.Helper()
	c := dialPush(t, env, ca)
	return &privateClient{t: t, conn: &dns.Conn{Conn: c.conn}}
}

func (c *privateClient) send(m *dns.Msg) {
	c.t.Helper()
	if err := c.conn.WriteMsg(m); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read returns the next message; the deadline only keeps a broken server
// from hanging the test.
func (c *privateClient) read() (*dns.Msg, error) {
	c.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	return c.conn.ReadMsg()
}

func (c *privateClient) must() *dns.Msg {
	c.t.Helper()
	m, err := c.read()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

// exchange sends m and returns the reply with its ID, skipping events.
func (c *privateClient) exchange(m *dns.Msg) *dns.Msg {
	c.t.Helper()
	c.send(m)
	for {
		r := c.must()
		if r.Id == m.Id && only(c.t, r).Opcode != wire.OpEvent {
			return r
		}
	}
}

// event reads the next event, acknowledges it as Apple's client does and
// returns it.
func (c *privateClient) event() *dns.Msg {
	c.t.Helper()
	m := c.must()
	o := only(c.t, m)
	wantOpt(c.t, o, wire.OpEvent, wire.NoError)
	if !m.Response {
		c.t.Fatalf("event is not a response: %v", m)
	}
	ack := llqMsg(m.Id, 1232, m.Question, wire.NewOption(wire.OpEvent, wire.NoError, o.Id, o.LeaseLife))
	ack.Response = true
	c.send(ack)
	return m
}

// TestPrivateLLQ: an LLQ set up on a TLS session takes two messages (no
// challenge: the connection proved the address); its events, refreshes,
// acknowledgements and termination all go on the session, none over UDP
// even to the port the client names; it is known on that session alone.
func TestPrivateLLQ(t *testing.T) {
	env, ca := newPushEnv(t, func(c *config) { c.minLease, c.maxLease = time.Minute, time.Hour })
	udp := newUDPClient(t) // the event port the client names in ERROR, as Apple's does
	c := dialPrivate(t, env, ca)
	q := question("www.example.org.", dns.TypeA)
	setup := setupOpt(0, 7200)
	setup.Error = udp.addr.Port()
	ack := c.exchange(llqMsg(1, 1232, []dns.Question{q}, setup))
	o := only(t, ack)
	wantOpt(t, o, wire.OpSetup, wire.NoError)
	if o.Id == 0 || o.LeaseLife != 3600 {
		t.Fatalf("ACK option %v: want an ID and the lease clamped to 3600", o)
	}
	sameRRs(t, ack.Answer, "www.example.org. 3600 IN A 192.0.2.1", "www.example.org. 3600 IN A 192.0.2.2")
	id := o.Id
	if st := env.e.Stats(); st.LLQs != 1 {
		t.Fatalf("stats %+v", st)
	}
	events := track(t, env.e.metrics.privateEvents)

	swapZone(t, env.zone, strings.Replace(zoneData, "www	IN A 192.0.2.1", "www	IN A 192.0.2.3", 1))
	env.changed()
	ev := c.event()
	if eo := only(t, ev); eo.Id != id || eo.LeaseLife == 0 || eo.LeaseLife > 3600 {
		t.Fatalf("event option %v for LLQ %x", eo, id)
	}
	sameRRs(t, ev.Answer, "www.example.org. 3600 IN A 192.0.2.3", "www.example.org. 4294967295 IN A 192.0.2.1")
	if events.moved(t) != 1 {
		t.Fatalf("private_events_total moved by %v", events.moved(t))
	}

	// Refresh on the session: granted, and events stay on it whatever
	// ERROR says.
	refresh := refreshOpt(id, 600)
	refresh.Error = udp.addr.Port()
	wantOpt(t, only(t, c.exchange(llqMsg(2, 1232, []dns.Question{q}, refresh))), wire.OpRefresh, wire.NoError)
	swapZone(t, env.zone, strings.Replace(zoneData, "www	IN A 192.0.2.1", "www	IN A 192.0.2.4", 1))
	env.changed()
	sameRRs(t, c.event().Answer, "www.example.org. 3600 IN A 192.0.2.4", "www.example.org. 4294967295 IN A 192.0.2.3")
	if m, ok := udp.quiet(100 * time.Millisecond); !ok {
		t.Fatalf("an event of a private LLQ went over UDP: %v", m)
	}

	// Known on its session alone: a refresh over UDP, plain TCP or another
	// session is NO-SUCH-LLQ, and does not end it.
	src := netip.MustParseAddrPort("127.0.0.1:5000")
	for _, tcp := range []bool{false, true} {
		r := env.exchange(t, llqMsg(3, 1232, []dns.Question{q}, refreshOpt(id, 0)), src, tcp)
		wantOpt(t, only(t, r), wire.OpRefresh, wire.NoSuchLLQ)
	}
	other := dialPrivate(t, env, ca)
	wantOpt(t, only(t, other.exchange(llqMsg(4, 1232, []dns.Question{q}, refreshOpt(id, 0)))), wire.OpRefresh, wire.NoSuchLLQ)
	wantOpt(t, only(t, other.exchange(llqMsg(5, 1232, []dns.Question{q}, setupOpt(id, 600)))), wire.OpSetup, wire.NoSuchLLQ)
	if st := env.e.Stats(); st.LLQs != 1 {
		t.Fatalf("stats %+v", st)
	}

	// Terminated on the session.
	r := c.exchange(llqMsg(6, 1232, []dns.Question{q}, refreshOpt(id, 0)))
	if o := only(t, r); o.Error != wire.NoError || o.LeaseLife != 0 {
		t.Fatalf("terminate: %v", o)
	}
	if st := env.e.Stats(); st.LLQs != 0 || st.Topics != 0 {
		t.Fatalf("left behind: %+v", st)
	}
}

// A private LLQ ends with its session: nothing is kept for a connection
// that is gone, and nothing goes over UDP.
func TestPrivateLLQEndsWithSession(t *testing.T) {
	env, ca := newPushEnv(t, nil)
	live := metric(t, env.e.metrics.liveLLQs)
	c := dialPrivate(t, env, ca)
	for i, name := range []string{"www.example.org.", "ns1.example.org."} {
		ack := c.exchange(llqMsg(uint16(i+1), 1232, []dns.Question{question(name, dns.TypeA)}, setupOpt(0, 3600)))
		wantOpt(t, only(t, ack), wire.OpSetup, wire.NoError)
	}
	if st := env.e.Stats(); st.LLQs != 2 || st.Sessions != 1 {
		t.Fatalf("stats %+v", st)
	}
	// The session outlives the DSO keepalive defaults: its client speaks
	// LLQ and is only due to refresh before its lease ends.
	if at, idle := sessionOf(t, env).deadline(time.Now()); idle || time.Until(at) < 30*time.Minute {
		t.Fatalf("read deadline in %v (idle %v), want the lease's end", time.Until(at), idle)
	}
	c.conn.Close()
	eventually(t, "LLQs gone with the session", func() bool {
		st := env.e.Stats()
		return st.LLQs == 0 && st.Topics == 0 && st.Sessions == 0
	}, 10*time.Second)
	if metric(t, env.e.metrics.liveLLQs) != live {
		t.Fatalf("subscriptions gauge %v, was %v", metric(t, env.e.metrics.liveLLQs), live)
	}
}

// sessionOf returns the only session of env's TLS listener.
func sessionOf(t *testing.T, env *testEnv) *session {
	t.Helper()
	p := env.e.push
	p.mu.Lock()
	defer p.mu.Unlock()
	for s := range p.sessions {
		return s
	}
	t.Fatal("no session")
	return nil
}

// A TLS session over max-sessions gets SERV-FULL for its LLQ, with the
// Retry Delay as the time to wait, and is closed; no LLQ is made.
func TestPrivateLLQOverSessionLimit(t *testing.T) {
	env, ca := newPushEnv(t, func(c *config) { c.maxSessions = 1; c.retryDelay = 3 * time.Second })
	first := dialPrivate(t, env, ca)
	wantOpt(t, only(t, first.exchange(llqMsg(1, 1232, []dns.Question{question("www.example.org.", dns.TypeA)}, setupOpt(0, 3600)))),
		wire.OpSetup, wire.NoError)
	over := dialPrivate(t, env, ca)
	r := over.exchange(llqMsg(2, 1232, []dns.Question{question("ns1.example.org.", dns.TypeA)}, setupOpt(0, 3600)))
	if o := only(t, r); o.Error != wire.ServFull || o.LeaseLife != 3 || len(r.Answer) != 0 {
		t.Fatalf("over max-sessions: %v", r)
	}
	if _, err := over.read(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the session over the limit is still open: %v", err)
	}
	if st := env.e.Stats(); st.LLQs != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// heldSet is the answer set a private LLQ's client holds: the ACK's
// answers, then each event's adds and removes.
type heldSet map[string]bool

func (h heldSet) apply(rrs []dns.RR) {
	for _, rr := range rrs {
		gone := rr.Header().Ttl == wire.RemoveTTL
		rr = dns.Copy(rr)
		rr.Header().Ttl = 0
		if gone {
			delete(h, rr.String())
		} else {
			h[rr.String()] = true
		}
	}
}

func (h heldSet) is(t testing.TB, want []string) bool {
	t.Helper()
	if len(h) != len(want) {
		return false
	}
	for _, rr := range rrs(t, want...) {
		rr.Header().Ttl = 0
		if !h[rr.String()] {
			return false
		}
	}
	return true
}

// A private LLQ whose answer set is beyond one DNS message (2,000 TXT
// records of 200 bytes, about 440 KB) gets an ACK with what fits and the
// rest as events on the session, each within a message; a change as large
// is split the same way. The client ends with every record, and no
// message is truncated.
func TestPrivateLLQLargeAnswerSet(t *testing.T) {
	env, ca := newPushEnv(t, func(c *config) { c.maxQueued = 8 << 20 })
	first := bigTXT("big.example.org.", 2000, 200)
	swapZone(t, env.zone, withRecords(first...))
	c := dialPrivate(t, env, ca)
	q := question("big.example.org.", dns.TypeTXT)
	ack := c.exchange(llqMsg(1, 1232, []dns.Question{q}, setupOpt(0, 3600)))
	o := only(t, ack)
	wantOpt(t, o, wire.OpSetup, wire.NoError)
	if ack.Truncated || len(ack.Answer) == 0 || len(ack.Answer) >= len(first) {
		t.Fatalf("ACK: TC %v, %d of %d answers: want what fits", ack.Truncated, len(ack.Answer), len(first))
	}
	held := heldSet{}
	held.apply(ack.Answer)
	for !held.is(t, first) {
		ev := c.event()
		if eo := only(t, ev); eo.Id != o.Id || ev.Truncated {
			t.Fatalf("event %v for LLQ %x", eo, o.Id)
		}
		held.apply(ev.Answer)
	}

	// Every record replaced: 2,000 removes and 2,000 adds, about 880 KB.
	second := bigTXT("big.example.org.", 2000, 201)
	swapZone(t, env.zone, withRecords(second...))
	env.changed()
	events := 0
	for !held.is(t, second) {
		ev := c.event()
		if eo := only(t, ev); eo.Id != o.Id || ev.Truncated {
			t.Fatalf("event %v for LLQ %x", eo, o.Id)
		}
		held.apply(ev.Answer)
		events++
	}
	if events < 2 {
		t.Fatalf("a change of 880 KB came in %d event", events)
	}
}

// resizeOption grows (n > 0, with zeros) or cuts (n < 0) the LLQ option
// that ends the packed message b, keeping the OPT record's lengths
// consistent: the option is then oversize or short, not the message.
func resizeOption(b []byte, n int) []byte {
	optLen := len(b) - wire.OptionLen - 2 // the option's length field
	rdLen := optLen - 4                   // the OPT record's RDLENGTH
	if n > 0 {
		b = append(b, make([]byte, n)...)
	} else {
		b = b[:len(b)+n]
	}
	binary.BigEndian.PutUint16(b[optLen:], uint16(wire.OptionLen+n))
	binary.BigEndian.PutUint16(b[rdLen:], binary.BigEndian.Uint16(b[rdLen:])+uint16(n))
	return b
}

// Bad input on a TLS session gets RFC 8764's answer, and the session goes
// on: an event ack for an LLQ nobody has gets no reply; a challenge
// response with an ID never issued is NO-SUCH-LLQ; an oversize or short
// LLQ option is FORMERR; an unknown LLQ opcode FORMAT-ERR. An LLQ the same
// address set up over UDP cannot be refreshed, nor its events acked, from
// the session. No LLQ is made or lost by any of it.
func TestPrivateLLQBadInput(t *testing.T) {
	env, ca := newPushEnv(t, nil)
	q := question("www.example.org.", dns.TypeA)
	udp := newUDPClient(t)
	public, _ := env.establish(t, udp.addr, 1232, q, 3600)
	c := dialPrivate(t, env, ca)

	// An event ack for an unknown LLQ: the next message read is the reply
	// to the request after it.
	stray := llqMsg(1, 1232, []dns.Question{q}, wire.NewOption(wire.OpEvent, wire.NoError, 0xdead, 3600))
	stray.Response = true
	c.send(stray)
	c.send(llqMsg(2, 1232, []dns.Question{q}, setupOpt(0xbeef, 3600)))
	r := c.must()
	if r.Id != 2 {
		t.Fatalf("an event ack was answered: %v", r)
	}
	wantOpt(t, only(t, r), wire.OpSetup, wire.NoSuchLLQ)

	for _, n := range []int{+2, -4} {
		raw := resizeOption(packMsg(t, llqMsg(3, 1232, []dns.Question{q}, setupOpt(0, 3600))), n)
		if _, err := c.conn.Write(raw); err != nil {
			t.Fatal(err)
		}
		if r := c.must(); r.Id != 3 || r.Rcode != dns.RcodeFormatError || len(r.Answer) != 0 {
			t.Fatalf("LLQ option %+d bytes: %v", n, r)
		}
	}
	bad := wire.NewOption(9, wire.NoError, 0, 3600)
	wantOpt(t, only(t, c.exchange(llqMsg(4, 1232, []dns.Question{q}, bad))), 9, wire.FormatErr)

	// The UDP LLQ of the same address: its refresh on the session is
	// NO-SUCH-LLQ, and an ack there of its event does not count.
	wantOpt(t, only(t, c.exchange(llqMsg(5, 1232, []dns.Question{q}, refreshOpt(public, 0)))), wire.OpRefresh, wire.NoSuchLLQ)
	acks := track(t, env.e.metrics.acks)
	swapZone(t, env.zone, strings.Replace(zoneData, "www	IN A 192.0.2.1", "www	IN A 192.0.2.3", 1))
	env.changed()
	ev, _ := udp.read(t, 10*time.Second)
	ack := llqMsg(ev.Id, 1232, ev.Question, wire.NewOption(wire.OpEvent, wire.NoError, public, 3600))
	ack.Response = true
	c.send(ack)
	c.exchange(llqMsg(6, 1232, []dns.Question{q}, setupOpt(0xbeef, 3600))) // the ack was handled before this
	if n := acks.moved(t); n != 0 {
		t.Fatalf("an ack on the session counted for a UDP LLQ: %v", n)
	}
	if _, err := udp.conn.WriteTo(packMsg(t, ack), env.e.Addr()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the UDP ack counted", func() bool { return acks.moved(t) == 1 }, 10*time.Second)
	if st := env.e.Stats(); st.LLQs != 1 || st.Sessions != 1 {
		t.Fatalf("stats %+v", st)
	}
}
