package llq

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/llqdns/llq/internal/testcert"
	"github.com/miekg/dns"
)

// testCA is a certificate chain made for one test: a CA and a server
// certificate it signed for 127.0.0.1, as files, and a pool trusting the CA.
type testCA = testcert.CA

func newTestCA(t testing.TB) *testCA { return testcert.New(t, "push.example.org") }

// newPushEnv is newTestEnv with the TLS listener on an ephemeral port.
func newPushEnv(t testing.TB, tweak func(*config)) (*testEnv, *testCA) {
	t.Helper()
	ca := newTestCA(t)
	env := newTestEnv(t, func(c *config) {
		c.tlsCert, c.tlsKey, c.tlsListen = ca.CertFile, ca.KeyFile, "127.0.0.1:0"
		c.debounce = 0
		if tweak != nil {
			tweak(c)
		}
	})
	return env, ca
}

// pushClient is a DSO client on a real TLS connection, sending no SNI
// (Go sends none for an IP address), as Apple's client does.
type pushClient struct {
	t    testing.TB
	conn *tls.Conn
	buf  []byte
	b    dso.Builder
}

func dialPush(t testing.TB, env *testEnv, ca *testCA) *pushClient {
	t.Helper()
	conn, err := tls.Dial("tcp", env.e.push.Addr().String(), &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return &pushClient{t: t, conn: conn}
}

func (c *pushClient) send(frame []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(frame); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *pushClient) subscribe(id uint16, name string, qtype uint16) {
	c.t.Helper()
	c.b.Start(id, false, 0)
	if err := c.b.Subscribe(dns.Question{Name: dns.Fqdn(name), Qtype: qtype, Qclass: dns.ClassINET}); err != nil {
		c.t.Fatal(err)
	}
	c.send(c.b.Frame())
}

// read returns the next message; a generous deadline keeps a broken server
// from hanging the test, it is no assertion about time.
func (c *pushClient) read() (dso.Message, error) {
	c.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := dso.ReadMessage(c.conn, nil, dso.MaxMessageLen)
	if err != nil {
		return dso.Message{}, err
	}
	return dso.Parse(b)
}

func (c *pushClient) must() dso.Message {
	c.t.Helper()
	m, err := c.read()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

// response reads the response to id and returns its rcode.
func (c *pushClient) response(id uint16) (int, dso.Message) {
	c.t.Helper()
	for {
		m := c.must()
		if m.Unidirectional() {
			continue // a PUSH or Keepalive before it
		}
		if !m.Response || m.ID != id {
			c.t.Fatalf("want the response to %d, got id %d response %v", id, m.ID, m.Response)
		}
		return m.Rcode, m
	}
}

// push reads messages until a PUSH and returns its records.
func (c *pushClient) push() []dns.RR {
	c.t.Helper()
	for {
		m := c.must()
		p, _ := m.Primary()
		if p.Type == dso.TypeKeepalive {
			continue
		}
		if p.Type != dso.TypePush {
			c.t.Fatalf("want PUSH, got %s", dso.TypeName(p.Type))
		}
		if len(m.Raw) > dso.MaxPushLen {
			c.t.Fatalf("PUSH of %d bytes", len(m.Raw))
		}
		rrs, err := dso.ParsePush(m, p, nil)
		if err != nil {
			c.t.Fatal(err)
		}
		return rrs
	}
}

// closed reports that the server ended the connection, skipping what it
// sent before.
func (c *pushClient) closed() {
	c.t.Helper()
	for {
		if _, err := c.read(); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("session still open")
			}
			return
		}
	}
}

func pushStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		out = append(out, rr.String())
	}
	return out
}

