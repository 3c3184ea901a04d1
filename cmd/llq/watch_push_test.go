package main

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/llqdns/llq/internal/testcert"
	"github.com/miekg/dns"
)

// pushServer is a scripted DNS Push server on loopback TLS: it hands the
// test every DSO message a client sends on its one connection.
type pushServer struct {
	t    *testing.T
	ln   net.Listener
	conn net.Conn
	in   chan dso.Message
	b    dso.Builder
}

func newPushServer(t *testing.T, ca *testcert.CA) *pushServer {
	ln, err := tls.Listen("tcp4", "127.0.0.1:0", ca.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &pushServer{t: t, ln: ln}
}

func (s *pushServer) port() string { return s.ln.Addr().(*net.TCPAddr).AddrPort().String() }

func (s *pushServer) accept() {
	s.t.Helper()
	conn, err := s.ln.Accept()
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	s.conn, s.in = conn, make(chan dso.Message, 10)
	in := s.in
	go func() {
		defer close(in)
		for {
			b, err := dso.ReadMessage(conn, nil, dso.MaxMessageLen)
			if err != nil {
				return
			}
			m, err := dso.Parse(b)
			if err != nil {
				s.t.Errorf("server: %v", err)
				return
			}
			in <- m
		}
	}()
}

// recv returns the next message and its primary TLV type.
func (s *pushServer) recv() (dso.Message, uint16) {
	s.t.Helper()
	select {
	case m, ok := <-s.in:
		if !ok {
			s.t.Fatal("server: connection closed")
		}
		p, _ := m.Primary()
		return m, p.Type
	case <-time.After(waitFor):
		s.t.Fatal("server: nothing received")
	}
	return dso.Message{}, 0
}

func (s *pushServer) respond(id uint16, tlvs func(b *dso.Builder)) {
	s.t.Helper()
	s.b.Start(id, true, 0)
	if tlvs != nil {
		tlvs(&s.b)
	}
	if _, err := s.conn.Write(s.b.Frame()); err != nil {
		s.t.Fatal(err)
	}
}

func (s *pushServer) push(rrs ...dns.RR) {
	s.t.Helper()
	s.b.Start(0, false, 0)
	s.b.StartPush()
	for _, rr := range rrs {
		if err := s.b.AddRecord(rr); err != nil {
			s.t.Fatal(err)
		}
	}
	if _, err := s.conn.Write(s.b.Frame()); err != nil {
		s.t.Fatal(err)
	}
}

// serve takes a session through Keepalive, SUBSCRIBE (answered, then an
// initial PUSH) and the Keepalive the watcher sends after it.
func (s *pushServer) serve(initial ...dns.RR) dns.Question {
	s.t.Helper()
	s.accept()
	keepalive := func(b *dso.Builder) { b.Keepalive(dso.Keepalive{Inactivity: 15000, Interval: 3600000}) }
	m, typ := s.recv()
	if typ != dso.TypeKeepalive {
		s.t.Fatalf("first message is %s", dso.TypeName(typ))
	}
	s.respond(m.ID, keepalive)
	m, typ = s.recv()
	if typ != dso.TypeSubscribe {
		s.t.Fatalf("then %s, want SUBSCRIBE", dso.TypeName(typ))
	}
	p, _ := m.Primary()
	q, err := dso.ParseSubscribe(m, p)
	if err != nil {
		s.t.Fatal(err)
	}
	s.respond(m.ID, nil)
	if len(initial) > 0 {
		s.push(initial...)
	}
	m, typ = s.recv()
	if typ != dso.TypeKeepalive {
		s.t.Fatalf("then %s, want Keepalive", dso.TypeName(typ))
	}
	s.respond(m.ID, keepalive)
	return q
}

func TestWatchPushOutput(t *testing.T) {
	ca := testcert.New(t, "push.example.org")
	s := newPushServer(t, ca)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done, stdout, stderr := start(ctx, "watch", "_ipp._tcp.example.org", "PTR", "@"+s.port(), "-proto", "push", "-ca", ca.CAFile)

	a := mustRR(t, "_ipp._tcp.example.org. 60 IN PTR a._ipp._tcp.example.org.")
	q := s.serve(a)
	if q.Name != "_ipp._tcp.example.org." || q.Qtype != dns.TypePTR || q.Qclass != dns.ClassINET {
		t.Errorf("SUBSCRIBE for %v", q)
	}
	waitOutput(t, stdout, "ANSWER _ipp._tcp.example.org. 60 IN PTR a._ipp._tcp.example.org.")
	b := mustRR(t, "_ipp._tcp.example.org. 60 IN PTR b._ipp._tcp.example.org.")
	s.push(b)
	waitOutput(t, stdout, "ADD _ipp._tcp.example.org. 60 IN PTR b._ipp._tcp.example.org.")
	gone := dns.Copy(a)
	gone.Header().Ttl = dso.RemoveRecordTTL
	s.push(gone)
	waitOutput(t, stdout, "REMOVE _ipp._tcp.example.org. 60 IN PTR a._ipp._tcp.example.org.")

	stop()
	if _, typ := s.recv(); typ != dso.TypeUnsubscribe {
		t.Errorf("on exit the client sent %s, want UNSUBSCRIBE", dso.TypeName(typ))
	}
	if code := exitOf(t, done); code != exitOK {
		t.Errorf("exit %d; stderr:\n%s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 3 {
		t.Errorf("stdout:\n%s", stdout)
	}
	if !strings.Contains(stderr.String(), "DNS Push") {
		t.Errorf("stderr does not say DNS Push:\n%s", stderr)
	}
}

// With -proto auto and no @SERVER, a zone that advertises
// _dns-push-tls._tcp is watched over DNS Push, the certificate checked
// against the SRV target.
func TestWatchAutoDiscoversPush(t *testing.T) {
	ca := testcert.New(t, "push.example.org")
	s := newPushServer(t, ca)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := s.ln.Addr().(*net.TCPAddr).AddrPort().Port()
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			switch q := r.Question[0]; {
			case q.Qtype == dns.TypeSOA:
				m.Ns = append(m.Ns, mustRR(t, "example.org. 60 IN SOA ns. admin. 1 2 3 4 5"))
			case q.Qtype == dns.TypeSRV && q.Name == "_dns-push-tls._tcp.example.org.":
				m.Answer = append(m.Answer, &dns.SRV{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 60},
					Port: port, Target: "push.example.org."})
				m.Extra = append(m.Extra, mustRR(t, "push.example.org. 60 IN A 127.0.0.1"))
			}
			w.WriteMsg(m)
		})}
	go srv.ActivateAndServe()
	<-started
	defer srv.Shutdown()

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done, stdout, stderr := start(ctx, "watch", "-resolver", pc.LocalAddr().String(), "-ca", ca.CAFile, "www.example.org")
	s.serve(mustRR(t, "www.example.org. 60 IN A 192.0.2.1"))
	waitOutput(t, stdout, "ANSWER www.example.org. 60 IN A 192.0.2.1")
	stop()
	if code := exitOf(t, done); code != exitOK {
		t.Errorf("exit %d; stderr:\n%s", code, stderr)
	}
	if !strings.Contains(stderr.String(), "advertises DNS Push") {
		t.Errorf("stderr:\n%s", stderr)
	}
}

// A push server that refuses the subscription ends the command with the
// refusal, as an LLQ refusal does.
func TestWatchPushRefused(t *testing.T) {
	ca := testcert.New(t, "push.example.org")
	s := newPushServer(t, ca)
	done, _, stderr := start(context.Background(), "watch", "elsewhere.example", "@"+s.port(), "-proto", "push", "-ca", ca.CAFile)
	s.accept()
	m, _ := s.recv()
	s.respond(m.ID, func(b *dso.Builder) { b.Keepalive(dso.Keepalive{Inactivity: 15000, Interval: 3600000}) })
	m, _ = s.recv()
	s.b.Start(m.ID, true, dns.RcodeNotAuth)
	s.conn.Write(s.b.Frame())
	if code := exitOf(t, done); code != exitFailure {
		t.Errorf("exit %d, want %d", code, exitFailure)
	}
	if !strings.Contains(stderr.String(), "NOTAUTH") {
		t.Errorf("stderr = %q", stderr)
	}
}
