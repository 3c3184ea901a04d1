package test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/grpcresolver"
	"github.com/miekg/dns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// gRPC clients resolving through llq (package grpcresolver), against real
// gRPC servers on 127.0.0.1, .2 and .3, all on one port, whose addresses
// the zone lists. The figures the tests log are in BENCHMARKS.md.

const roundRobin = `{"loadBalancingConfig":[{"round_robin":{}}]}`

// backend is a gRPC server with the health service that counts the calls
// it serves.
type backend struct {
	ip    string
	srv   *grpc.Server
	calls atomic.Int64
	first atomic.Int64 // UnixNano of the first call
	last  atomic.Int64 // UnixNano of the latest call
	seq   atomic.Int64 // the caller's call count at the latest call
}

// startBackends starts n backends on 127.0.0.1 to 127.0.0.n, one port.
func startBackends(t *testing.T, n int) (port int, bs []*backend) {
	t.Helper()
	var total atomic.Int64 // calls served by all of them: a clock in calls
	for range 20 {
		ls, port := listenAll(n)
		if ls == nil {
			continue
		}
		for i, l := range ls {
			b := &backend{ip: fmt.Sprintf("127.0.0.%d", i+1)}
			b.srv = grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				now := time.Now().UnixNano()
				b.first.CompareAndSwap(0, now)
				b.last.Store(now)
				b.seq.Store(total.Add(1))
				b.calls.Add(1)
				return h(ctx, req)
			}))
			healthpb.RegisterHealthServer(b.srv, health.NewServer())
			go b.srv.Serve(l)
			t.Cleanup(b.srv.Stop)
			bs = append(bs, b)
		}
		return port, bs
	}
	t.Fatal("no port free on all of 127.0.0.1 to .3")
	return 0, nil
}

func listenAll(n int) ([]net.Listener, int) {
	first, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, 0
	}
	port := first.Addr().(*net.TCPAddr).Port
	ls := []net.Listener{first}
	for i := 2; i <= n; i++ {
		l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.%d:%d", i, port))
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, 0
		}
		ls = append(ls, l)
	}
	return ls, port
}

// caller makes health checks through one channel, one every 2 ms, until
// the test ends.
type caller struct {
	calls  atomic.Int64 // calls made, successful or not
	failed atomic.Int64
}

func startCaller(t *testing.T, target string, opts ...grpc.DialOption) *caller {
	t.Helper()
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(roundRobin),
	}, opts...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	hc := healthpb.NewHealthClient(conn)
	c := &caller{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			if _, err := hc.Check(cctx, &healthpb.HealthCheckRequest{}); err != nil {
				c.failed.Add(1)
			}
			ccancel()
			c.calls.Add(1)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		conn.Close()
	})
	return c
}

// calls returns how many calls each backend has served.
func calls(bs []*backend) []int64 {
	out := make([]int64, len(bs))
	for i, b := range bs {
		out[i] = b.calls.Load()
	}
	return out
}

// waitCalls returns once the caller has made n more calls.
func (c *caller) waitCalls(t *testing.T, n int64) {
	t.Helper()
	start := c.calls.Load()
	eventuallyWithin(t, 30*time.Second, fmt.Sprintf("%d calls", n), func() bool { return c.calls.Load()-start >= n })
}

// checkBalanced asserts that the next 100 calls are spread evenly over the
// backends in and none go to those out: round robin over the current
// addresses.
func checkBalanced(t *testing.T, c *caller, bs []*backend, in ...int) {
	t.Helper()
	before := calls(bs)
	c.waitCalls(t, 100)
	after := calls(bs)
	var total int64
	for i := range bs {
		total += after[i] - before[i]
	}
	for i := range bs {
		got := after[i] - before[i]
		want := len(in) > 0 && containsInt(in, i)
		if !want && got != 0 || want && got < total/int64(len(in))/2 {
			t.Errorf("backends %v of %d: %d of %d calls went to %s; want round robin over %v", in, len(bs), got, total, bs[i].ip, in)
		}
	}
}

func containsInt(s []int, x int) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

