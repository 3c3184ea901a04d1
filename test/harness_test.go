// Package test runs llq inside a real CoreDNS on loopback and talks to it
// over real sockets, the way a user's clients would.
//
// Tests in this package do not run in parallel: llq's metrics live in the
// process-global Prometheus registry, and tests read their deltas.
package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	ctest "github.com/coredns/coredns/test"
	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	_ "github.com/llqdns/llq"
)

func init() {
	d := slices.Clone(dnsserver.Directives)
	d = slices.Insert(d, slices.Index(d, "cache"), "llq")
	if err := dnsserver.SetDirectives(d); err != nil {
		panic(err)
	}
}

// server is one CoreDNS instance with llq serving a file zone.
type server struct {
	t        *testing.T
	inst     *caddy.Instance
	dns      string         // ordinary DNS, host:port
	llq      netip.AddrPort // the LLQ listener, found through discovery
	zoneFile string
	serial   int
	records  []string
	mu       sync.Mutex
}

const zoneHead = `$ORIGIN example.org.
$TTL 3600
@ IN SOA ns1.example.org. hostmaster.example.org. ( %d 7200 3600 1209600 3600 )
  IN NS ns1.example.org.
ns1 IN A 127.0.0.1
`

// llqOptions is the llq block body every test server gets unless it
// passes its own.
const llqOptions = `listen 127.0.0.1:0
        lease 2 60
        retransmit 200ms 3`

// config describes a test server beyond the zone's records.
type config struct {
	zones   string // arguments of the llq directive; "" = the server block's zone
	options string // the llq block body; "" = llqOptions
	plugins string // more directives in the example.org block
	blocks  string // more server blocks
	noCache bool   // leave cache out, so that plain queries show the backend itself
	// llq, when valid, is where the listener is (a fixed listen address):
	// the harness then does not discover it.
	llq netip.AddrPort
}

// startServer writes a zone holding records and starts CoreDNS with llq
// configured by options (the body of the llq block).
func startServer(t *testing.T, options string, records ...string) *server {
	t.Helper()
	return startServerWith(t, config{options: options}, records...)
}

// startServerWith starts a server described by cfg.
func startServerWith(t *testing.T, cfg config, records ...string) *server {
	t.Helper()
	s := &server{t: t, zoneFile: filepath.Join(t.TempDir(), "db.example.org"), serial: 1, records: records}
	s.writeZone()
	s.start(s.corefileWith(cfg))
	if cfg.llq.IsValid() {
		s.llq = cfg.llq
	} else {
		s.llq = s.discover()
	}
	return s
}

