package client

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

func nextUpdate(t *testing.T, w *Watcher) Update {
	t.Helper()
	select {
	case u, ok := <-w.Updates():
		if !ok {
			t.Fatal("Updates closed")
		}
		return u
	case <-time.After(waitFor):
		t.Fatal("no update")
	}
	return Update{}
}

// servePush answers a session's Keepalive, the SUBSCRIBE for q with an
// initial PUSH of initial, and the Keepalive that follows.
func (p *pushPeer) servePush(t *testing.T, q dns.Question, initial ...dns.RR) uint16 {
	t.Helper()
	p.establish(15000, 3600000)
	req := p.recv()
	wantSubscribe(t, req, q)
	p.send(req.id, true, 0)
	if len(initial) > 0 {
		p.send(0, false, 0, pushTLV(t, initial...))
	}
	ping := p.recv()
	if ping.id == 0 || len(ping.tlvs) == 0 || ping.tlvs[0].typ != 1 {
		t.Fatalf("not a Keepalive request: %+v", ping)
	}
	p.send(ping.id, true, 0, tlv(1, u32s(15000, 3600000)))
	return req.id
}

// A watcher over DNS Push reports the initial answers as one Initial
// update, then every change with the whole set; when the server sends a
// Retry Delay it reports the loss, waits, and subscribes again, reporting
// what changed meanwhile.
func TestWatchPush(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	a := rr(t, "_ipp._tcp.example.org. 60 IN PTR a._ipp._tcp.example.org.")
	b := rr(t, "_ipp._tcp.example.org. 60 IN PTR b._ipp._tcp.example.org.")
	w := Watch(context.Background(), pushQ, WatchOptions{Proto: ProtoPush, Server: p.addr, Push: PushOptions{TLS: tlsFor(ca)}, MinRetry: time.Millisecond})
	defer w.Close()

	p.servePush(t, pushQ, a)
	u := nextUpdate(t, w)
	if !u.Initial || u.Err != nil || u.Proto != ProtoPush || u.Server != p.addr || len(u.Answers) != 1 || len(u.Added) != 1 {
		t.Fatalf("first update %+v", u)
	}
	p.send(0, false, 0, pushTLV(t, b))
	u = nextUpdate(t, w)
	if u.Initial || len(u.Answers) != 2 || len(u.Added) != 1 || u.Added[0].(*dns.PTR).Ptr != b.(*dns.PTR).Ptr {
		t.Fatalf("update %+v", u)
	}

	// Go away for 1 ms; come back to find a gone and c added.
	p.send(0, false, 0, tlv(2, u32s(1)))
	u = nextUpdate(t, w)
	var rd *RetryDelayError
	if !errors.As(u.Err, &rd) || len(u.Answers) != 2 {
		t.Fatalf("update %+v, want the Retry Delay", u)
	}
	p.recvEOF()
	c := rr(t, "_ipp._tcp.example.org. 60 IN PTR c._ipp._tcp.example.org.")
	p.servePush(t, pushQ, b, c)
	u = nextUpdate(t, w)
	if !u.Initial || len(u.Answers) != 2 || len(u.Added) != 1 || len(u.Removed) != 1 || u.Removed[0].(*dns.PTR).Ptr != a.(*dns.PTR).Ptr {
		t.Fatalf("update after resubscription %+v", u)
	}
	w.Close()
	un := p.recv()
	if un.tlvs[0].typ != 0x42 {
		t.Errorf("Close sent %+v, want UNSUBSCRIBE", un)
	}
	if _, ok := <-w.Updates(); ok {
		t.Error("Updates not closed")
	}
}

// discoveryResolver answers SOA for example.org and the SRV records given.
func discoveryResolver(t *testing.T, srvs map[string]*dns.SRV, addrs ...dns.RR) string {
	t.Helper()
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
				m.Ns = append(m.Ns, rr(t, "example.org. 60 IN SOA ns. admin. 1 2 3 4 5"))
			case q.Qtype == dns.TypeSRV && srvs[q.Name] != nil:
				m.Answer = append(m.Answer, srvs[q.Name])
				m.Extra = append(m.Extra, addrs...)
			}
			w.WriteMsg(m)
		})}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func srvTo(name string, port uint16, target string) *dns.SRV {
	return &dns.SRV{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 60}, Port: port, Target: target}
}

