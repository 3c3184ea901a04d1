package test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	ctest "github.com/coredns/coredns/test"
	"github.com/llqdns/llq/dso"
	"github.com/llqdns/llq/internal/testcert"
	"github.com/llqdns/llq/internal/tsharktest"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// certChain makes a CA and a server certificate it signs, and returns the
// certificate's and key's files and a pool that trusts the CA.
func certChain(t *testing.T) (cert, key string, pool *x509.CertPool) {
	ca := testcert.New(t, "llq.example.org")
	return ca.CertFile, ca.KeyFile, ca.Pool
}

// dsoConn is a DNS Push client on a real TLS connection that keeps every
// message of the session, both ways, for tshark.
type dsoConn struct {
	t      *testing.T
	conn   *tls.Conn
	b      dso.Builder
	frames [][]byte // first byte 1 for the client's
}

func dialDSO(t *testing.T, addr netip.AddrPort, pool *x509.CertPool) (*dsoConn, error) {
	t.Helper()
	// No ServerName: Go sends no SNI for an IP address, as Apple's client
	// sends none; the certificate is checked against the address.
	conn, err := tls.Dial("tcp", addr.String(), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close() })
	return &dsoConn{t: t, conn: conn}, nil
}

func (c *dsoConn) send() {
	c.t.Helper()
	f := c.b.Frame()
	c.frames = append(c.frames, append([]byte{1}, f...))
	if _, err := c.conn.Write(f); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *dsoConn) read() (dso.Message, error) {
	c.conn.SetReadDeadline(time.Now().Add(20 * time.Second)) // a hung server fails the test, no timing asserted
	b, err := dso.ReadMessage(c.conn, nil, dso.MaxMessageLen)
	if err != nil {
		return dso.Message{}, err
	}
	c.frames = append(c.frames, dso.AppendFrame([]byte{0}, b))
	return dso.Parse(b)
}

func (c *dsoConn) subscribe(id uint16, name string, qtype uint16) int {
	c.t.Helper()
	c.b.Start(id, false, 0)
	if err := c.b.Subscribe(dns.Question{Name: name, Qtype: qtype, Qclass: dns.ClassINET}); err != nil {
		c.t.Fatal(err)
	}
	c.send()
	for {
		m, err := c.read()
		if err != nil {
			c.t.Fatalf("SUBSCRIBE %s: %v", name, err)
		}
		if m.Response && m.ID == id {
			return m.Rcode
		}
	}
}

// push returns the records of the next PUSH, as text with their TTLs.
func (c *dsoConn) push() []string {
	c.t.Helper()
	for {
		m, err := c.read()
		if err != nil {
			c.t.Fatalf("waiting for a PUSH: %v", err)
		}
		p, _ := m.Primary()
		if p.Type != dso.TypePush {
			continue
		}
		rrs, err := dso.ParsePush(m, p, nil)
		if err != nil {
			c.t.Fatal(err)
		}
		var out []string
		for _, rr := range rrs {
			out = append(out, rr.String())
		}
		return out
	}
}

