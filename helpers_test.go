package llq

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/file"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Helpers shared by the package's tests: a real CoreDNS file zone as the
// backend, an engine on an ephemeral loopback port, message builders and a
// few polling and metric utilities.

const testZone = "example.org."

// zoneData is the zone every engine test starts with.
const zoneData = `$ORIGIN example.org.
$TTL 3600
@	IN SOA ns1 hostmaster 1 7200 3600 1209600 300
@	IN NS ns1
ns1	IN A 192.0.2.53
www	IN A 192.0.2.1
www	IN A 192.0.2.2
`

// withRecords returns zoneData plus extra lines.
func withRecords(lines ...string) string {
	return zoneData + strings.Join(lines, "\n") + "\n"
}

// bigTXT returns n TXT records for name, each about size bytes of rdata.
func bigTXT(name string, n, size int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s IN TXT \"%03d-%s\"", name, i, strings.Repeat("x", size-4))
	}
	return out
}

func parseZone(t testing.TB, data string) *file.Zone {
	t.Helper()
	z, err := file.Parse(strings.NewReader(data), testZone, "test", -1)
	if err != nil {
		t.Fatalf("parse zone: %v", err)
	}
	return z
}

func fileZones(z *file.Zone) file.Zones {
	return file.Zones{Z: map[string]*file.Zone{testZone: z}, Names: []string{testZone}}
}

// swapZone replaces z's data the way a file reload does: a new tree and
// apex under the zone's lock.
func swapZone(t testing.TB, z *file.Zone, data string) {
	t.Helper()
	n := parseZone(t, data)
	z.Lock()
	z.Tree, z.Apex = n.Tree, n.Apex
	z.Unlock()
}

type testEnv struct {
	e     *Engine
	zone  *file.Zone
	owner *LLQ
}

// newTestEnv returns an engine on 127.0.0.1:0 with a real file backend for
// example.org. tweak adjusts the configuration before the engine starts.
func newTestEnv(t testing.TB, tweak func(*config)) *testEnv {
	t.Helper()
	cfg := defaultConfig()
	cfg.listen = "127.0.0.1:0"
	cfg.poll = 0
	if tweak != nil {
		tweak(cfg)
	}
	e, err := newEngine(cfg)
	if err != nil {
		t.Fatalf("newEngine: %v", err)
	}
	t.Cleanup(e.close)
	z := parseZone(t, zoneData)
	owner := &LLQ{Zones: []string{testZone}, cfg: cfg}
	owner.setEngine(e)
	e.register(&backend{owner: owner, zones: []string{testZone}, handler: file.File{Zones: fileZones(z)}})
	return &testEnv{e: e, zone: z, owner: owner}
}

func question(name string, qtype uint16) dns.Question {
	return dns.Question{Name: dns.Fqdn(name), Qtype: qtype, Qclass: dns.ClassINET}
}

func setupOpt(id uint64, lease uint32) *dns.EDNS0_LLQ {
	return wire.NewOption(wire.OpSetup, wire.NoError, id, lease)
}

func refreshOpt(id uint64, lease uint32) *dns.EDNS0_LLQ {
	return wire.NewOption(wire.OpRefresh, wire.NoError, id, lease)
}

// llqMsg builds a query with the given questions and one OPT record that
// advertises size and carries opts.
func llqMsg(id uint16, size uint16, qs []dns.Question, opts ...*dns.EDNS0_LLQ) *dns.Msg {
	m := new(dns.Msg)
	m.Id = id
	m.Question = qs
	wire.SetOptions(m, size, opts...)
	return m
}

func packMsg(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("pack: %v", err)
	}
	return b
}

func unpackMsg(t testing.TB, b []byte) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpack reply: %v", err)
	}
	return m
}

// serveRaw hands raw to the engine and parses the reply, which must exist.
func (env *testEnv) serveRaw(t testing.TB, raw []byte, src netip.AddrPort, tcp bool) (*dns.Msg, []byte) {
	t.Helper()
	out := env.e.llq.serve(raw, src, tcp)
	if out == nil {
		t.Fatalf("no reply")
	}
	return unpackMsg(t, out), out
}

// exchange packs m, serves it and returns the parsed reply.
func (env *testEnv) exchange(t testing.TB, m *dns.Msg, src netip.AddrPort, tcp bool) *dns.Msg {
	t.Helper()
	r, _ := env.serveRaw(t, packMsg(t, m), src, tcp)
	return r
}