// zoneEdit makes the zone list exactly the given backends' addresses for
// the name the channel resolves.
type zoneEdit func(ips ...string)

// figures are what one scenario measured.
type figures struct {
	add    time.Duration // zone edit to the new backend's first call
	remove time.Duration // zone edit to the removed backend's last call
}

// runScenario: two backends, balanced; a third added to the zone gets
// traffic; the first removed gets no new calls.
func runScenario(t *testing.T, target string, set zoneEdit, bs []*backend, opts ...grpc.DialOption) figures {
	t.Helper()
	set(bs[0].ip, bs[1].ip)
	c := startCaller(t, target, opts...)
	eventually(t, "calls to both backends", func() bool { return bs[0].calls.Load() > 0 && bs[1].calls.Load() > 0 })
	checkBalanced(t, c, bs, 0, 1)
	// Calls made before the zone's first version was in effect may have
	// failed; none may fail from here on.
	failed, made := c.failed.Load(), c.calls.Load()

	var f figures
	edit := time.Now()
	set(bs[0].ip, bs[1].ip, bs[2].ip)
	eventually(t, "calls to the added backend", func() bool { return bs[2].calls.Load() > 0 })
	f.add = time.Unix(0, bs[2].first.Load()).Sub(edit)
	checkBalanced(t, c, bs, 0, 1, 2)

	edit = time.Now()
	set(bs[1].ip, bs[2].ip)
	// Gone once 100 calls in a row went elsewhere: round robin over three
	// would have sent it a third of them.
	eventually(t, "the removed backend to get no calls", func() bool {
		return bs[1].seq.Load()-bs[0].seq.Load() >= 100 || bs[2].seq.Load()-bs[0].seq.Load() >= 100
	})
	f.remove = max(0, time.Unix(0, bs[0].last.Load()).Sub(edit))
	checkBalanced(t, c, bs, 1, 2)
	if n := c.failed.Load() - failed; n != 0 {
		t.Errorf("%d of %d calls failed while the zone changed", n, c.calls.Load()-made)
	}
	return f
}

// fileZone edits a file zone: svc.example.org A, one record per address.
func fileZone(s *server) zoneEdit {
	return func(ips ...string) {
		var rs []string
		for _, ip := range ips {
			rs = append(rs, "svc IN A "+ip)
		}
		s.setRecords(rs...)
	}
}

// etcdZone edits SkyDNS keys below svc.example.org, one per address.
func etcdZone(es *etcdServer) zoneEdit {
	have := map[string]bool{}
	return func(ips ...string) {
		want := map[string]bool{}
		for _, ip := range ips {
			want[ip] = true
			if !have[ip] {
				es.put("/skydns/org/example/svc/"+strings.ReplaceAll(ip, ".", "-"), record(ip))
			}
		}
		for ip := range have {
			if !want[ip] {
				es.del("/skydns/org/example/svc/" + strings.ReplaceAll(ip, ".", "-"))
			}
		}
		have = want
	}
}

func logFigures(t *testing.T, what string, f figures) {
	t.Logf("%s: added backend's first call %s after the zone edit; removed backend's last call %s after it",
		what, f.add.Round(time.Millisecond), f.remove.Round(time.Millisecond))
}

// TestGRPCResolverFile: a channel on llq:/// balances over the zone's
// addresses and follows the file zone's changes as they happen.
func TestGRPCResolverFile(t *testing.T) {
	port, bs := startBackends(t, 3)
	s := startServer(t, "")
	f := runScenario(t, fmt.Sprintf("llq://%s/svc.example.org:%d", s.dns, port), fileZone(s), bs)
	logFigures(t, "llq, file zone", f)
}

// TestGRPCResolverEtcd: the same with the zone in etcd.
func TestGRPCResolverEtcd(t *testing.T) {
	port, bs := startBackends(t, 3)
	es := startEtcd(t)
	s := startEtcdDNS(t, es)
	f := runScenario(t, fmt.Sprintf("llq://%s/svc.example.org:%d", s.dns, port), etcdZone(es), bs)
	logFigures(t, "llq, etcd", f)
}

