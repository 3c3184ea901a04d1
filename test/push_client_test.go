package test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	ctest "github.com/coredns/coredns/test"
	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/internal/testcert"
	"github.com/llqdns/llq/internal/tsharktest"
	"github.com/miekg/dns"
)

// pushClientServer starts CoreDNS with llq's DNS Push listener on fixed
// loopback ports (a reload keeps the listener, and with it the sessions),
// serving a certificate for the SRV target llq.example.org. It skips the
// test while llq has no TLS listener.
func pushClientServer(t *testing.T, records ...string) (*server, config, netip.AddrPort, *x509.CertPool) {
	t.Helper()
	ca := testcert.New(t, "llq.example.org")
	port := func() uint16 {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).AddrPort().Port()
	}
	lo := netip.MustParseAddr("127.0.0.1")
	listener, tlsAddr := netip.AddrPortFrom(lo, port()), netip.AddrPortFrom(lo, port())
	cfg := config{options: fmt.Sprintf("listen %s\n        tls %s %s\n        tls-listen %s", listener, ca.CertFile, ca.KeyFile, tlsAddr), llq: listener}
	probe := &server{t: t, zoneFile: filepath.Join(t.TempDir(), "db.example.org"), serial: 1}
	probe.writeZone()
	inst, _, _, err := ctest.CoreDNSServerAndPorts(probe.corefileWith(cfg))
	if err != nil {
		t.Skipf("llq takes no tls directive yet: %v", err)
	}
	inst.ShutdownCallbacks()
	inst.Stop()
	return startServerWith(t, cfg, records...), cfg, tlsAddr, ca.Pool
}

// pushTLS trusts the test CA, whose server certificate names the SRV
// target llq.example.org.
func pushTLS(pool *x509.CertPool) client.PushOptions {
	return client.PushOptions{TLS: &tls.Config{RootCAs: pool}}
}

func nextUpdate(t *testing.T, w *client.Watcher) client.Update {
	t.Helper()
	select {
	case u, ok := <-w.Updates():
		if !ok {
			t.Fatal("updates closed")
		}
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("no update")
	}
	return client.Update{}
}

func rrNames(rrs []dns.RR) string {
	var s []string
	for _, rr := range rrs {
		s = append(s, strings.ReplaceAll(rr.String(), "\t", " "))
	}
	return strings.Join(s, "; ")
}

// The Go client against llq in a real CoreDNS: discovery through the
// server's own DNS finds _dns-push-tls._tcp, the watcher subscribes over
// TLS, gets the initial answers, and follows zone changes (an add, a
// remove) as PUSH messages.
func TestPushClientEndToEnd(t *testing.T) {
	s, _, _, pool := pushClientServer(t, "www IN A 192.0.2.1")
	w := client.Watch(context.Background(), dns.Question{Name: "www.example.org.", Qtype: dns.TypeA},
		client.WatchOptions{Resolver: s.dns, Push: pushTLS(pool), Log: func(l string) { t.Log(l) }})
	defer w.Close()
	u := nextUpdate(t, w)
	if u.Err != nil || u.Proto != client.ProtoPush || !u.Initial || len(u.Answers) != 1 {
		t.Fatalf("first update: %+v", u)
	}
	s.setRecords("www IN A 192.0.2.1", "www IN A 192.0.2.2")
	u = nextUpdate(t, w)
	if u.Err != nil || len(u.Added) != 1 || u.Added[0].(*dns.A).A.String() != "192.0.2.2" || len(u.Answers) != 2 {
		t.Fatalf("after an add: added %s, answers %s, err %v", rrNames(u.Added), rrNames(u.Answers), u.Err)
	}
	s.setRecords("www IN A 192.0.2.2")
	u = nextUpdate(t, w)
	if u.Err != nil || len(u.Removed) != 1 || u.Removed[0].(*dns.A).A.String() != "192.0.2.1" || len(u.Answers) != 1 {
		t.Fatalf("after a remove: removed %s, answers %s, err %v", rrNames(u.Removed), rrNames(u.Answers), u.Err)
	}
}