func (s *server) corefileWith(cfg config) string {
	options := cfg.options
	if options == "" {
		options = llqOptions
	}
	cache := "cache 30"
	if cfg.noCache {
		cache = ""
	}
	return fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1
    llq %s {
        %s
    }
    %s
    %s
    file %s {
        reload 100ms
    }
}
%s
`, cfg.zones, options, cache, cfg.plugins, s.zoneFile, cfg.blocks)
}

func (s *server) start(corefile string) {
	t := s.t
	t.Helper()
	inst, udp, _, err := ctest.CoreDNSServerAndPorts(corefile)
	if err != nil {
		t.Fatalf("starting CoreDNS: %v\n%s", err, corefile)
	}
	s.inst = inst
	s.dns = loopback(udp)
	t.Cleanup(s.stop)
}

// restart reloads the running instance with a new Corefile, the way the
// reload plugin (or SIGUSR1) does.
func (s *server) restart(corefile string) {
	s.t.Helper()
	inst, err := s.inst.Restart(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
	if err != nil {
		s.t.Fatalf("reloading CoreDNS: %v", err)
	}
	s.inst = inst
	udp, _ := ctest.CoreDNSServerPorts(inst, 0)
	s.dns = loopback(udp)
}

// loopback turns the "[::]:PORT" CoreDNS reports into an address to send to.
func loopback(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return net.JoinHostPort("127.0.0.1", port)
}

func (s *server) stop() {
	if s.inst == nil {
		return
	}
	s.inst.ShutdownCallbacks()
	s.inst.Stop()
	s.inst = nil
}

// discover finds the LLQ listener the way a client does: SRV
// _dns-llq._udp.ZONE on the ordinary port, then the target's address from
// the additional section.
func (s *server) discover() netip.AddrPort {
	s.t.Helper()
	m := new(dns.Msg)
	m.SetQuestion("_dns-llq._udp.example.org.", dns.TypeSRV)
	r, err := dns.Exchange(m, s.dns)
	if err != nil {
		s.t.Fatalf("SRV discovery: %v", err)
	}
	for _, rr := range r.Answer {
		srv, ok := rr.(*dns.SRV)
		if !ok {
			continue
		}
		for _, x := range r.Extra {
			if a, ok := x.(*dns.A); ok && strings.EqualFold(a.Hdr.Name, srv.Target) {
				ip, _ := netip.AddrFromSlice(a.A.To4())
				return netip.AddrPortFrom(ip, srv.Port)
			}
		}
	}
	s.t.Fatalf("no SRV with glue in %v", r)
	return netip.AddrPort{}
}

func (s *server) writeZone() {
	s.mu.Lock()
	defer s.mu.Unlock()
	body := fmt.Sprintf(zoneHead, s.serial) + strings.Join(s.records, "\n") + "\n"
	tmp := s.zoneFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, s.zoneFile); err != nil {
		s.t.Fatal(err)
	}
}

// setRecords replaces the zone's records and bumps the serial, so that the
// file plugin reloads the zone.
func (s *server) setRecords(records ...string) {
	s.mu.Lock()
	s.serial++
	s.records = records
	s.mu.Unlock()
	s.writeZone()
}

// query asks the ordinary DNS port, as a plain client would.
func (s *server) query(name string, qtype uint16) *dns.Msg {
	s.t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(4096, false)
	r, err := dns.Exchange(m, s.dns)
	if err != nil {
		s.t.Fatalf("query %s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return r
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	eventuallyWithin(t, 10*time.Second, what, cond)
}

func eventuallyWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---- the Go client ----

// dial connects a client.Client to the server's LLQ listener and closes it
// when the test ends. A short RetryInterval keeps closing quick even when
// the server is gone by then.
func dial(t *testing.T, server netip.AddrPort, opts client.Options) *client.Client {
	t.Helper()
	if opts.RetryInterval == 0 {
		opts.RetryInterval = 250 * time.Millisecond
	}
	c, err := client.Dial(server, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func question(name string, qtype uint16) dns.Question {
	return dns.Question{Name: dns.Fqdn(name), Qtype: qtype, Qclass: dns.ClassINET}
}

func subscribe(t *testing.T, c *client.Client, name string, qtype uint16) *client.Subscription {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := c.Subscribe(ctx, question(name, qtype))
	if err != nil {
		t.Fatalf("subscribe %s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return sub
}

// llqError returns the *client.Error in err, failing the test without one.
func llqError(t *testing.T, err error) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("want an *client.Error, got %T: %v", err, err)
	}
	return e
}

// ---- comparing answers ----

// rrSet renders records without their TTL, sorted, so that sets compare
// with slices.Equal.
func rrSet(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		c := dns.Copy(rr)
		c.Header().Ttl = 0
		c.Header().Name = strings.ToLower(c.Header().Name)
		out = append(out, c.String())
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// rrSetOf parses zone-file lines (relative to example.org.) into an rrSet.
func rrSetOf(t *testing.T, lines ...string) []string {
	t.Helper()
	var rrs []dns.RR
	for _, l := range lines {
		zp := dns.NewZoneParser(strings.NewReader(l+"\n"), "example.org.", "")
		zp.SetDefaultTTL(3600)
		for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
			rrs = append(rrs, rr)
		}
		if err := zp.Err(); err != nil {
			t.Fatalf("parsing %q: %v", l, err)
		}
	}
	return rrSet(rrs)
}

// ---- raw LLQ messages ----

// raw is a bare UDP socket speaking LLQ by hand.
type raw struct {
	t      *testing.T
	conn   *net.UDPConn
	server netip.AddrPort
}

// newRaw opens a UDP socket on local ("127.0.0.1:0" when empty) towards the
// LLQ listener.
func newRaw(t *testing.T, server netip.AddrPort, local string) *raw {
	t.Helper()
	if local == "" {
		local = "127.0.0.1:0"
	}
	la, err := net.ResolveUDPAddr("udp4", local)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp4", la)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &raw{t: t, conn: conn, server: server}
}

func (r *raw) send(m *dns.Msg) {
	r.t.Helper()
	b, err := m.Pack()
	if err != nil {
		r.t.Fatal(err)
	}
	r.sendBytes(b)
}

func (r *raw) sendBytes(b []byte) {
	r.t.Helper()
	if _, err := r.conn.WriteToUDPAddrPort(b, r.server); err != nil {
		r.t.Fatal(err)
	}
}

// recv returns the next message from the server, skipping those for which
// skip says so; it fails the test after a few seconds of silence.
func (r *raw) recv(skip func(*dns.Msg) bool) *dns.Msg {
	r.t.Helper()
	buf := make([]byte, 65535)
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.conn.SetReadDeadline(deadline)
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			r.t.Fatalf("waiting for a reply from %s: %v", r.server, err)
		}
		if from != r.server {
			continue
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil {
			r.t.Fatalf("reply does not parse: %v", err)
		}
		if skip == nil || !skip(m) {
			return m
		}
	}
}

// exchange sends m and returns the reply with its DNS ID.
func (r *raw) exchange(m *dns.Msg) *dns.Msg {
	r.t.Helper()
	if m.Id == 0 {
		m.Id = dns.Id()
	}
	r.send(m)
	return r.recv(func(x *dns.Msg) bool { return x.Id != m.Id })
}

// llqMsg builds an LLQ request for q carrying one LLQ option.
func llqMsg(q dns.Question, op uint16, id uint64, lease uint32) *dns.Msg {
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.Question = []dns.Question{q}
	wire.SetOptions(m, 1232, wire.NewOption(op, wire.NoError, id, lease))
	return m
}

// option returns the single LLQ option of m, failing without exactly one.
func option(t *testing.T, m *dns.Msg) *dns.EDNS0_LLQ {
	t.Helper()
	opts := wire.Options(m)
	if len(opts) != 1 {
		t.Fatalf("want one LLQ option, got %d in\n%v", len(opts), m)
	}
	return opts[0]
}

// establish runs the four-way handshake by hand and returns the LLQ ID and
// the ACK+Answers.
func (r *raw) establish(q dns.Question, lease uint32) (uint64, *dns.Msg) {
	r.t.Helper()
	ch := r.exchange(llqMsg(q, wire.OpSetup, 0, lease))
	o := option(r.t, ch)
	if o.Error != wire.NoError || o.Id == 0 {
		r.t.Fatalf("setup refused: %v", o)
	}
	ack := r.exchange(llqMsg(q, wire.OpSetup, o.Id, o.LeaseLife))
	if a := option(r.t, ack); a.Error != wire.NoError || a.Id != o.Id {
		r.t.Fatalf("challenge response refused: %v", a)
	}
	return o.Id, ack
}

// refresh sends a REFRESH for id and returns the reply's LLQ option.
func (r *raw) refresh(q dns.Question, id uint64, lease uint32) *dns.EDNS0_LLQ {
	r.t.Helper()
	return option(r.t, r.exchange(llqMsg(q, wire.OpRefresh, id, lease)))
}

// ---- metrics ----

// metric sums the current value of every series of the llq metric name
// (without the "coredns_llq_" prefix) whose labels include the given
// name/value pairs. Metrics are process-global: compare deltas.
func metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return sumSeries(mfs, name, labels...)
}

// sumSeries sums, in mfs, every series of the llq metric name (without the
// "coredns_llq_" prefix) whose labels include the given name/value pairs.
func sumSeries(mfs []*dto.MetricFamily, name string, labels ...string) float64 {
	full := "coredns_llq_" + name
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != full {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
				}
				if !found {
					continue series
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// counter reads a metric now and returns a function giving its growth since.
func counter(t *testing.T, name string, labels ...string) func() float64 {
	t.Helper()
	start := metric(t, name, labels...)
	return func() float64 { return metric(t, name, labels...) - start }
}

// ---- ports ----

// freePort returns a loopback port that is free for both UDP and TCP right
// now, for a listener whose address must stay fixed across a reload.
func freePort(t *testing.T) uint16 {
	t.Helper()
	for range 20 {
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		u.Close()
		if err != nil {
			continue
		}
		l.Close()
		return uint16(port)
	}
	t.Fatal("no free port")
	return 0
}

// portFree reports whether UDP and TCP port on 127.0.0.1 can be bound.
func portFree(port uint16) bool {
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		return false
	}
	defer u.Close()
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		return false
	}
	l.Close()
	return true
}
