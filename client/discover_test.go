package client

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// zoneServer is a tiny resolver on loopback that answers from a table keyed
// by "name type"; everything else gets an empty NOERROR. It records the
// questions it was asked.
type zoneServer struct {
	addr string

	mu    sync.Mutex
	asked []string
}

func newZoneServer(t *testing.T, answers map[string]func(*dns.Msg)) *zoneServer {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	z := &zoneServer{addr: pc.LocalAddr().String()}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			q := r.Question[0]
			key := strings.ToLower(q.Name) + " " + dns.TypeToString[q.Qtype]
			z.mu.Lock()
			z.asked = append(z.asked, key)
			z.mu.Unlock()
			m := new(dns.Msg)
			m.SetReply(r)
			if f := answers[key]; f != nil {
				f(m)
			}
			w.WriteMsg(m)
		})}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return z
}

func (z *zoneServer) questions() []string {
	z.mu.Lock()
	defer z.mu.Unlock()
	return append([]string(nil), z.asked...)
}

func answer(t *testing.T, rrs ...string) func(*dns.Msg) {
	return func(m *dns.Msg) {
		for _, s := range rrs {
			m.Answer = append(m.Answer, rr(t, s))
		}
	}
}

const soa = "example.org. 3600 IN SOA ns.example.org. admin.example.org. 1 7200 900 1209600 60"

func TestDiscoverWalksUpAndUsesGlue(t *testing.T) {
	z := newZoneServer(t, map[string]func(*dns.Msg){
		// Neither deep name carries an SOA: the walk goes on to the apex.
		"example.org. SOA": answer(t, soa),
		"_dns-llq._udp.example.org. SRV": func(m *dns.Msg) {
			m.Answer = append(m.Answer,
				rr(t, "_dns-llq._udp.example.org. 60 IN SRV 10 0 5999 backup.example.org."),
				rr(t, "_dns-llq._udp.example.org. 60 IN SRV 0 0 5352 llq.example.org."))
			m.Extra = append(m.Extra,
				rr(t, "LLQ.example.org. 60 IN AAAA ::1"),
				rr(t, "llq.example.org. 60 IN A 127.0.0.53"))
		},
	})
	server, zone, err := Discover(context.Background(), z.addr, "a.b.example.org")
	if err != nil {
		t.Fatal(err)
	}
	if zone != "example.org." || server != netip.MustParseAddrPort("127.0.0.53:5352") {
		t.Errorf("Discover = %s, %s", server, zone)
	}
	want := []string{"a.b.example.org. SOA", "b.example.org. SOA", "example.org. SOA", "_dns-llq._udp.example.org. SRV"}
	if got := z.questions(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("asked %v, want %v", got, want)
	}
}

func TestDiscoverAuthoritySOAAndAddressQuery(t *testing.T) {
	z := newZoneServer(t, map[string]func(*dns.Msg){
		// A negative answer names the zone in its Authority section.
		"host.example.org. SOA": func(m *dns.Msg) {
			m.Rcode = dns.RcodeNameError
			m.Ns = append(m.Ns, rr(t, soa))
		},
		// No glue: the target's address takes queries, A first.
		"_dns-llq._udp.example.org. SRV": answer(t, "_dns-llq._udp.example.org. 60 IN SRV 0 0 53 llq.example.org."),
		"llq.example.org. AAAA":          answer(t, "llq.example.org. 60 IN AAAA 2001:db8::53"),
	})
	server, zone, err := Discover(context.Background(), z.addr, "host.example.org.")
	if err != nil {
		t.Fatal(err)
	}
	if zone != "example.org." || server != netip.MustParseAddrPort("[2001:db8::53]:53") {
		t.Errorf("Discover = %s, %s", server, zone)
	}
	want := []string{"host.example.org. SOA", "_dns-llq._udp.example.org. SRV", "llq.example.org. A", "llq.example.org. AAAA"}
	if got := z.questions(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("asked %v, want %v", got, want)
	}
}

func TestDiscoverNoService(t *testing.T) {
	z := newZoneServer(t, map[string]func(*dns.Msg){
		"example.org. SOA": answer(t, soa),
	})
	_, zone, err := Discover(context.Background(), z.addr, "example.org.")
	if err == nil || !strings.Contains(err.Error(), "_dns-llq._udp.example.org.") {
		t.Fatalf("err = %v, want one naming the SRV name", err)
	}
	if zone != "example.org." {
		t.Errorf("zone = %q", zone)
	}
}

func TestDiscoverNoZone(t *testing.T) {
	z := newZoneServer(t, nil)
	if _, _, err := Discover(context.Background(), z.addr, "x.invalid."); err == nil {
		t.Fatal("want an error without any SOA")
	}
}