// Auto discovers _dns-push-tls._tcp and uses DNS Push, checking the
// certificate against the SRV target's name.
func TestWatchAutoPrefersPush(t *testing.T) {
	ca := newTestCA(t)
	p := newPushPeer(t, ca)
	llq := newPeer(t)
	resolver := discoveryResolver(t, map[string]*dns.SRV{
		"_dns-push-tls._tcp.example.org.": srvTo("_dns-push-tls._tcp.example.org.", p.addr.Port(), "push.example.org."),
		"_dns-llq._udp.example.org.":      srvTo("_dns-llq._udp.example.org.", llq.addr.Port(), "push.example.org."),
	}, rr(t, "push.example.org. 60 IN A 127.0.0.1"))
	// No ServerName and no IP in the way: the name must come from the SRV target.
	w := Watch(context.Background(), pushQ, WatchOptions{Resolver: resolver, Push: PushOptions{CAFile: ca.CAFile}})
	defer w.Close()
	p.servePush(t, pushQ)
	if u := nextUpdate(t, w); u.Proto != ProtoPush || !u.Initial || u.Err != nil {
		t.Fatalf("update %+v", u)
	}
}

// Auto falls back to LLQ when the zone advertises no push server.
func TestWatchAutoFallsBackToLLQ(t *testing.T) {
	llq := newPeer(t)
	resolver := discoveryResolver(t, map[string]*dns.SRV{
		"_dns-llq._udp.example.org.": srvTo("_dns-llq._udp.example.org.", llq.addr.Port(), "llq.example.org."),
	}, rr(t, "llq.example.org. 60 IN A 127.0.0.1"))
	w := Watch(context.Background(), testQ, WatchOptions{Resolver: resolver, LLQ: Options{RetryInterval: testRetry}})
	answer := rr(t, "www.example.org. 60 IN A 192.0.2.7")
	setup := llq.recv()
	llq.reply(setup, llqReply(setup.m, wire.OpSetup, 0, 77, 3600))
	cr := llq.recv()
	llq.reply(cr, llqReply(cr.m, wire.OpSetup, 0, 77, 3600, answer))
	u := nextUpdate(t, w)
	if u.Proto != ProtoLLQ || !u.Initial || len(u.Answers) != 1 || len(u.Added) != 1 {
		t.Fatalf("update %+v", u)
	}
	done := make(chan struct{})
	go func() { w.Close(); close(done) }()
	term := llq.recv() // the LLQ is terminated on Close
	wantLLQ(t, onlyLLQ(t, term.m), wire.OpRefresh, 0, 77, 0)
	llq.reply(term, llqReply(term.m, wire.OpRefresh, 0, 77, 0))
	<-done
}

func TestParseProto(t *testing.T) {
	for s, want := range map[string]Proto{"": ProtoAuto, "auto": ProtoAuto, "PUSH": ProtoPush, "llq": ProtoLLQ} {
		if p, err := ParseProto(s); err != nil || p != want || (s != "" && p.String() != want.String()) {
			t.Errorf("ParseProto(%q) = %v, %v", s, p, err)
		}
	}
	if _, err := ParseProto("udp"); err == nil {
		t.Error("ParseProto(udp) succeeded")
	}
}

// TestJittered: a retry is spread over a fifth above its delay, never below
// it, so a Retry Delay is always waited out in full.
func TestJittered(t *testing.T) {
	for _, d := range []time.Duration{time.Millisecond, time.Second, 5 * time.Second} {
		lo, hi := d+d/5, d
		for range 1000 {
			j := jittered(d)
			if j < d || j > d+d/5 {
				t.Fatalf("jittered(%s) = %s, outside [%s, %s]", d, j, d, d+d/5)
			}
			lo, hi = min(lo, j), max(hi, j)
		}
		if hi-lo < d/10 {
			t.Errorf("jittered(%s) spread only over %s in 1,000 draws", d, hi-lo)
		}
	}
	if jittered(0) != 0 {
		t.Error("jittered(0) is not 0")
	}
}