// only returns the single LLQ option of m.
func only(t testing.TB, m *dns.Msg) *dns.EDNS0_LLQ {
	t.Helper()
	opts := wire.Options(m)
	if len(opts) != 1 {
		t.Fatalf("want 1 LLQ option, got %d in\n%v", len(opts), m)
	}
	return opts[0]
}

func wantOpt(t testing.TB, o *dns.EDNS0_LLQ, op, code uint16) {
	t.Helper()
	if o.Version != wire.Version || o.Opcode != op || o.Error != code {
		t.Fatalf("LLQ option %v: want version 1 opcode %s error %s", o, wire.OpName(op), wire.ErrorName(code))
	}
}

// establish runs the UDP four-way handshake for q from src and returns the
// LLQ ID and the ACK.
func (env *testEnv) establish(t testing.TB, src netip.AddrPort, size uint16, q dns.Question, lease uint32) (uint64, *dns.Msg) {
	t.Helper()
	ch := env.exchange(t, llqMsg(1, size, []dns.Question{q}, setupOpt(0, lease)), src, false)
	o := only(t, ch)
	wantOpt(t, o, wire.OpSetup, wire.NoError)
	ack := env.exchange(t, llqMsg(2, size, []dns.Question{q}, setupOpt(o.Id, o.LeaseLife)), src, false)
	a := only(t, ack)
	wantOpt(t, a, wire.OpSetup, wire.NoError)
	if a.Id != o.Id {
		t.Fatalf("ACK for LLQ %x, challenge was %x", a.Id, o.Id)
	}
	return a.Id, ack
}

// rrStrings returns the records' text, sorted, for comparisons.
func rrStrings(rrs []dns.RR) []string {
	out := make([]string, len(rrs))
	for i, rr := range rrs {
		out[i] = rr.String()
	}
	sort.Strings(out)
	return out
}

func mustRR(t testing.TB, s string) dns.RR {
	t.Helper()
	rr, err := dns.NewRR(s)
	if err != nil {
		t.Fatalf("NewRR(%q): %v", s, err)
	}
	return rr
}

func rrs(t testing.TB, ss ...string) []dns.RR {
	t.Helper()
	out := make([]dns.RR, len(ss))
	for i, s := range ss {
		out[i] = mustRR(t, s)
	}
	return out
}

func sameRRs(t testing.TB, got []dns.RR, want ...string) {
	t.Helper()
	g := rrStrings(got)
	w := rrStrings(rrs(t, want...))
	if strings.Join(g, "\n") != strings.Join(w, "\n") {
		t.Fatalf("records:\n%s\nwant:\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metric reads a counter or gauge.
func metric(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatalf("read metric: %v", err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	t.Fatalf("metric is neither counter nor gauge")
	return 0
}

// delta remembers a metric's value and reports how much it moved since.
type delta struct {
	m    prometheus.Metric
	base float64
}

func track(t testing.TB, m prometheus.Metric) *delta { return &delta{m: m, base: metric(t, m)} }

func (d *delta) moved(t testing.TB) float64 { t.Helper(); return metric(t, d.m) - d.base }

// udpClient is a real UDP socket on loopback standing in for an LLQ client:
// events go to the address an LLQ was set up from.
type udpClient struct {
	conn *net.UDPConn
	addr netip.AddrPort
}

func newUDPClient(t testing.TB) *udpClient {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpClient{conn: c, addr: c.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// read returns the next message, failing the test when none comes within
// within (a generous bound, not a timing assertion).
func (c *udpClient) read(t testing.TB, within time.Duration) (*dns.Msg, int) {
	t.Helper()
	m, n, err := c.tryRead(within)
	if err != nil {
		t.Fatalf("no message: %v", err)
	}
	return m, n
}

func (c *udpClient) tryRead(within time.Duration) (*dns.Msg, int, error) {
	buf := make([]byte, 65535)
	c.conn.SetReadDeadline(time.Now().Add(within))
	n, err := c.conn.Read(buf)
	if err != nil {
		return nil, 0, err
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		return nil, n, err
	}
	return m, n, nil
}

// quiet reports whether nothing arrives for d. Used only to check that
// something does not happen; it cannot fail a correct implementation.
func (c *udpClient) quiet(d time.Duration) (*dns.Msg, bool) {
	m, _, err := c.tryRead(d)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return nil, true
		}
	}
	return m, false
}