func TestPushSubscribe(t *testing.T) {
	env, ca := newPushEnv(t, nil)
	c := dialPush(t, env, ca)
	c.subscribe(1, "www.example.org.", dns.TypeA)
	if rc, _ := c.response(1); rc != dns.RcodeSuccess {
		t.Fatalf("rcode %d", rc)
	}
	initial := c.push()
	if len(initial) != 2 || initial[0].Header().Ttl != 3600 {
		t.Fatalf("initial PUSH %v", pushStrings(initial))
	}
	// No Keepalive came from the client: the server tells it its values.
	m := c.must()
	if p, _ := m.Primary(); p.Type != dso.TypeKeepalive || !m.Unidirectional() {
		t.Fatalf("want a unidirectional Keepalive, got %s", dso.TypeName(p.Type))
	} else if k, _ := dso.ParseKeepalive(p); k.Interval != dso.Millis(time.Hour) {
		t.Fatalf("keepalive %+v", k)
	}

	swapZone(t, env.zone, strings.Replace(zoneData, "www	IN A 192.0.2.1", "www	IN A 192.0.2.3", 1))
	env.changed()
	rrs := c.push()
	var add, remove int
	for _, rr := range rrs {
		switch dso.OpOf(rr) {
		case dso.OpAdd:
			add++
			if rr.(*dns.A).A.String() != "192.0.2.3" || rr.Header().Ttl == 0 {
				t.Errorf("add %v", rr)
			}
		case dso.OpRemove:
			remove++
			if rr.(*dns.A).A.String() != "192.0.2.1" {
				t.Errorf("remove %v", rr)
			}
		}
	}
	if add != 1 || remove != 1 {
		t.Fatalf("PUSH %v", pushStrings(rrs))
	}
}

func TestPushNames(t *testing.T) {
	env, ca := newPushEnv(t, nil)
	c := dialPush(t, env, ca)
	c.subscribe(1, "www.example.net.", dns.TypeA)
	if rc, _ := c.response(1); rc != dns.RcodeNotAuth {
		t.Fatalf("outside the zones: rcode %d, want NOTAUTH", rc)
	}
	// A name that does not exist yet: subscribed, nothing to push yet.
	c.subscribe(2, "new.example.org.", dns.TypeA)
	if rc, _ := c.response(2); rc != dns.RcodeSuccess {
		t.Fatalf("missing name: rcode %d", rc)
	}
	swapZone(t, env.zone, withRecords("new IN A 192.0.2.9"))
	env.changed()
	rrs := c.push()
	if len(rrs) != 1 || rrs[0].Header().Name != "new.example.org." {
		t.Fatalf("PUSH %v", pushStrings(rrs))
	}
}

// A change seen by two subscriptions of one session (type A and ALL) is
// pushed once; ALL holds every type at the name.
func TestPushOnceAndAll(t *testing.T) {
	env, ca := newPushEnv(t, nil)
	swapZone(t, env.zone, withRecords("www IN TXT \"hello\""))
	c := dialPush(t, env, ca)
	c.subscribe(1, "www.example.org.", dns.TypeANY)
	c.response(1)
	all := c.push()
	if len(all) != 3 {
		t.Fatalf("ALL: %v", pushStrings(all))
	}
	c.subscribe(2, "www.example.org.", dns.TypeA)
	c.response(2)
	if a := c.push(); len(a) != 2 {
		t.Fatalf("A: %v", pushStrings(a))
	}
	swapZone(t, env.zone, withRecords("www IN TXT \"hello\"", "www IN A 192.0.2.7"))
	env.changed()
	rrs := c.push()
	if len(rrs) != 1 {
		t.Fatalf("one add, pushed once: %v", pushStrings(rrs))
	}
	// Nothing else comes: the next message is the response to a Keepalive.
	c.b.Start(9, false, 0)
	c.b.Keepalive(dso.Keepalive{Inactivity: 1000, Interval: 20000})
	c.send(c.b.Frame())
	if rc, _ := c.response(9); rc != dns.RcodeSuccess {
		t.Fatalf("keepalive rcode %d", rc)
	}
}

func TestPushUnsubscribe(t *testing.T) {
	env, ca := newPushEnv(t, nil)
	c := dialPush(t, env, ca)
	c.subscribe(1, "www.example.org.", dns.TypeA)
	c.response(1)
	c.subscribe(2, "ns1.example.org.", dns.TypeA)
	c.response(2)
	c.b.Start(0, false, 0)
	c.b.Unsubscribe(1)
	c.send(c.b.Frame())
	c.b.Start(0, false, 0)
	c.b.UnsubscribeQuestion(question("NS1.example.org.", dns.TypeA)) // Apple's form
	c.send(c.b.Frame())
	c.b.Start(0, false, 0)
	c.b.Unsubscribe(77) // unknown: ignored
	c.send(c.b.Frame())
	eventually(t, "no subscriptions", func() bool { return env.e.Stats().PushSubs == 0 && env.e.Stats().Topics == 0 }, 10*time.Second)
	if env.e.Stats().Sessions != 1 {
		t.Fatalf("session gone")
	}
}

