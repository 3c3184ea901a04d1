package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

const waitFor = 5 * time.Second

// lockedBuffer lets the test read what the command wrote while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// llqPeer is a scripted LLQ server on loopback UDP.
type llqPeer struct {
	t    *testing.T
	conn *net.UDPConn
	addr netip.AddrPort
	in   chan packet
}

type packet struct {
	m    *dns.Msg
	from netip.AddrPort
}

func newLLQPeer(t *testing.T) *llqPeer {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p := &llqPeer{t: t, conn: conn, addr: conn.LocalAddr().(*net.UDPAddr).AddrPort(), in: make(chan packet, 100)}
	go func() {
		b := make([]byte, 65535)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if m.Unpack(b[:n]) == nil {
				p.in <- packet{m, from}
			}
		}
	}()
	return p
}

func (p *llqPeer) recv() packet {
	p.t.Helper()
	select {
	case pk := <-p.in:
		return pk
	case <-time.After(waitFor):
		p.t.Fatal("peer: nothing received")
	}
	return packet{}
}

func (p *llqPeer) send(m *dns.Msg, to netip.AddrPort) {
	p.t.Helper()
	b, err := m.Pack()
	if err != nil {
		p.t.Fatal(err)
	}
	p.conn.WriteToUDPAddrPort(b, to)
}

func (p *llqPeer) reply(req packet, op, code uint16, id uint64, lease uint32, answers ...dns.RR) {
	p.t.Helper()
	m := new(dns.Msg)
	m.SetReply(req.m)
	m.Answer = answers
	wire.SetOptions(m, 1232, wire.NewOption(op, code, id, lease))
	p.send(m, req.from)
}

func mustRR(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func start(ctx context.Context, args ...string) (<-chan int, *lockedBuffer, *lockedBuffer) {
	stdout, stderr := new(lockedBuffer), new(lockedBuffer)
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, stdout, stderr) }()
	return done, stdout, stderr
}

func exitOf(t *testing.T, done <-chan int) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(2 * waitFor):
		t.Fatal("command did not exit")
	}
	return -1
}