// observeCalls is how many calls the stock resolver's figures are taken
// over after each zone edit; LLQ_GRPC_CALLS overrides it.
func observeCalls(t *testing.T) int64 {
	if s := os.Getenv("LLQ_GRPC_CALLS"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			t.Fatalf("LLQ_GRPC_CALLS=%q", s)
		}
		return n
	}
	return 2500
}

// zoneLists waits until the server's answer for svc.example.org A is
// exactly ips, so that what follows is measured from a zone in effect.
func zoneLists(t *testing.T, s *server, ips ...string) {
	t.Helper()
	var want []string
	for _, ip := range ips {
		want = append(want, "svc.example.org.\t0\tIN\tA\t"+ip)
	}
	want = rrSet(rrsOf(t, want...))
	eventually(t, fmt.Sprintf("the zone to list %v", ips), func() bool {
		return slices.Equal(rrSet(s.query("svc.example.org.", dns.TypeA).Answer), want)
	})
}

func rrsOf(t *testing.T, lines ...string) []dns.RR {
	t.Helper()
	var out []dns.RR
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rr)
	}
	return out
}

// TestGRPCStockDNS: the same scenario through grpc-go's own dns resolver,
// pointed at the same kind of server, for comparison. It resolves once and
// again only when a connection fails (at most every 30 s), so neither edit
// reaches it while every server stays up. Only the initial balance is
// asserted; what happens after the edits is logged, over observeCalls
// calls each.
func TestGRPCStockDNS(t *testing.T) {
	port, bs := startBackends(t, 3)
	s := startServerWith(t, config{noCache: true})
	set := fileZone(s)
	set(bs[0].ip, bs[1].ip)
	c := startCaller(t, fmt.Sprintf("dns://%s/svc.example.org:%d", s.dns, port))
	eventually(t, "calls to both backends", func() bool { return bs[0].calls.Load() > 0 && bs[1].calls.Load() > 0 })
	checkBalanced(t, c, bs, 0, 1)
	n := observeCalls(t)

	set(bs[0].ip, bs[1].ip, bs[2].ip)
	zoneLists(t, s, bs[0].ip, bs[1].ip, bs[2].ip)
	start, before := time.Now(), calls(bs)
	c.waitCalls(t, n)
	added := calls(bs)[2] - before[2]
	addWindow := time.Since(start)

	set(bs[1].ip, bs[2].ip)
	zoneLists(t, s, bs[1].ip, bs[2].ip)
	start, before = time.Now(), calls(bs)
	c.waitCalls(t, n)
	removed := calls(bs)[0] - before[0]
	t.Logf("stock dns, file zone: added backend got %d of %d calls in the %s after the zone edit; removed backend got %d of %d calls in the %s after it",
		added, n, addWindow.Round(time.Millisecond), removed, n, time.Since(start).Round(time.Millisecond))
}

// plainServer starts CoreDNS serving the file zone without llq on a fixed
// port, so that it can be restarted with llq and without on the same
// address.
func plainServer(t *testing.T, records ...string) (s *server, plain, withLLQ string) {
	t.Helper()
	s = &server{t: t, zoneFile: filepath.Join(t.TempDir(), "db.example.org"), serial: 1, records: records}
	s.writeZone()
	port := freePort(t)
	plain = fmt.Sprintf(`example.org:%d {
    bind 127.0.0.1
    file %s {
        reload 100ms
    }
}
`, port, s.zoneFile)
	withLLQ = fmt.Sprintf(`example.org:%d {
    bind 127.0.0.1
    llq {
        %s
    }
    file %s {
        reload 100ms
    }
}
`, port, llqOptions, s.zoneFile)
	s.start(plain)
	return s, plain, withLLQ
}