func TestPushDSOTypeNI(t *testing.T) {
	env, ca := newPushEnv(t, nil)
	c := dialPush(t, env, ca)
	c.b.Start(5, false, 0)
	c.b.TLV(0xF900, []byte{1, 2})
	c.send(c.b.Frame())
	if rc, _ := c.response(5); rc != dso.RcodeDSOTypeNI {
		t.Fatalf("rcode %d, want DSOTYPENI", rc)
	}
}

// Every fatal case of RFC 8490 and RFC 8765 ends the session.
func TestPushFatal(t *testing.T) {
	cases := map[string]func(c *pushClient){
		"duplicate id": func(c *pushClient) {
			c.subscribe(1, "www.example.org.", dns.TypeA)
			c.response(1)
			c.subscribe(1, "ns1.example.org.", dns.TypeA)
		},
		"duplicate question": func(c *pushClient) {
			c.subscribe(1, "www.example.org.", dns.TypeA)
			c.response(1)
			c.subscribe(2, "WWW.example.org.", dns.TypeA)
		},
		"unidirectional before session": func(c *pushClient) {
			c.b.Start(0, false, 0)
			c.b.Unsubscribe(1)
			c.send(c.b.Frame())
		},
		"unknown unidirectional": func(c *pushClient) {
			c.subscribe(1, "www.example.org.", dns.TypeA)
			c.response(1)
			c.b.Start(0, false, 0)
			c.b.TLV(0xF900, nil)
			c.send(c.b.Frame())
		},
		"push from client": func(c *pushClient) {
			c.subscribe(1, "www.example.org.", dns.TypeA)
			c.response(1)
			c.b.Start(0, false, 0)
			c.b.StartPush()
			c.b.AddRecord(mustRR(c.t, "www.example.org. 1 IN A 192.0.2.1"))
			c.send(c.b.Frame())
		},
		"response from client": func(c *pushClient) {
			c.b.Start(3, true, 0)
			c.send(c.b.Frame())
		},
		"malformed": func(c *pushClient) {
			c.b.Start(3, false, 0)
			c.b.TLV(dso.TypeSubscribe, []byte{3, 'w', 'w'})
			c.send(c.b.Frame())
		},
		"unidirectional subscribe": func(c *pushClient) {
			c.subscribe(0, "www.example.org.", dns.TypeA)
		},
		"keepalive request as unidirectional": func(c *pushClient) {
			c.subscribe(1, "www.example.org.", dns.TypeA)
			c.response(1)
			c.b.Start(0, false, 0)
			c.b.Keepalive(dso.Keepalive{})
			c.send(c.b.Frame())
		},
	}
	env, ca := newPushEnv(t, nil)
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			c := dialPush(t, env, ca)
			c.t = t
			f(c)
			c.closed()
		})
	}
	eventually(t, "sessions gone", func() bool { return env.e.Stats().Sessions == 0 && env.e.Stats().PushSubs == 0 }, 10*time.Second)
}

// Large answer sets are split into PUSH messages of at most 16,382 bytes.
func TestPushLarge(t *testing.T) {
	env, ca := newPushEnv(t, nil)
	swapZone(t, env.zone, withRecords(bigTXT("big", 400, 200)...))
	c := dialPush(t, env, ca)
	c.subscribe(1, "big.example.org.", dns.TypeTXT)
	c.response(1)
	n, messages := 0, 0
	for n < 400 {
		n += len(c.push()) // push checks the size of each
		messages++
	}
	if n != 400 || messages < 5 {
		t.Fatalf("%d records in %d messages", n, messages)
	}
}

func TestPushLimits(t *testing.T) {
	env, ca := newPushEnv(t, func(c *config) { c.maxSubsPerSession = 1; c.maxSessions = 1 })
	c := dialPush(t, env, ca)
	c.subscribe(1, "www.example.org.", dns.TypeA)
	c.response(1)
	c.subscribe(2, "ns1.example.org.", dns.TypeA)
	rc, m := c.response(2)
	if rc != dns.RcodeServerFailure {
		t.Fatalf("over max-subscriptions-per-session: rcode %d", rc)
	}
	if p, ok := m.Primary(); !ok || p.Type != dso.TypeRetryDelay {
		t.Fatalf("no Retry Delay with the SERVFAIL")
	}
	// A second session is over max-sessions: its first request is answered
	// SERVFAIL with a Retry Delay, and the session ends.
	d := dialPush(t, env, ca)
	d.subscribe(1, "www.example.org.", dns.TypeA)
	if rc, _ := d.response(1); rc != dns.RcodeServerFailure {
		t.Fatalf("over max-sessions: rcode %d", rc)
	}
	d.closed()
}