func waitOutput(t *testing.T, b *lockedBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !strings.Contains(b.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output lacks %q:\n%s", want, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatch(t *testing.T) {
	p := newLLQPeer(t)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	a1 := mustRR(t, "www.example.org. 3600 IN A 192.0.2.1")
	a2 := mustRR(t, "www.example.org. 60 IN A 192.0.2.7")

	done, stdout, stderr := start(ctx, "watch", "www.example.org", "@"+p.addr.String(), "-lease", "1h", "A")
	setup := p.recv()
	if q := setup.m.Question[0]; q.Name != "www.example.org." || q.Qtype != dns.TypeA {
		t.Errorf("question = %v", q)
	}
	if o := wire.Options(setup.m); len(o) != 1 || o[0].LeaseLife != 3600 {
		t.Errorf("setup LLQ options = %v, want lease 3600", o)
	}
	p.reply(setup, wire.OpSetup, 0, 0xabc, 3600)
	cr := p.recv()
	p.reply(cr, wire.OpSetup, 0, 0xabc, 3600, a1)
	waitOutput(t, stdout, "ANSWER")

	ev := new(dns.Msg)
	ev.Id = 999
	ev.Response = true
	ev.Question = setup.m.Question
	gone := dns.Copy(a1)
	gone.Header().Ttl = wire.RemoveTTL
	ev.Answer = []dns.RR{a2, gone}
	wire.SetOptions(ev, 1232, wire.NewOption(wire.OpEvent, 0, 0xabc, 3000))
	p.send(ev, cr.from)
	if ack := p.recv(); !ack.m.Response || ack.m.Id != 999 {
		t.Errorf("want the event's ack, got\n%s", ack.m)
	}
	waitOutput(t, stdout, "ADD")

	stop() // as SIGINT would
	term := p.recv()
	if o := wire.Options(term.m); len(o) != 1 || o[0].Opcode != wire.OpRefresh || o[0].LeaseLife != 0 || o[0].Id != 0xabc {
		t.Errorf("want a terminate, got\n%s", term.m)
	}
	p.reply(term, wire.OpRefresh, 0, 0xabc, 0)
	if code := exitOf(t, done); code != exitOK {
		t.Errorf("exit %d, want 0; stderr:\n%s", code, stderr)
	}

	ts := `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z`
	want := regexp.MustCompile(`^` + ts + ` ANSWER www\.example\.org\. 3600 IN A 192\.0\.2\.1
` + ts + ` REMOVE www\.example\.org\. 3600 IN A 192\.0\.2\.1
` + ts + ` ADD www\.example\.org\. 60 IN A 192\.0\.2\.7
$`)
	if !want.MatchString(stdout.String()) {
		t.Errorf("stdout:\n%s", stdout)
	}
	if !strings.Contains(stderr.String(), "LLQ 0xabc") {
		t.Errorf("stderr does not report the LLQ:\n%s", stderr)
	}
}

func TestWatchErrors(t *testing.T) {
	tests := []struct {
		code  uint16
		lease uint32
		exit  int
		text  string
	}{
		{wire.ServFull, 60, 11, "SERV-FULL (retry after 60s): the server is at capacity; try again in 1m0s"},
		{wire.Static, 0, 12, "STATIC: this data never changes"},
		{wire.FormatErr, 0, 13, "FORMAT-ERR: the server found the request malformed"},
		{wire.NoSuchLLQ, 0, 14, "NO-SUCH-LLQ: the server does not know this LLQ"},
		{wire.BadVers, 0, 15, "BAD-VERS"},
		{wire.UnknownErr, 0, 16, "UNKNOWN-ERR: the server could not serve the LLQ"},
	}
	for _, tc := range tests {
		t.Run(wire.ErrorName(tc.code), func(t *testing.T) {
			p := newLLQPeer(t)
			done, _, stderr := start(context.Background(), "watch", "www.example.org", "@"+p.addr.String())
			setup := p.recv()
			p.reply(setup, wire.OpSetup, tc.code, 0, tc.lease)
			if code := exitOf(t, done); code != tc.exit {
				t.Errorf("exit %d, want %d", code, tc.exit)
			}
			msg := stderr.String()
			if !strings.Contains(msg, tc.text) || !strings.Contains(msg, p.addr.String()) {
				t.Errorf("stderr = %q, want it to name %s and say %q", msg, p.addr, tc.text)
			}
		})
	}
}

func TestWatchLost(t *testing.T) {
	p := newLLQPeer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A 1 s lease is refreshed after 0.8 s; the refresh is refused, as by a
	// server that restarted, so the watch sets the LLQ up again and prints
	// what changed meanwhile.
	done, stdout, stderr := start(ctx, "watch", "www.example.org", "@"+p.addr.String(), "-retry", "100ms")
	a1 := mustRR(t, "www.example.org. 60 IN A 192.0.2.1")
	a2 := mustRR(t, "www.example.org. 60 IN A 192.0.2.2")
	setup := p.recv()
	p.reply(setup, wire.OpSetup, 0, 5, 1)
	cr := p.recv()
	p.reply(cr, wire.OpSetup, 0, 5, 1, a1)
	ref := p.recv()
	p.reply(ref, wire.OpRefresh, wire.NoSuchLLQ, 5, 0)

	again := p.recv()
	if o := wire.Options(again.m); len(o) != 1 || o[0].Opcode != wire.OpSetup || o[0].Id != 0 {
		t.Fatalf("after NO-SUCH-LLQ want a new setup request, got %v", again.m)
	}
	p.reply(again, wire.OpSetup, 0, 6, 60)
	cr = p.recv()
	p.reply(cr, wire.OpSetup, 0, 6, 60, a2)
	waitOutput(t, stdout, "ADD www.example.org. 60 IN A 192.0.2.2")
	waitOutput(t, stdout, "REMOVE www.example.org. 60 IN A 192.0.2.1")
	if !strings.Contains(stderr.String(), "NO-SUCH-LLQ to REFRESH") || !strings.Contains(stderr.String(), "setting the LLQ up again") {
		t.Errorf("stderr:\n%s", stderr)
	}
	// One thing to say: the watch sets the LLQ up again itself, so nothing
	// tells the user to.
	if strings.Contains(stderr.String(), "watch again") {
		t.Errorf("the recovery message also tells the user to watch again:\n%s", stderr)
	}
	cancel()
	term := p.recv()
	p.reply(term, wire.OpRefresh, 0, 6, 0)
	if code := exitOf(t, done); code != 0 {
		t.Errorf("exit %d, want 0; stderr:\n%s", code, stderr)
	}
}

func TestWatchUnreachable(t *testing.T) {
	// A port that nothing listens on.
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := conn.LocalAddr().String()
	conn.Close()
	done, _, stderr := start(context.Background(), "watch", "www.example.org", "@"+addr, "-retry", "10ms")
	if code := exitOf(t, done); code != exitNoReply {
		t.Errorf("exit %d, want %d", code, exitNoReply)
	}
	want := fmt.Sprintf("no reply from %s to SETUP request after 3 attempts", addr)
	if !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr = %q, want %q", stderr, want)
	}
}