// TYPE ANY (255) over DNS Push means every record at the name, whatever
// its type; a change of any type arrives.
func TestPushClientAll(t *testing.T) {
	s, _, _, pool := pushClientServer(t, "www IN A 192.0.2.1", `www IN TXT "v=1"`)
	w := client.Watch(context.Background(), dns.Question{Name: "www.example.org.", Qtype: dns.TypeANY},
		client.WatchOptions{Proto: client.ProtoPush, Resolver: s.dns, Push: pushTLS(pool)})
	defer w.Close()
	u := nextUpdate(t, w)
	if u.Err != nil || len(u.Answers) != 2 {
		t.Fatalf("first update: answers %s, err %v", rrNames(u.Answers), u.Err)
	}
	s.setRecords("www IN A 192.0.2.1", `www IN TXT "v=2"`, "www IN AAAA 2001:db8::1")
	u = nextUpdate(t, w)
	for u.Err == nil && len(u.Answers) != 3 {
		u = nextUpdate(t, w) // the change may come in more than one PUSH
	}
	if u.Err != nil {
		t.Fatal(u.Err)
	}
	var types []string
	for _, rr := range w.Answers() {
		types = append(types, dns.TypeToString[rr.Header().Rrtype])
	}
	if got := strings.Join(types, " "); !strings.Contains(got, "AAAA") || !strings.Contains(got, "TXT") || !strings.Contains(got, "A") {
		t.Errorf("answers %s", rrNames(w.Answers()))
	}
}

// Without a TLS listener the zone advertises no push server, and the
// watcher in auto mode uses LLQ.
func TestPushClientFallsBackToLLQ(t *testing.T) {
	s := startServer(t, "", "www IN A 192.0.2.1")
	w := client.Watch(context.Background(), dns.Question{Name: "www.example.org.", Qtype: dns.TypeA},
		client.WatchOptions{Resolver: s.dns, LLQ: client.Options{RetryInterval: 250 * time.Millisecond}})
	defer w.Close()
	u := nextUpdate(t, w)
	if u.Err != nil || u.Proto != client.ProtoLLQ || len(u.Answers) != 1 {
		t.Fatalf("first update: %+v", u)
	}
	s.setRecords("www IN A 192.0.2.9")
	u = nextUpdate(t, w)
	if u.Err != nil || len(u.Added) != 1 || len(u.Removed) != 1 {
		t.Fatalf("after a change: %+v", u)
	}
}

// Shutting the server down sends a Retry Delay NOERROR (RFC 8490 section 7.2):
// the watcher reports the session's end with it and the delay it honours.
func TestPushClientServerShutdown(t *testing.T) {
	s, _, _, pool := pushClientServer(t, "www IN A 192.0.2.1")
	w := client.Watch(context.Background(), dns.Question{Name: "www.example.org.", Qtype: dns.TypeA},
		client.WatchOptions{Proto: client.ProtoPush, Resolver: s.dns, Push: pushTLS(pool)})
	defer w.Close()
	if u := nextUpdate(t, w); u.Err != nil {
		t.Fatal(u.Err)
	}
	s.stop()
	u := nextUpdate(t, w)
	var rd *client.RetryDelayError
	if !errorsAs(u.Err, &rd) || rd.Rcode != dns.RcodeSuccess || len(u.Answers) != 1 {
		t.Fatalf("after shutdown: %v, want a NOERROR Retry Delay and the last answers", u.Err)
	}
	t.Logf("Retry Delay %s, rcode %s", rd.Delay, dns.RcodeToString[rd.Rcode])
}