// A client that does not read is dropped once its queue passes the limit.
func TestPushSlowReader(t *testing.T) {
	env, ca := newPushEnv(t, func(c *config) { c.maxQueued = 64 << 10 })
	c := dialPush(t, env, ca)
	c.subscribe(1, "big.example.org.", dns.TypeTXT)
	c.response(1)
	before := metric(t, env.e.metrics.sessionsEnded.WithLabelValues(endOverflow))
	// Each round replaces 400 records of 200 bytes: with nobody reading,
	// the socket buffers fill and the queue grows past 64 KiB.
	for i := 0; env.e.Stats().Sessions > 0; i++ {
		swapZone(t, env.zone, withRecords(bigTXT("big", 400, 200+i%2)...))
		env.changed()
		eventually(t, "change processed", func() bool {
			env.e.mu.Lock()
			defer env.e.mu.Unlock()
			return len(env.e.changes.pending) == 0
		}, 10*time.Second)
		if i > 1000 {
			t.Fatal("slow reader never dropped")
		}
	}
	if metric(t, env.e.metrics.sessionsEnded.WithLabelValues(endOverflow)) != before+1 {
		t.Fatal("not counted as a slow reader")
	}
}

func TestPushShutdown(t *testing.T) {
	env, ca := newPushEnv(t, nil)
	c := dialPush(t, env, ca)
	c.subscribe(1, "www.example.org.", dns.TypeA)
	c.response(1)
	go env.e.push.close()
	for {
		m := c.must()
		p, _ := m.Primary()
		if p.Type != dso.TypeRetryDelay {
			continue
		}
		if m.Rcode != dns.RcodeSuccess || !m.Unidirectional() {
			t.Fatalf("Retry Delay rcode %d id %d", m.Rcode, m.ID)
		}
		break
	}
	c.conn.Close() // as the client should
	eventually(t, "sessions gone", func() bool { return env.e.Stats().Sessions == 0 }, 10*time.Second)
}

func TestPushHandshakeTimeout(t *testing.T) {
	env, _ := newPushEnv(t, func(c *config) { c.handshakeTimeout = 100 * time.Millisecond })
	conn, err := net.Dial("tcp", env.e.push.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("not closed: %v", err)
	}
}

func TestGrantKeepalive(t *testing.T) {
	cfg := defaultConfig() // 1 min inactivity, 1 h interval
	for _, tc := range []struct {
		asked                dso.Keepalive
		inactivity, interval time.Duration
	}{
		{dso.Keepalive{Inactivity: 15000, Interval: 15000}, 15 * time.Second, 15 * time.Second},
		{dso.Keepalive{Inactivity: 0, Interval: 10000}, 0, 10 * time.Second},
		{dso.Keepalive{Inactivity: 1000, Interval: 5000}, time.Second, dso.MinKeepaliveInterval}, // below the RFC's floor
		{dso.Keepalive{Inactivity: 3600000, Interval: 7200000}, time.Minute, time.Hour},          // above the configured values
		{dso.Keepalive{Inactivity: dso.Infinite, Interval: dso.Infinite}, time.Minute, time.Hour},
		{dso.Keepalive{Inactivity: 60000, Interval: 3600000}, time.Minute, time.Hour},
	} {
		inactivity, interval, _ := grantKeepalive(cfg, tc.asked)
		if inactivity != tc.inactivity || interval != tc.interval {
			t.Errorf("asked %+v: granted %v %v, want %v %v", tc.asked, inactivity, interval, tc.inactivity, tc.interval)
		}
	}
}