func TestWatchDiscovers(t *testing.T) {
	p := newLLQPeer(t)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			switch q := r.Question[0]; {
			case q.Qtype == dns.TypeSOA:
				m.Ns = append(m.Ns, mustRR(t, "example.org. 60 IN SOA ns. admin. 1 2 3 4 5"))
			case q.Qtype == dns.TypeSRV && q.Name == "_dns-llq._udp.example.org.":
				m.Answer = append(m.Answer, &dns.SRV{
					Hdr:  dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 60},
					Port: p.addr.Port(), Target: "llq.example.org."})
				m.Extra = append(m.Extra, mustRR(t, "llq.example.org. 60 IN A 127.0.0.1"))
			}
			w.WriteMsg(m)
		})}
	go srv.ActivateAndServe()
	<-started
	defer srv.Shutdown()

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done, _, stderr := start(ctx, "watch", "-resolver", pc.LocalAddr().String(), "www.example.org", "AAAA")
	setup := p.recv()
	if q := setup.m.Question[0]; q.Qtype != dns.TypeAAAA {
		t.Errorf("question = %v", q)
	}
	p.reply(setup, wire.OpSetup, 0, 6, 7200)
	cr := p.recv()
	p.reply(cr, wire.OpSetup, 0, 6, 7200)
	waitOutput(t, stderr, "LLQ 0x6")
	stop()
	term := p.recv()
	p.reply(term, wire.OpRefresh, 0, 6, 0)
	if code := exitOf(t, done); code != exitOK {
		t.Errorf("exit %d; stderr:\n%s", code, stderr)
	}
	if !strings.Contains(stderr.String(), "zone example.org.") {
		t.Errorf("stderr does not report discovery:\n%s", stderr)
	}
}

func TestParseWatch(t *testing.T) {
	tests := []struct {
		args   []string
		name   string
		qtype  uint16
		server string
		lease  time.Duration
		err    bool
	}{
		{args: []string{"www.example.org"}, name: "www.example.org.", qtype: dns.TypeA, lease: client.DefaultLease},
		{args: []string{"-lease", "10m", "x.org.", "txt", "@192.0.2.1"}, name: "x.org.", qtype: dns.TypeTXT, server: "192.0.2.1", lease: 10 * time.Minute},
		{args: []string{"@[::1]:53", "x.org", "TYPE65", "-lease=20m"}, name: "x.org.", qtype: 65, server: "[::1]:53", lease: 20 * time.Minute},
		{args: []string{}, err: true},
		{args: []string{"x.org", "NOPE"}, err: true},
		{args: []string{"x.org", "A", "extra"}, err: true},
		{args: []string{"x.org", "-udpsize", "100"}, err: true},
		{args: []string{"x.org", "-bogus"}, err: true},
		{args: []string{"x.org", "-proto", "udp"}, err: true},
	}
	for _, tc := range tests {
		w, err := parseWatch(tc.args, new(lockedBuffer))
		if tc.err {
			if err == nil {
				t.Errorf("%q: want an error", tc.args)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if w.q.Name != tc.name || w.q.Qtype != tc.qtype || w.server != tc.server || w.opts.Lease != tc.lease {
			t.Errorf("%q: got %v server %q lease %s", tc.args, w.q, w.server, w.opts.Lease)
		}
	}
	for arg, want := range map[string]client.Proto{"auto": client.ProtoAuto, "push": client.ProtoPush, "LLQ": client.ProtoLLQ} {
		if w, err := parseWatch([]string{"x.org", "-proto", arg}, new(lockedBuffer)); err != nil || w.proto != want {
			t.Errorf("-proto %s: %v, %v", arg, w, err)
		}
	}
}

func TestParseServer(t *testing.T) {
	tests := map[string]string{
		"192.0.2.1":          "192.0.2.1:5352",
		"192.0.2.1:53":       "192.0.2.1:53",
		"::1":                "[::1]:5352",
		"[::1]":              "[::1]:5352",
		"[2001:db8::1]:5353": "[2001:db8::1]:5353",
		"localhost:99":       "127.0.0.1:99",
	}
	for in, want := range tests {
		got, err := parseServer(context.Background(), in, wire.DefaultPort)
		if err != nil || got.String() != want {
			t.Errorf("parseServer(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
}

func TestRun(t *testing.T) {
	var out, errb lockedBuffer
	if code := run(context.Background(), nil, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "llq watch") {
		t.Errorf("no arguments: exit %d, stderr %q", code, errb.String())
	}
	if code := run(context.Background(), []string{"frobnicate"}, &out, &errb); code != exitUsage {
		t.Errorf("unknown command: exit %d", code)
	}
	if code := run(context.Background(), []string{"watch", "-h"}, &out, &errb); code != exitOK {
		t.Errorf("watch -h: exit %d", code)
	}
}