// A Corefile reload keeps the session and its subscription: a change made
// after it is pushed on the same session.
func TestPushClientReload(t *testing.T) {
	s, cfg, _, pool := pushClientServer(t, "www IN A 192.0.2.1")
	w := client.Watch(context.Background(), dns.Question{Name: "www.example.org.", Qtype: dns.TypeA},
		client.WatchOptions{Proto: client.ProtoPush, Resolver: s.dns, Push: pushTLS(pool)})
	defer w.Close()
	first := nextUpdate(t, w)
	if first.Err != nil {
		t.Fatal(first.Err)
	}
	s.restart(s.corefileWith(cfg))
	s.setRecords("www IN A 192.0.2.1", "www IN A 192.0.2.3")
	u := nextUpdate(t, w)
	if u.Err != nil || u.Initial || len(u.Added) != 1 {
		t.Fatalf("after reload and a change: %+v (the session should have survived)", u)
	}
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// A real session between the Go client and llq in CoreDNS, recorded on
// loopback and decoded by Wireshark's DSO dissector with the TLS keys:
// every message is a well-formed DSO message, the session opens with a
// Keepalive exchange, and the zone's changes arrive as PUSH messages.
func TestPushSessionWireshark(t *testing.T) {
	s, _, server, pool := pushClientServer(t, "www IN A 192.0.2.1")
	capture := tsharktest.Start(t, server.Port())
	keys, keylog := tsharktest.KeyLog(t)
	tlsConfig := &tls.Config{RootCAs: pool, KeyLogWriter: keys, ServerName: "llq.example.org"}
	w := client.Watch(context.Background(), dns.Question{Name: "www.example.org.", Qtype: dns.TypeA},
		client.WatchOptions{Proto: client.ProtoPush, Server: server, Push: client.PushOptions{TLS: tlsConfig}})
	if u := nextUpdate(t, w); u.Err != nil {
		t.Fatal(u.Err)
	}
	s.setRecords("www IN A 192.0.2.2")
	if u := nextUpdate(t, w); u.Err != nil || len(u.Added) != 1 || len(u.Removed) != 1 {
		t.Fatalf("update %+v", u)
	}
	w.Close()
	file := capture.Stop()

	rows := tsharktest.Fields(t, file, keylog, server.Port(), []string{"-Y", "dns"},
		"dns.flags.opcode", "dns.flags.response", "dns.dso.tlv.type", "_ws.malformed", "dns.id")
	// A frame may carry more than one message (the SUBSCRIBE response and
	// the initial PUSH share one TLS record): tshark joins their fields
	// with commas.
	var types []string
	for _, r := range rows {
		opcodes, qrs := strings.Split(r[0], ","), strings.Split(r[1], ",")
		tlvs := []string{}
		if r[2] != "" {
			tlvs = strings.Split(r[2], ",")
		}
		responses := 0
		for i, op := range opcodes {
			if op != "6" {
				t.Errorf("not DSO: %q", r)
			}
			if qrs[i] == "1" {
				responses++
			}
		}
		// Wireshark 4.0 calls a DSO response without TLVs malformed;
		// RFC 8490 allows it (the SUBSCRIBE response). Every message
		// that is not a response must have had its TLV decoded.
		if len(tlvs) < len(opcodes)-responses || (r[3] != "" && responses == 0) {
			t.Errorf("malformed: %q", r)
		}
		types = append(types, tlvs...)
	}
	got := strings.Join(types, " ")
	// Keepalive request and response, SUBSCRIBE, PUSH (initial, then the
	// change), UNSUBSCRIBE at Close; the watcher's Keepalive after the
	// SUBSCRIBE may come between.
	if !regexp.MustCompile(`^1 1 64 (1 1 )?65( 1 1)?( 65)+ 66$`).MatchString(got) {
		t.Errorf("TLV types in the session: %q", got)
	}
	t.Logf("TLV types of the session as Wireshark decoded it: %s", got)
}

// TestPrivateLLQClient: the client package's private LLQ finds
// _dns-llq-tls._tcp, dials TLS with the DNS Push TLS options, sets an LLQ
// up in two messages, applies (and acks) the events read from the
// connection, refreshes, and terminates; the LLQ is gone from the server.
func TestPrivateLLQClient(t *testing.T) {
	s, _, tlsAddr, pool := pushClientServer(t, "www IN A 192.0.2.1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	server, target, zone, err := client.DiscoverPrivate(ctx, s.dns, "www.example.org.")
	if err != nil || server != tlsAddr || zone != "example.org." {
		t.Fatalf("discovery: %v %q %q %v, want %v", server, target, zone, err, tlsAddr)
	}
	live := metric(t, "subscriptions")
	c, err := client.DialPrivate(ctx, server, client.PrivateOptions{PushOptions: client.PushOptions{TLS: &tls.Config{RootCAs: pool}, ServerName: target}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	sub, err := c.Subscribe(ctx, question("www.example.org.", dns.TypeA))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rrSet(sub.Answers()), rrSetOf(t, "www IN A 192.0.2.1"); !slices.Equal(got, want) {
		t.Fatalf("answers %v, want %v", got, want)
	}
	if _, err := c.Subscribe(ctx, question("www.example.net.", dns.TypeA)); err == nil {
		t.Fatal("an LLQ outside the zones")
	}
	if n := metric(t, "subscriptions"); n != live+1 {
		t.Fatalf("subscriptions %v, was %v", n, live)
	}

	s.setRecords("www IN A 192.0.2.2")
	select {
	case ev := <-sub.Events():
		if len(ev.Added) != 1 || len(ev.Removed) != 1 {
			t.Fatalf("event: added %v, removed %v", ev.Added, ev.Removed)
		}
	case <-ctx.Done():
		t.Fatal("no event")
	}
	if got, want := rrSet(sub.Answers()), rrSetOf(t, "www IN A 192.0.2.2"); !slices.Equal(got, want) {
		t.Fatalf("answers %v, want %v", got, want)
	}
	if lease, err := sub.Refresh(ctx, time.Hour); err != nil || lease <= 0 {
		t.Fatalf("refresh: %v %v", lease, err)
	}
	if err := sub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	<-sub.Done()
	if n := metric(t, "subscriptions"); n != live {
		t.Fatalf("subscriptions %v after the terminate, was %v", n, live)
	}
}