// TestPushKeepaliveNegotiated: a client's Keepalive gets, in its response,
// the timers of its session, within the server's bounds, and the session is
// held to them: one that asked for a 1 s inactivity timeout is closed as
// idle (after 5 s, RFC 8490's floor) while one that asked for the server's
// values in the same server stays. A session that sent none is told the
// server's values after its first SUBSCRIBE.
func TestPushKeepaliveNegotiated(t *testing.T) {
	env, ca := newPushEnv(t, func(c *config) { c.pushInactivity, c.pushKeepalive = time.Hour, 2*time.Hour })
	keepalive := func(c *pushClient, id uint16, k dso.Keepalive) dso.Keepalive {
		c.t.Helper()
		c.b.Start(id, false, 0)
		c.b.Keepalive(k)
		c.send(c.b.Frame())
		rc, m := c.response(id)
		p, _ := m.Primary()
		got, err := dso.ParseKeepalive(p)
		if rc != dns.RcodeSuccess || p.Type != dso.TypeKeepalive || err != nil {
			c.t.Fatalf("Keepalive response: rcode %d, %s, %v", rc, dso.TypeName(p.Type), err)
		}
		return got
	}
	idleBefore := metric(t, env.e.metrics.sessionsEnded.WithLabelValues(endIdle))

	short := dialPush(t, env, ca)
	if got := keepalive(short, 1, dso.Keepalive{Inactivity: 1000, Interval: 5000}); got != (dso.Keepalive{Inactivity: 1000, Interval: 10000}) {
		t.Fatalf("granted %+v for 1 s and 5 s, want 1 s and 10 s", got)
	}
	long := dialPush(t, env, ca)
	if got := keepalive(long, 1, dso.Keepalive{Inactivity: dso.Infinite, Interval: 7200000}); got != (dso.Keepalive{Inactivity: 3600000, Interval: 7200000}) {
		t.Fatalf("granted %+v for infinity and 2 h, want 1 h and 2 h", got)
	}
	// Renegotiated on the same session.
	if got := keepalive(long, 2, dso.Keepalive{Inactivity: 30000, Interval: 20000}); got != (dso.Keepalive{Inactivity: 30000, Interval: 20000}) {
		t.Fatalf("renegotiated %+v, want 30 s and 20 s", got)
	}
	keepalive(long, 3, dso.Keepalive{Inactivity: dso.Infinite, Interval: dso.Infinite})

	short.closed()
	// Counted once the server has closed it, which the client may see first.
	eventually(t, "the short session counted as ended idle", func() bool {
		return metric(t, env.e.metrics.sessionsEnded.WithLabelValues(endIdle)) == idleBefore+1
	}, 10*time.Second)
	// The other session is still served.
	keepalive(long, 4, dso.Keepalive{Inactivity: dso.Infinite, Interval: dso.Infinite})

	// One that never sends a Keepalive is told the server's values.
	quiet := dialPush(t, env, ca)
	quiet.subscribe(1, "www.example.org.", dns.TypeA)
	quiet.response(1)
	for {
		m := quiet.must()
		if p, _ := m.Primary(); p.Type == dso.TypeKeepalive {
			if k, _ := dso.ParseKeepalive(p); !m.Unidirectional() || k != (dso.Keepalive{Inactivity: 3600000, Interval: 7200000}) {
				t.Fatalf("told %+v", k)
			}
			break
		}
	}
}

// The deadline a session's reader sets follows its timers: the RFC's 15 s
// defaults until told, then its own.
func TestPushSessionDeadline(t *testing.T) {
	env, _ := newPushEnv(t, nil)
	s := newSession(env.e.push, nil, netip.MustParseAddrPort("127.0.0.3:5000"))
	now := time.Now()
	for _, tc := range []struct {
		told                 bool
		inactivity, interval time.Duration
		want                 time.Time
		idle                 bool
	}{
		{false, 0, 0, now.Add(30 * time.Second), false}, // 2 x 15 s, both timers
		{true, time.Hour, 10 * time.Second, now.Add(20 * time.Second), false},
		{true, 0, time.Hour, now.Add(5 * time.Second), true},
		{true, 4 * time.Second, time.Hour, now.Add(8 * time.Second), true},
	} {
		s.told, s.inactivity, s.interval, s.idleSince = tc.told, tc.inactivity, tc.interval, now
		if at, idle := s.deadline(now); !at.Equal(tc.want) || idle != tc.idle {
			t.Errorf("%+v: deadline %v (idle %v), want %v (idle %v)", tc, at.Sub(now), idle, tc.want.Sub(now), tc.idle)
		}
	}
}
