package test

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// etcdServer is a real etcd server, embedded, on loopback. It can be
// stopped and started again on the same ports and data directory.
type etcdServer struct {
	t          *testing.T
	dir        string
	clientPort uint16
	peerPort   uint16
	srv        *embed.Etcd
	cli        *clientv3.Client // the test's own client, for puts and deletes
}

// startEtcd starts a one-member etcd cluster in a temporary directory.
func startEtcd(t *testing.T) *etcdServer {
	t.Helper()
	s := &etcdServer{t: t, dir: t.TempDir(), clientPort: freePort(t), peerPort: freePort(t)}
	for s.peerPort == s.clientPort {
		s.peerPort = freePort(t)
	}
	s.start()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	s.cli = cli
	t.Cleanup(func() {
		cli.Close()
		s.stop()
	})
	return s
}

func (s *etcdServer) endpoint() string { return fmt.Sprintf("http://127.0.0.1:%d", s.clientPort) }

func (s *etcdServer) start() {
	s.t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "llq-test"
	cfg.Dir = s.dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop()) // its shutdown logs errors
	cfg.UnsafeNoFsync = true
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", s.clientPort)}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", s.peerPort)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	var err error
	// The ports were free a moment ago, or were ours before a stop; a
	// socket in TIME_WAIT can refuse them briefly.
	for range 50 {
		if s.srv, err = embed.StartEtcd(cfg); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("starting etcd: %v", err)
	}
	select {
	case <-s.srv.Server.ReadyNotify():
	case <-time.After(10 * time.Second):
		s.srv.Close()
		s.t.Fatal("etcd did not become ready")
	}
}

func (s *etcdServer) stop() {
	if s.srv != nil {
		s.srv.Close()
		s.srv = nil
	}
}