// TestGRPCResolverResolveNow: with no LLQ server and an hour between
// polls, the resolver looks again only when gRPC calls ResolveNow, which
// it does when a connection fails.
func TestGRPCResolverResolveNow(t *testing.T) {
	port, bs := startBackends(t, 3)
	s, _, _ := plainServer(t)
	set := fileZone(s)
	set(bs[0].ip)
	zoneLists(t, s, bs[0].ip)
	b := grpcresolver.NewBuilder(grpcresolver.Options{Scheme: "llqnow", PollInterval: time.Hour})
	c := startCaller(t, fmt.Sprintf("llqnow://%s/svc.example.org:%d", s.dns, port), grpc.WithResolvers(b))
	eventually(t, "calls to the first backend", func() bool { return bs[0].calls.Load() > 0 })

	set(bs[1].ip)
	zoneLists(t, s, bs[1].ip)
	c.waitCalls(t, 50)
	if n := bs[1].calls.Load(); n != 0 {
		t.Fatalf("the second backend got %d calls before any ResolveNow: is the resolver polling?", n)
	}
	bs[0].srv.Stop() // its connection fails: gRPC calls ResolveNow
	eventually(t, "calls to the second backend", func() bool { return bs[1].calls.Load() > 0 })
}

// TestGRPCResolverFallback: with no LLQ server the resolver polls; when
// the server gains llq it moves to push; when it loses llq again it falls
// back to polling; calls follow the zone throughout.
func TestGRPCResolverFallback(t *testing.T) {
	port, bs := startBackends(t, 3)
	s, plain, withLLQ := plainServer(t)
	set := fileZone(s)
	set(bs[0].ip)
	b := grpcresolver.NewBuilder(grpcresolver.Options{
		Scheme:       "llqfallback",
		PollInterval: 200 * time.Millisecond,
		PushRetryMin: 100 * time.Millisecond,
		PushRetryMax: 200 * time.Millisecond,
		// A lease of 2 s refreshed with 100 ms retransmissions: a vanished
		// LLQ server is noticed within about 2 s.
		Client: client.Options{Lease: 2 * time.Second, RetryInterval: 100 * time.Millisecond},
	})
	startCaller(t, fmt.Sprintf("llqfallback://%s/svc.example.org:%d", s.dns, port), grpc.WithResolvers(b))
	eventually(t, "calls to the first backend", func() bool { return bs[0].calls.Load() > 0 })

	// Polling: the zone's change arrives by the next poll.
	set(bs[1].ip)
	eventually(t, "polling to move calls to the second backend", func() bool { return bs[1].calls.Load() > 0 })

	// Push: the same server, now with llq; the resolver subscribes to A
	// and AAAA on its next try.
	subs := counter(t, "subscriptions")
	s.restart(withLLQ)
	eventually(t, "the resolver's two LLQs", func() bool { return subs() == 2 })
	set(bs[2].ip)
	eventually(t, "push to move calls to the third backend", func() bool { return bs[2].calls.Load() > 0 })

	// llq gone again: the resolver notices at its next refresh and polls.
	s.restart(plain)
	set(bs[1].ip)
	eventually(t, "polling to move calls back to the second backend", func() bool {
		return bs[1].seq.Load()-bs[2].seq.Load() >= 50
	})
}

// fileSRVZone edits a file zone: one SRV record at _grpc._tcp.svc per
// address, each with its own target name and that name's A record.
func fileSRVZone(s *server, port int) zoneEdit {
	return func(ips ...string) {
		var rs []string
		for _, ip := range ips {
			host := "b" + strings.ReplaceAll(ip, ".", "-")
			rs = append(rs, fmt.Sprintf("_grpc._tcp.svc IN SRV 0 0 %d %s", port, host), host+" IN A "+ip)
		}
		s.setRecords(rs...)
	}
}

// TestGRPCResolverSRV: a _port._proto target follows the SRV records and
// their targets' addresses.
func TestGRPCResolverSRV(t *testing.T) {
	port, bs := startBackends(t, 3)
	s := startServer(t, "")
	f := runScenario(t, fmt.Sprintf("llq://%s/_grpc._tcp.svc.example.org", s.dns), fileSRVZone(s, port), bs)
	logFigures(t, "llq, file zone, SRV", f)
}