func wantPush(t *testing.T, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("PUSH:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// pushServer starts CoreDNS with llq's TLS listener on a fixed port (a
// reload keeps the engine, and with it the sessions) and returns the
// server, its config and the trusted pool.
func pushServer(t *testing.T, records ...string) (*server, config, netip.AddrPort, *x509.CertPool) {
	cert, key, pool := certChain(t)
	listener := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
	tlsAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
	cfg := config{options: pushOptions(listener, tlsAddr, cert, key), llq: listener}
	return startServerWith(t, cfg, records...), cfg, tlsAddr, pool
}

func pushOptions(listener, tlsAddr netip.AddrPort, cert, key string) string {
	return fmt.Sprintf("listen %s\n        tls %s %s\n        tls-listen %s\n        retry-delay 250ms", listener, cert, key, tlsAddr)
}

// TestDNSPush runs a DNS Push session against CoreDNS the way a client
// does: discovery, TLS with a certificate chain made here, SUBSCRIBE,
// PUSH on a zone file change, NOTAUTH outside the zones; a reload that
// brings a new certificate keeps the session; shutdown sends a Retry Delay
// NOERROR. tshark's DSO dissector then reads the session's bytes.
func TestDNSPush(t *testing.T) {
	s, cfg, tlsAddr, pool := pushServer(t, "www IN A 192.0.2.1")

	r := s.query("_dns-push-tls._tcp.example.org.", dns.TypeSRV)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.SRV).Port != tlsAddr.Port() {
		t.Fatalf("discovery: %v", r)
	}
	c, err := dialDSO(t, tlsAddr, pool)
	if err != nil {
		t.Fatal(err)
	}
	if rc := c.subscribe(1, "www.example.org.", dns.TypeA); rc != dns.RcodeSuccess {
		t.Fatalf("SUBSCRIBE rcode %d", rc)
	}
	wantPush(t, c.push(), "www.example.org.\t3600\tIN\tA\t192.0.2.1")
	if rc := c.subscribe(2, "www.example.net.", dns.TypeA); rc != dns.RcodeNotAuth {
		t.Fatalf("outside the zones: rcode %d", rc)
	}
	s.setRecords("www IN A 192.0.2.2")
	wantPush(t, c.push(), "www.example.org.\t3600\tIN\tA\t192.0.2.2", "www.example.org.\t4294967295\tIN\tA\t192.0.2.1")
	tsharkCheck(t, c.frames)

	// Reload with a new certificate: the session stays, new sessions get
	// the new certificate.
	cert2, key2, pool2 := certChain(t)
	cfg.options = pushOptions(cfg.llq, tlsAddr, cert2, key2)
	s.restart(s.corefileWith(cfg))
	s.setRecords("www IN A 192.0.2.3")
	wantPush(t, c.push(), "www.example.org.\t3600\tIN\tA\t192.0.2.3", "www.example.org.\t4294967295\tIN\tA\t192.0.2.2")
	if _, err := dialDSO(t, tlsAddr, pool); err == nil {
		t.Fatal("the old certificate is still served after the reload")
	}
	if _, err := dialDSO(t, tlsAddr, pool2); err != nil {
		t.Fatalf("new certificate: %v", err)
	}

	// Shutdown: Retry Delay NOERROR, then the server closes. The test
	// waits for the stop to finish, so that its cleanup's stop sees it.
	stopped := make(chan struct{})
	go func() { s.stop(); close(stopped) }()
	for {
		m, err := c.read()
		if err != nil {
			t.Fatalf("no Retry Delay before the end: %v", err)
		}
		if p, _ := m.Primary(); p.Type == dso.TypeRetryDelay {
			if m.Rcode != dns.RcodeSuccess {
				t.Fatalf("Retry Delay rcode %d", m.Rcode)
			}
			break
		}
	}
	c.conn.Close()
	<-stopped
}

// A reload that stops serving a zone ends its sessions with a Retry Delay
// REFUSED.
func TestDNSPushZoneDropped(t *testing.T) {
	s, cfg, tlsAddr, pool := pushServer(t, "www IN A 192.0.2.1")
	c, err := dialDSO(t, tlsAddr, pool)
	if err != nil {
		t.Fatal(err)
	}
	if rc := c.subscribe(1, "www.example.org.", dns.TypeA); rc != dns.RcodeSuccess {
		t.Fatalf("SUBSCRIBE rcode %d", rc)
	}
	// A zone inside the block (llq refuses one the block does not serve),
	// not containing www.
	cfg.zones = "sub.example.org"
	s.restart(s.corefileWith(cfg))
	for {
		m, err := c.read()
		if errors.Is(err, os.ErrDeadlineExceeded) || err != nil {
			t.Fatalf("no Retry Delay: %v", err)
		}
		if p, _ := m.Primary(); p.Type == dso.TypeRetryDelay {
			if m.Rcode != dns.RcodeRefused {
				t.Fatalf("Retry Delay rcode %d", m.Rcode)
			}
			return
		}
	}
}

// tsharkCheck has Wireshark's DSO dissector, a decoder we did not write,
// read the session: every message is DSO, and each TLV type it sees is the
// one llq's parser saw.
func tsharkCheck(t *testing.T, frames [][]byte) {
	t.Helper()
	_, err := exec.LookPath("tshark")
	if err != nil {
		t.Log("tshark is not installed (Debian package tshark; .ci/run installs it): session bytes not checked by Wireshark")
		return
	}
	rows := tsharktest.Frames(t, frames, "dns.flags.opcode", "dns.dso.tlv.type", "dns.dso.tlv.length")
	if len(rows) != len(frames) {
		t.Fatalf("tshark decoded %d messages, the session had %d: %q", len(rows), len(frames), rows)
	}
	for i, f := range frames {
		m, err := dso.Parse(f[3:])
		if err != nil {
			t.Fatal(err)
		}
		var types, lens []string
		for it := m.TLVs(); ; {
			tlv, ok := it.Next()
			if !ok {
				break
			}
			types = append(types, fmt.Sprint(tlv.Type))
			lens = append(lens, fmt.Sprint(len(tlv.Data)))
		}
		want := "6|" + strings.Join(types, ",") + "|" + strings.Join(lens, ",")
		if got := strings.Join(rows[i], "|"); got != want {
			t.Errorf("message %d: tshark says %q, llq's parser %q", i, got, want)
		}
	}
}

// TestDNSPushACLRefused: a client that acl refuses on CoreDNS's port gets
// REFUSED for its SUBSCRIBE, no PUSH, and leaves no subscription behind;
// an allowed client in the same block subscribes as usual.
func TestDNSPushACLRefused(t *testing.T) {
	z := zoneFile(t, "example.org", "www IN A 192.0.2.1")
	cert, key, pool := certChain(t)
	tlsAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
	inst, _, _, err := ctest.CoreDNSServerAndPorts(fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1
    acl {
        block net 127.0.0.2/32
    }
    llq {
        listen 127.0.0.1:0
        tls %s %s
        tls-listen %s
    }
    file %s
}
`, cert, key, tlsAddr, z.zoneFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.ShutdownCallbacks(); inst.Stop() })

	subs := metric(t, "push_subscriptions")
	refused := counter(t, "push_subscribes_total", "result", "refused")
	topics := metric(t, "topics")

	conn, err := tls.DialWithDialer(&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}, "tcp", tlsAddr.String(),
		&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	blocked := &dsoConn{t: t, conn: conn}
	if rc := blocked.subscribe(1, "www.example.org.", dns.TypeA); rc != dns.RcodeRefused {
		t.Fatalf("blocked client's SUBSCRIBE: rcode %s, want REFUSED", dns.RcodeToString[rc])
	}
	// The next message on the session is the response to a Keepalive: no
	// PUSH came before it.
	blocked.b.Start(2, false, 0)
	blocked.b.Keepalive(dso.Keepalive{Inactivity: 15000, Interval: 15000})
	blocked.send()
	if m, err := blocked.read(); err != nil {
		t.Fatal(err)
	} else if p, _ := m.Primary(); !m.Response || m.ID != 2 {
		t.Fatalf("blocked client got %s (id %d) before its Keepalive response", dso.TypeName(p.Type), m.ID)
	}
	if n := refused(); n != 1 {
		t.Fatalf("push_subscribes_total{refused} grew by %v, want 1", n)
	}
	if n := metric(t, "push_subscriptions"); n != subs {
		t.Fatalf("push_subscriptions %v after the refusal, was %v", n, subs)
	}
	if n := metric(t, "topics"); n != topics {
		t.Fatalf("topics %v after the refusal, was %v", n, topics)
	}

	allowed, err := dialDSO(t, tlsAddr, pool)
	if err != nil {
		t.Fatal(err)
	}
	if rc := allowed.subscribe(1, "www.example.org.", dns.TypeA); rc != dns.RcodeSuccess {
		t.Fatalf("allowed client's SUBSCRIBE: rcode %s", dns.RcodeToString[rc])
	}
	wantPush(t, allowed.push(), "www.example.org.\t3600\tIN\tA\t192.0.2.1")
	if n := metric(t, "push_subscriptions"); n != subs+1 {
		t.Fatalf("push_subscriptions %v with the allowed client's, was %v", n, subs)
	}
	allowed.conn.Close()
	eventually(t, "the allowed client's subscription gone with its session", func() bool {
		return metric(t, "push_subscriptions") == subs && metric(t, "topics") == topics
	})
}

// TestPrivateLLQ: LLQ over TLS (the LLQ presentation's "private LLQ")
// against CoreDNS, with miekg/dns's TLS client: discovery of
// _dns-llq-tls._tcp, a two-message setup on the TLS listener, the zone
// file's change as an event on the connection, acknowledged there, a
// refresh, and the LLQ gone with the connection.
func TestPrivateLLQ(t *testing.T) {
	s, _, tlsAddr, pool := pushServer(t, "www IN A 192.0.2.1")
	r := s.query("_dns-llq-tls._tcp.example.org.", dns.TypeSRV)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.SRV).Port != tlsAddr.Port() {
		t.Fatalf("discovery: %v", r)
	}
	live := metric(t, "subscriptions")
	c := &dns.Client{Net: "tcp-tls", TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, Timeout: 20 * time.Second}
	conn, err := c.Dial(tlsAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	exchange := func(m *dns.Msg) *dns.Msg {
		t.Helper()
		conn.SetDeadline(time.Now().Add(20 * time.Second)) // a hung server fails the test; no timing asserted
		if err := conn.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		r, err := conn.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	q := question("www.example.org.", dns.TypeA)
	ack := exchange(llqMsg(q, wire.OpSetup, 0, 3600))
	o := option(t, ack)
	if o.Opcode != wire.OpSetup || o.Error != wire.NoError || o.Id == 0 || len(ack.Answer) != 1 {
		t.Fatalf("ACK: %v", ack)
	}
	if n := metric(t, "subscriptions"); n != live+1 {
		t.Fatalf("subscriptions %v, was %v", n, live)
	}

	s.setRecords("www IN A 192.0.2.2")
	ev, err := conn.ReadMsg()
	if err != nil {
		t.Fatal(err)
	}
	eo := option(t, ev)
	if !ev.Response || eo.Opcode != wire.OpEvent || eo.Id != o.Id {
		t.Fatalf("event: %v", ev)
	}
	if got, want := rrSet(ev.Answer), rrSetOf(t, "www IN A 192.0.2.2", "www 4294967295 IN A 192.0.2.1"); !slices.Equal(got, want) {
		t.Fatalf("event records %v, want %v", got, want)
	}
	ackEv := llqMsg(q, wire.OpEvent, o.Id, eo.LeaseLife)
	ackEv.Id, ackEv.Response = ev.Id, true
	if err := conn.WriteMsg(ackEv); err != nil {
		t.Fatal(err)
	}
	if ro := option(t, exchange(llqMsg(q, wire.OpRefresh, o.Id, 3600))); ro.Error != wire.NoError || ro.LeaseLife == 0 {
		t.Fatalf("refresh: %v", ro)
	}
	conn.Close()
	eventually(t, "the LLQ gone with its connection", func() bool { return metric(t, "subscriptions") == live })
}

// TestPrivateLLQLargeAnswerSet: one LLQ message over TLS asks for two
// names of 700 PTRs of long names each (about 40 KB apiece: CoreDNS
// answers no single question beyond 64 KiB, even over TCP). Together they
// are beyond one DNS message: the ACK carries what fits, never TC, and the
// rest follows as events on the connection. A change replacing one name's
// every record (700 removes and 700 adds, about 80 KB) is split into events
// of at most one message each. The client, reading the connection alone,
// ends with every record, under the default max-queued.
func TestPrivateLLQLargeAnswerSet(t *testing.T) {
	ptrs := func(name string, from, to int) []string {
		var out []string
		for i := from; i < to; i++ {
			out = append(out, fmt.Sprintf("%s IN PTR instance-%04d-%s.example.org.", name, i, strings.Repeat("x", 40)))
		}
		return out
	}
	a, b := ptrs("_a", 0, 700), ptrs("_b", 0, 700)
	s, _, tlsAddr, pool := pushServer(t, slices.Concat(a, b)...)
	c := &dns.Client{Net: "tcp-tls", TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, Timeout: 20 * time.Second}
	conn, err := c.Dial(tlsAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	read := func() *dns.Msg {
		t.Helper()
		conn.SetDeadline(time.Now().Add(20 * time.Second)) // a hung server fails the test; no timing asserted
		m, err := conn.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		if m.Truncated {
			t.Fatalf("truncated: %v", m.MsgHdr)
		}
		return m
	}
	// What the client holds, by LLQ ID: the ACK's answers for it, then
	// each event's adds and removes.
	held := map[uint64]map[string]bool{}
	apply := func(id uint64, rrs []dns.RR) {
		for _, rr := range rrs {
			gone := rr.Header().Ttl == wire.RemoveTTL
			for _, k := range rrSet([]dns.RR{rr}) {
				if gone {
					delete(held[id], k)
				} else {
					held[id][k] = true
				}
			}
		}
	}
	holds := func(id uint64, want []string) bool {
		return slices.Equal(slices.Sorted(maps.Keys(held[id])), rrSetOf(t, want...))
	}

	qa, qb := question("_a.example.org.", dns.TypePTR), question("_b.example.org.", dns.TypePTR)
	setup := new(dns.Msg)
	setup.Id = dns.Id()
	setup.Question = []dns.Question{qa, qb}
	wire.SetOptions(setup, 1232, wire.NewOption(wire.OpSetup, wire.NoError, 0, 3600), wire.NewOption(wire.OpSetup, wire.NoError, 0, 3600))
	if err := conn.WriteMsg(setup); err != nil {
		t.Fatal(err)
	}
	ack := read()
	opts := wire.Options(ack)
	if ack.Id != setup.Id || len(opts) != 2 || len(ack.Answer) == 0 || len(ack.Answer) >= len(a)+len(b) {
		t.Fatalf("ACK %v with %d of %d answers: want what fits", opts, len(ack.Answer), len(a)+len(b))
	}
	ids := map[string]uint64{}
	for i, o := range opts {
		if o.Opcode != wire.OpSetup || o.Error != wire.NoError || o.Id == 0 {
			t.Fatalf("ACK option %v", o)
		}
		ids[setup.Question[i].Name] = o.Id
		held[o.Id] = map[string]bool{}
	}
	for _, rr := range ack.Answer {
		apply(ids[strings.ToLower(rr.Header().Name)], []dns.RR{rr})
	}
	// event reads an event, acknowledges it and returns its LLQ.
	event := func() uint64 {
		t.Helper()
		ev := read()
		eo := option(t, ev)
		if !ev.Response || eo.Opcode != wire.OpEvent || held[eo.Id] == nil {
			t.Fatalf("event: %v", ev)
		}
		apply(eo.Id, ev.Answer)
		ackEv := llqMsg(ev.Question[0], wire.OpEvent, eo.Id, eo.LeaseLife)
		ackEv.Id, ackEv.Response = ev.Id, true
		if err := conn.WriteMsg(ackEv); err != nil {
			t.Fatal(err)
		}
		return eo.Id
	}
	idA, idB := ids["_a.example.org."], ids["_b.example.org."]
	for !holds(idA, a) || !holds(idB, b) {
		event()
	}

	a2 := ptrs("_a", 1000, 1700)
	s.setRecords(slices.Concat(a2, b)...)
	events := 0
	for !holds(idA, a2) {
		if event() == idA {
			events++
		}
	}
	if events < 2 || !holds(idB, b) {
		t.Fatalf("a change of 1,400 records came in %d event", events)
	}
}

// TestDNSPushKeepalive: in CoreDNS, a client's Keepalive gets the timers it
// asks for within the server's (1 h and 1 min by default), and its session
// is held to them: asking for a 1 s inactivity timeout, a session without
// a subscription is closed (after RFC 8490's 5 s floor) and counted idle.
func TestDNSPushKeepalive(t *testing.T) {
	_, _, tlsAddr, pool := pushServer(t, "www IN A 192.0.2.1")
	idle := counter(t, "push_sessions_ended_total", "reason", "idle")
	c, err := dialDSO(t, tlsAddr, pool)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(id uint16, k dso.Keepalive) dso.Keepalive {
		t.Helper()
		c.b.Start(id, false, 0)
		c.b.Keepalive(k)
		c.send()
		for {
			m, err := c.read()
			if err != nil {
				t.Fatal(err)
			}
			if !m.Response || m.ID != id {
				continue
			}
			p, _ := m.Primary()
			got, err := dso.ParseKeepalive(p)
			if m.Rcode != dns.RcodeSuccess || err != nil {
				t.Fatalf("Keepalive response: rcode %d, %v", m.Rcode, err)
			}
			return got
		}
	}
	if got := ask(1, dso.Keepalive{Inactivity: dso.Infinite, Interval: dso.Infinite}); got != (dso.Keepalive{Inactivity: 60000, Interval: 3600000}) {
		t.Fatalf("asking for infinity: %+v, want the server's 1 min and 1 h", got)
	}
	if got := ask(2, dso.Keepalive{Inactivity: 1000, Interval: 20000}); got != (dso.Keepalive{Inactivity: 1000, Interval: 20000}) {
		t.Fatalf("asking for 1 s and 20 s: %+v", got)
	}
	if _, err := c.read(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the idle session was not closed: %v", err)
	}
	eventually(t, "the session counted idle", func() bool { return idle() == 1 })
}