// put writes key, retrying while the server is coming back.
func (s *etcdServer) put(key, value string) int64 {
	s.t.Helper()
	var last error
	for range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r, err := s.cli.Put(ctx, key, value)
		cancel()
		if err == nil {
			return r.Header.Revision
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("etcd put %s: %v", key, last)
	return 0
}

func (s *etcdServer) del(key string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.cli.Delete(ctx, key); err != nil {
		s.t.Fatalf("etcd delete %s: %v", key, err)
	}
}

// record is a SkyDNS record as the etcd plugin reads it.
func record(host string) string { return fmt.Sprintf(`{"host":%q,"ttl":60}`, host) }

func srvRecord(host string, port int) string {
	return fmt.Sprintf(`{"host":%q,"port":%d,"ttl":60}`, host, port)
}

// etcdCorefile serves example.org from etcd, with llq on a fixed listener
// and polling effectively off: every event must come from the watch.
func etcdCorefile(endpoint string, llq netip.AddrPort) string {
	return fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1
    llq {
        listen %s
        lease 2 60
        retransmit 200ms 3
        poll 1h
    }
    cache 30
    etcd example.org {
        endpoint %s
        path /skydns
    }
}
`, llq, endpoint)
}

// startEtcdDNS starts CoreDNS with llq in front of etcd and waits until
// llq's watch is up (it marks the zone once when it is created).
func startEtcdDNS(t *testing.T, es *etcdServer) *server {
	t.Helper()
	created := counter(t, "trigger_changes_total", "trigger", "etcd")
	s := &server{t: t, llq: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))}
	s.start(etcdCorefile(es.endpoint(), s.llq))
	eventually(t, "llq's etcd watch", func() bool { return created() >= 1 })
	return s
}

// events collects what a subscription's Events channel carried so far.
func eventRRs(sub *client.Subscription) (added, removed []string) {
	var a, r []dns.RR
	for _, ev := range drain(sub) {
		a = append(a, ev.Added...)
		r = append(r, ev.Removed...)
	}
	return rrSet(a), rrSet(r)
}

// TestEtcdAddRemove: a put of a SkyDNS record is an ADD event for its name,
// a delete a REMOVE, with no poll to help.
func TestEtcdAddRemove(t *testing.T) {
	es := startEtcd(t)
	s := startEtcdDNS(t, es)
	c := dial(t, s.llq, client.Options{})
	sub := subscribe(t, c, "www.example.org.", dns.TypeA)
	if got := sub.Answers(); len(got) != 0 {
		t.Fatalf("answers before any record: %v", got)
	}
	changes := counter(t, "trigger_changes_total", "trigger", "etcd")
	polled := counter(t, "resolutions_total", "trigger", "poll")

	es.put("/skydns/org/example/www", record("192.0.2.7"))
	want := rrSetOf(t, "www 60 IN A 192.0.2.7")
	converge(t, sub, want)
	if added, removed := eventRRs(sub); !slices.Equal(added, want) || len(removed) != 0 {
		t.Errorf("put: events added %v removed %v, want added %v", added, removed, want)
	}

	es.del("/skydns/org/example/www")
	converge(t, sub, nil)
	if added, removed := eventRRs(sub); len(added) != 0 || !slices.Equal(removed, want) {
		t.Errorf("delete: events added %v removed %v, want removed %v", added, removed, want)
	}
	if n := changes(); n != 2 {
		t.Errorf("trigger_changes_total{etcd} grew by %v, want 2", n)
	}
	if n := polled(); n != 0 {
		t.Errorf("the poll re-resolved %v topics", n)
	}
}

// srvTargetsOf returns the SRV targets among rrs, sorted.
func srvTargetsOf(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if srv, ok := rr.(*dns.SRV); ok {
			out = append(out, strings.ToLower(srv.Target))
		}
	}
	slices.Sort(out)
	return out
}

// TestEtcdSRV: an SRV question is answered from the keys below its name;
// a new key there is an event for it.
func TestEtcdSRV(t *testing.T) {
	es := startEtcd(t)
	es.put("/skydns/org/example/_tcp/_http/x1", srvRecord("srv1.example.net", 80))
	s := startEtcdDNS(t, es)
	c := dial(t, s.llq, client.Options{})
	sub := subscribe(t, c, "_http._tcp.example.org.", dns.TypeSRV)
	if got := srvTargetsOf(sub.Answers()); !slices.Equal(got, []string{"srv1.example.net."}) {
		t.Fatalf("SRV targets at setup %v", got)
	}

	es.put("/skydns/org/example/_tcp/_http/x2", srvRecord("srv2.example.net", 8080))
	eventually(t, "the second SRV target", func() bool {
		return slices.Equal(srvTargetsOf(sub.Answers()), []string{"srv1.example.net.", "srv2.example.net."})
	})
	var added []dns.RR
	for _, ev := range drain(sub) {
		added = append(added, ev.Added...)
	}
	if !slices.Contains(srvTargetsOf(added), "srv2.example.net.") {
		t.Errorf("no event added the SRV record for srv2: %v", added)
	}

	es.del("/skydns/org/example/_tcp/_http/x1")
	eventually(t, "the first SRV target to go", func() bool {
		return slices.Equal(srvTargetsOf(sub.Answers()), []string{"srv2.example.net."})
	})
}

// TestEtcdScoped: a put re-resolves the topics its key can affect (the
// name, its ancestors, wildcard questions above it) and leaves the other
// names alone.
func TestEtcdScoped(t *testing.T) {
	es := startEtcd(t)
	for i := range 20 {
		es.put(fmt.Sprintf("/skydns/org/example/host%02d", i), record(fmt.Sprintf("192.0.2.%d", 100+i)))
	}
	s := startEtcdDNS(t, es)
	c := dial(t, s.llq, client.Options{})
	var others []*client.Subscription
	for i := range 20 {
		others = append(others, subscribe(t, c, fmt.Sprintf("host%02d.example.org.", i), dns.TypeA))
	}
	www := subscribe(t, c, "www.example.org.", dns.TypeA)
	apex := subscribe(t, c, "example.org.", dns.TypeA) // answered from every key below it
	wild := subscribe(t, c, "*.example.org.", dns.TypeA)
	deep := subscribe(t, c, "x.www.example.org.", dns.TypeA)
	resolved := counter(t, "resolutions_total", "trigger", "etcd")

	es.put("/skydns/org/example/www", record("192.0.2.7"))
	converge(t, www, rrSetOf(t, "www 60 IN A 192.0.2.7"))
	eventually(t, "the apex and the wildcard to see www", func() bool {
		return len(apex.Answers()) == 21 && len(wild.Answers()) == 21
	})
	// www, its ancestor the apex, the wildcard question and the name below
	// www; none of the 20 siblings.
	if n := resolved(); n != 4 {
		t.Errorf("one put re-resolved %v topics, want 4", n)
	}
	for _, o := range others {
		if evs := drain(o); len(evs) != 0 {
			t.Errorf("%s got an event", o.Question().Name)
		}
	}
	if evs := drain(deep); len(evs) != 0 {
		t.Errorf("%s got an event", deep.Question().Name)
	}
}

// TestEtcdRestart: the etcd server goes away and comes back on the same
// ports with the same data; llq's watch resumes, and a change made as soon
// as the server is back is not lost.
func TestEtcdRestart(t *testing.T) {
	es := startEtcd(t)
	es.put("/skydns/org/example/www", record("192.0.2.1"))
	s := startEtcdDNS(t, es)
	c := dial(t, s.llq, client.Options{})
	sub := subscribe(t, c, "www.example.org.", dns.TypeA)
	converge(t, sub, rrSetOf(t, "www 60 IN A 192.0.2.1"))

	changes := counter(t, "trigger_changes_total", "trigger", "etcd")
	start := time.Now()
	es.stop() // waits several seconds for llq's watch stream to end
	stopped := time.Now()
	es.start()
	t.Logf("etcd stopped in %s, started again in %s", stopped.Sub(start).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
	// At once: llq's client has not reconnected yet.
	es.put("/skydns/org/example/www", record("192.0.2.2"))
	converge(t, sub, rrSetOf(t, "www 60 IN A 192.0.2.2"))

	es.put("/skydns/org/example/www", record("192.0.2.3"))
	converge(t, sub, rrSetOf(t, "www 60 IN A 192.0.2.3"))
	// One change signal per put: the watch resumed from its revision, and
	// did not have to re-mark the zone as a new watch would.
	if n := changes(); n != 2 {
		t.Errorf("trigger_changes_total{etcd} grew by %v, want 2", n)
	}
}

// TestEtcdReload: a Corefile reload replaces the etcd plugin (and its
// client); the old watch stops, the new one starts, and LLQs carry on.
func TestEtcdReload(t *testing.T) {
	es := startEtcd(t)
	es.put("/skydns/org/example/www", record("192.0.2.1"))
	s := startEtcdDNS(t, es)
	c := dial(t, s.llq, client.Options{})
	sub := subscribe(t, c, "www.example.org.", dns.TypeA)
	converge(t, sub, rrSetOf(t, "www 60 IN A 192.0.2.1"))

	created := counter(t, "trigger_changes_total", "trigger", "etcd")
	s.restart(etcdCorefile(es.endpoint(), s.llq))
	eventually(t, "the new instance's etcd watch", func() bool { return created() >= 1 })
	es.put("/skydns/org/example/www", record("192.0.2.2"))
	converge(t, sub, rrSetOf(t, "www 60 IN A 192.0.2.2"))
	if n := created(); n != 2 { // the new watch's start, the put
		t.Errorf("trigger_changes_total{etcd} grew by %v, want 2: is the old watch still running?", n)
	}
}