// TestGRPCResolverPushDown: the zone advertises a DNS Push server that is
// not there; the resolver sets up LLQ instead, and changes arrive by it
// (the default 30 s poll would be too late for eventually).
func TestGRPCResolverPushDown(t *testing.T) {
	port, bs := startBackends(t, 2)
	push := fmt.Sprintf("_dns-push-tls._tcp IN SRV 0 0 %d ns1.example.org.", freePort(t))
	s := startServer(t, "", push, "svc IN A "+bs[0].ip)
	subs := counter(t, "subscriptions")
	startCaller(t, fmt.Sprintf("llq://%s/svc.example.org:%d", s.dns, port))
	eventually(t, "calls to the first backend", func() bool { return bs[0].calls.Load() > 0 })
	eventually(t, "the resolver's two LLQs", func() bool { return subs() == 2 })
	s.setRecords(push, "svc IN A "+bs[1].ip)
	eventually(t, "calls to the second backend", func() bool { return bs[1].calls.Load() > 0 })
}

// TestGRPCResolverResolveNowPush: while LLQ is live and its lease far off,
// only a ResolveNow can reveal that the server has gone: the resolver
// refreshes its LLQs, gets no reply, and falls back to a poll, which
// finds the zone's change.
func TestGRPCResolverResolveNowPush(t *testing.T) {
	port, bs := startBackends(t, 2)
	s, plain, withLLQ := plainServer(t)
	set := fileZone(s)
	set(bs[0].ip)
	zoneLists(t, s, bs[0].ip)
	s.restart(withLLQ)
	b := grpcresolver.NewBuilder(grpcresolver.Options{
		Scheme:       "llqnowpush",
		PollInterval: time.Hour,
		Client:       client.Options{RetryInterval: 100 * time.Millisecond},
	})
	subs := counter(t, "subscriptions")
	startCaller(t, fmt.Sprintf("llqnowpush://%s/svc.example.org:%d", s.dns, port), grpc.WithResolvers(b))
	eventually(t, "calls to the first backend", func() bool { return bs[0].calls.Load() > 0 })
	eventually(t, "the resolver's two LLQs", func() bool { return subs() == 2 })

	s.restart(plain) // the LLQs are gone with the listener
	set(bs[1].ip)
	zoneLists(t, s, bs[1].ip)
	bs[0].srv.Stop() // its connection fails: gRPC calls ResolveNow
	eventually(t, "calls to the second backend", func() bool { return bs[1].calls.Load() > 0 })
}

// TestGRPCResolverReportsErrors: a DNS server that does not answer makes
// calls fail with the resolver's error, reported through gRPC.
func TestGRPCResolverReportsErrors(t *testing.T) {
	dead := freePort(t)
	b := grpcresolver.NewBuilder(grpcresolver.Options{Scheme: "llqerr", PushRetryMin: time.Hour})
	conn, err := grpc.NewClient(fmt.Sprintf("llqerr://127.0.0.1:%d/svc.example.org:80", dead),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(b))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	var last error
	eventually(t, "a call to fail with the resolver's error", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, last = hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return last != nil && strings.Contains(last.Error(), fmt.Sprintf("127.0.0.1:%d", dead))
	})
	t.Logf("call failed with: %v", last)
}

// TestGRPCResolverDNSPush: the zone advertises a DNS Push server (TLS,
// with a CA made in the test); the resolver subscribes there, and with
// polling an hour apart every change reaches gRPC by PUSH. Skipped while
// llq has no TLS listener (see pushClientServer).
func TestGRPCResolverDNSPush(t *testing.T) {
	s, _, _, pool := pushClientServer(t)
	port, bs := startBackends(t, 3)
	b := grpcresolver.NewBuilder(grpcresolver.Options{
		Scheme:       "llqpush",
		Proto:        client.ProtoPush,
		Push:         pushTLS(pool),
		PollInterval: time.Hour,
	})
	f := runScenario(t, fmt.Sprintf("llqpush://%s/svc.example.org:%d", s.dns, port), fileZone(s), bs, grpc.WithResolvers(b))
	logFigures(t, "DNS Push, file zone", f)
}
