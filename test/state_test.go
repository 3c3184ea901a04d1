package test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ctest "github.com/coredns/coredns/test"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// TestStateRestart: a CoreDNS process keeps its LLQs in a state file. With
// many LLQs held, the process is crashed (SIGKILL) or stopped (SIGTERM), every
// name's address changes while it is down, and it starts again: every LLQ
// refreshes without NO-SUCH-LLQ and every subscriber is told the change.
// With a damaged file the restarted server behaves as it does without the
// option: it runs, and every refresh gets NO-SUCH-LLQ.
//
// LLQ_STATE_LLQS sets the number of LLQs (default 10,000), for BENCHMARKS.md.
func TestStateRestart(t *testing.T) {
	llqs := 10000
	if s := os.Getenv("LLQ_STATE_LLQS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 100 || n%100 != 0 {
			t.Fatalf("LLQ_STATE_LLQS=%q: want a multiple of 100", s)
		}
		llqs = n
	}
	for _, tc := range []struct {
		name    string
		llqs    int
		every   string // the state option's INTERVAL
		stop    func(p *corednsProcess)
		damage  bool
		restore bool
	}{
		{name: "kill", llqs: llqs, every: "1s", stop: func(p *corednsProcess) { p.kill(p.t) }, restore: true},
		{name: "term", llqs: llqs, every: "1h", stop: func(p *corednsProcess) {
			if err := p.stop(); err != nil {
				p.t.Fatalf("SIGTERM: %v", err)
			}
		}, restore: true},
		{name: "damaged", llqs: 1000, every: "1s", stop: func(p *corednsProcess) { p.kill(p.t) }, damage: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			names := tc.llqs / stateSockets
			zone := filepath.Join(dir, "db.example.org")
			writeStateZone(t, zone, names, 1, "192.0.2.1")
			statePath := filepath.Join(dir, "llq.state")
			corefile := func(p corednsPorts) string {
				return fmt.Sprintf(`example.org:%d {
    bind 127.0.0.1
    prometheus 127.0.0.1:%d
    llq {
        listen 127.0.0.1:%d
        state %s %s
        max-llqs 0
        max-llqs-per-client 0
        setup-rate 0
    }
    file %s
}
`, p.dns, p.metrics, p.llq, statePath, tc.every, zone)
			}
			p := startCoreDNSProcess(t, "first", corefile)
			f := newStateFleet(t, p.llq, names)
			start := time.Now()
			f.setupAll(t)
			t.Logf("%d LLQs set up in %s", tc.llqs, time.Since(start).Round(time.Millisecond))
			if tc.every != "1h" {
				// The file holds every LLQ before the crash.
				var in float64
				eventuallyWithin(t, 60*time.Second, "a state file with every LLQ", func() bool {
					in = p.metric("state_file_llqs")
					return in == float64(tc.llqs)
				})
				t.Logf("state file written with %.0f LLQs", in)
			}
			tc.stop(p)
			if fi, err := os.Stat(statePath); err == nil {
				t.Logf("state file at the stop: %d bytes, %.1f bytes per LLQ", fi.Size(), float64(fi.Size())/float64(tc.llqs))
			}

			writeStateZone(t, zone, names, 2, "192.0.2.2") // changed while down
			if tc.damage {
				b, err := os.ReadFile(statePath)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(statePath, b[:len(b)/2], 0o600); err != nil {
					t.Fatal(err)
				}
			}
			restart := time.Now()
			// The fleet's readers ack to f.server meanwhile: the restarted
			// process must be at the same address, not written over it.
			if at := restartOnPorts(t, p, corefile); at != f.server {
				t.Fatalf("restarted at %v, not %v", at, f.server)
			}
			up := time.Since(restart)

			if tc.restore {
				eventuallyWithin(t, 120*time.Second, "every subscriber told the change", func() bool {
					return f.changed.Load() == int64(tc.llqs)
				})
			}
			codes := f.refreshAll(t)
			want := uint16(wire.NoError)
			if !tc.restore {
				want = wire.NoSuchLLQ
			}
			if codes[want] != tc.llqs {
				t.Fatalf("refreshes answered %v, want %d of %s", codes, tc.llqs, wire.ErrorName(want))
			}
			if !tc.restore {
				return
			}
			last := f.lastChange()
			t.Logf("%d LLQs: ports answered %s after the restart began; the last subscriber was told the change %s after it; %d refreshes all NOERROR",
				tc.llqs, up.Round(time.Millisecond), last.Sub(restart).Round(time.Millisecond), codes[wire.NoError])
		})
	}
}

// stateSockets is how many client sockets the fleet spreads its LLQs over;
// each asks for every name.
const stateSockets = 100

// writeStateZone writes example.org with names n0..n(names-1), each with
// the address addr.
func writeStateZone(t *testing.T, path string, names, serial int, addr string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "$ORIGIN example.org.\n$TTL 300\n@ IN SOA ns1 hostmaster %d 7200 3600 1209600 300\n@ IN NS ns1\nns1 IN A 192.0.2.53\n", serial)
	for i := range names {
		fmt.Fprintf(&b, "n%d IN A %s\n", i, addr)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// restartOnPorts starts CoreDNS again with the ports the stopped process p
// had, since clients know the server by its address.
func restartOnPorts(t *testing.T, p *corednsProcess, corefile func(corednsPorts) string) netip.AddrPort {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(conf, []byte(corefile(p.ports)), 0o644); err != nil {
		t.Fatal(err)
	}
	np := &corednsProcess{process: startProcess(t, dir, corednsBinary(t), "-conf", conf), t: t, ports: p.ports, dns: p.dns, llq: p.llq}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(np.tail())
		}
	})
	for _, addr := range []string{np.dns, np.llq.String()} {
		for !answers(addr) {
			if np.exited() {
				t.Fatalf("restarted CoreDNS exited: %v\n%s", np.err, np.tail())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return np.llq
}

// stateFleet holds names LLQs on each of stateSockets sockets: LLQ k of
// socket s asks for name k. Every event is acknowledged; the fleet counts
// the LLQs told the change (192.0.2.1 gone, 192.0.2.2 added).
type stateFleet struct {
	server  netip.AddrPort
	names   int
	socks   []*fleetSock
	mu      sync.Mutex
	told    map[uint64]int // per LLQ: bit 0 = heard the removal, bit 1 = heard the addition
	last    time.Time      // when the last LLQ completed
	changed atomic.Int64   // LLQs told both
}

type fleetSock struct {
	conn    *net.UDPConn
	ids     []uint64 // per name
	replies chan *dns.Msg
}

func newStateFleet(t *testing.T, server netip.AddrPort, names int) *stateFleet {
	f := &stateFleet{server: server, names: names, told: make(map[uint64]int)}
	for range stateSockets {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadBuffer(4 << 20)
		s := &fleetSock{conn: c, ids: make([]uint64, names), replies: make(chan *dns.Msg, names)}
		f.socks = append(f.socks, s)
		go f.read(s)
		t.Cleanup(func() { c.Close() })
	}
	return f
}

// read answers events with acks and hands every other message on.
func (f *stateFleet) read(s *fleetSock) {
	buf := make([]byte, 65535)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			return
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:n]) != nil {
			continue
		}
		opts := wire.Options(m)
		if len(opts) != 1 {
			continue
		}
		if opts[0].Opcode != wire.OpEvent {
			select {
			case s.replies <- m:
			default:
			}
			continue
		}
		ack := new(dns.Msg)
		ack.Id, ack.Response, ack.Question = m.Id, true, m.Question
		wire.SetOptions(ack, 1232, wire.NewOption(wire.OpEvent, wire.NoError, opts[0].Id, opts[0].LeaseLife))
		if b, err := ack.Pack(); err == nil {
			s.conn.WriteToUDPAddrPort(b, f.server)
		}
		f.heard(opts[0].Id, m.Answer)
	}
}

func (f *stateFleet) heard(id uint64, rrs []dns.RR) {
	bits := 0
	for _, rr := range rrs {
		a, ok := rr.(*dns.A)
		if !ok {
			continue
		}
		switch {
		case a.A.String() == "192.0.2.1" && a.Hdr.Ttl == wire.RemoveTTL:
			bits |= 1
		case a.A.String() == "192.0.2.2" && a.Hdr.Ttl != wire.RemoveTTL:
			bits |= 2
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	before := f.told[id]
	f.told[id] = before | bits
	if before != 3 && before|bits == 3 {
		f.last = time.Now()
		f.changed.Add(1)
	}
}

func (f *stateFleet) lastChange() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func fleetName(i int) string { return fmt.Sprintf("n%d.example.org.", i) }

// exchangeAll sends build(i) for every name i of s, at most fleetWindow
// at a time, and takes replies to what this call sent until accept has taken
// one for each; a name without one is sent again after a second. Replies
// are matched by DNS ID: a late reply to an earlier phase (a challenge
// answering a repeated setup) must not pass for this phase's.
func (f *stateFleet) exchangeAll(t *testing.T, s *fleetSock, build func(i int) *dns.Msg, accept func(i int, o *dns.EDNS0_LLQ) bool) {
	const fleetWindow, maxTries = 32, 30
	queue := make([]int, f.names)
	for i := range queue {
		queue[i] = i
	}
	sent := make(map[uint16]int)   // DNS ID -> name
	waiting := map[int]time.Time{} // name -> last sent
	tries := make([]int, f.names)
	send := func(i int) bool {
		if tries[i]++; tries[i] > maxTries {
			t.Errorf("%s unanswered after %d tries", fleetName(i), maxTries)
			return false
		}
		m := build(i)
		for _, taken := sent[m.Id]; taken; _, taken = sent[m.Id] {
			m.Id = dns.Id()
		}
		sent[m.Id] = i
		b, err := m.Pack()
		if err != nil {
			t.Error(err)
			return false
		}
		s.conn.WriteToUDPAddrPort(b, f.server)
		waiting[i] = time.Now()
		return true
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for len(queue) > 0 || len(waiting) > 0 {
		for len(waiting) < fleetWindow && len(queue) > 0 {
			if !send(queue[0]) {
				return
			}
			queue = queue[1:]
		}
		select {
		case m := <-s.replies:
			i, ours := sent[m.Id]
			if _, open := waiting[i]; !ours || !open || len(m.Question) != 1 || m.Question[0].Name != fleetName(i) {
				continue
			}
			if accept(i, wire.Options(m)[0]) {
				delete(waiting, i)
			}
		case now := <-tick.C:
			for i, at := range waiting {
				if now.Sub(at) > time.Second && !send(i) {
					return
				}
			}
		}
	}
}

func fleetMsg(i int, op uint16, id uint64) *dns.Msg {
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.Question = []dns.Question{{Name: fleetName(i), Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	wire.SetOptions(m, 1232, wire.NewOption(op, wire.NoError, id, 7200))
	return m
}

// setupAll runs every socket's four-way handshakes, the sockets in
// parallel.
func (f *stateFleet) setupAll(t *testing.T) {
	t.Helper()
	var wg sync.WaitGroup
	for _, s := range f.socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chal := make([]uint64, f.names)
			f.exchangeAll(t, s, func(i int) *dns.Msg { return fleetMsg(i, wire.OpSetup, 0) },
				func(i int, o *dns.EDNS0_LLQ) bool {
					if o.Opcode != wire.OpSetup || o.Error != wire.NoError || o.Id == 0 {
						return false
					}
					chal[i] = o.Id
					return true
				})
			f.exchangeAll(t, s, func(i int) *dns.Msg { return fleetMsg(i, wire.OpSetup, chal[i]) },
				func(i int, o *dns.EDNS0_LLQ) bool {
					if o.Opcode != wire.OpSetup || o.Id != chal[i] {
						return false
					}
					if o.Error != wire.NoError {
						t.Errorf("setup of %s: %s", fleetName(i), wire.ErrorName(o.Error))
					}
					s.ids[i] = o.Id
					return true
				})
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

// refreshAll refreshes every LLQ and counts the answers by LLQ error code.
func (f *stateFleet) refreshAll(t *testing.T) map[uint16]int {
	t.Helper()
	codes := make(map[uint16]int)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, s := range f.socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.exchangeAll(t, s, func(i int) *dns.Msg { return fleetMsg(i, wire.OpRefresh, s.ids[i]) },
				func(i int, o *dns.EDNS0_LLQ) bool {
					if o.Opcode != wire.OpRefresh {
						return false
					}
					mu.Lock()
					codes[o.Error]++
					mu.Unlock()
					return true
				})
		}()
	}
	wg.Wait()
	return codes
}

// ---- restarts of an in-process CoreDNS ----

// stateInstance starts CoreDNS from corefile and returns a function that
// stops it as a clean shutdown does (the state file is written then); the
// test's cleanup stops it if the test did not.
func stateInstance(t *testing.T, corefile string) (stop func()) {
	t.Helper()
	inst, _, _, err := ctest.CoreDNSServerAndPorts(corefile)
	if err != nil {
		t.Fatalf("starting CoreDNS: %v\n%s", err, corefile)
	}
	var once sync.Once
	stop = func() { once.Do(func() { inst.ShutdownCallbacks(); inst.Stop() }) }
	t.Cleanup(stop)
	return stop
}

// recvEvent returns the next event for LLQ id (0: any) that r receives
// within d, acknowledging it when ack is set; other messages are skipped.
func recvEvent(t *testing.T, r *raw, id uint64, d time.Duration, ack bool) *dns.Msg {
	t.Helper()
	buf := make([]byte, 65535)
	deadline := time.Now().Add(d)
	for {
		r.conn.SetReadDeadline(deadline)
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("waiting for an event for LLQ %x: %v", id, err)
		}
		m := new(dns.Msg)
		if from != r.server || m.Unpack(buf[:n]) != nil {
			continue
		}
		opts := wire.Options(m)
		if len(opts) != 1 || opts[0].Opcode != wire.OpEvent || id != 0 && opts[0].Id != id {
			continue
		}
		if ack {
			a := new(dns.Msg)
			a.Id, a.Response, a.Question = m.Id, true, m.Question
			wire.SetOptions(a, 1232, wire.NewOption(wire.OpEvent, wire.NoError, opts[0].Id, opts[0].LeaseLife))
			r.send(a)
		}
		return m
	}
}

// statements turns events' answers into "+NAME A ADDR" and "-NAME A ADDR".
func statements(msgs ...*dns.Msg) []string {
	var out []string
	for _, m := range msgs {
		for _, rr := range m.Answer {
			a, ok := rr.(*dns.A)
			if !ok {
				continue
			}
			sign := "+"
			if a.Hdr.Ttl == wire.RemoveTTL {
				sign = "-"
			}
			out = append(out, sign+a.Hdr.Name+" A "+a.A.String())
		}
	}
	slices.Sort(out)
	return out
}

// TestStateRestoredWaitsForBackend: restored LLQs whose backend cannot
// answer when llq starts again (forward to an upstream CoreDNS that is
// still down) are kept, their refreshes succeed, and once the upstream is
// up they are admitted and told what changed while llq was down. There
// are more of them than a round of readmission asks for after failures in
// a row, so the rounds carry the rest over.
func TestStateRestoredWaitsForBackend(t *testing.T) {
	const names = 20
	rec := func(addr string) []string {
		var out []string
		for i := range names {
			out = append(out, fmt.Sprintf("www%d IN A %s", i, addr))
		}
		return out
	}
	up := zoneFile(t, "example.org", rec("192.0.2.1")...)
	upPort := freePort(t)
	upstream := fmt.Sprintf(`example.org:%d {
    bind 127.0.0.1
    file %s
}
`, upPort, up.zoneFile)
	llqPort := freePort(t)
	statePath := filepath.Join(t.TempDir(), "llq.state")
	corefile := fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1
    llq {
        listen 127.0.0.1:%d
        state %s 1h
    }
    forward . 127.0.0.1:%d
}
`, llqPort, statePath, upPort)
	llq := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), llqPort)

	stopUp := stateInstance(t, upstream)
	stop := stateInstance(t, corefile)
	c := newRaw(t, llq, "")
	qs := make([]dns.Question, names)
	ids := make([]uint64, names)
	for i := range names {
		qs[i] = question(fmt.Sprintf("www%d.example.org.", i), dns.TypeA)
		var ack *dns.Msg
		ids[i], ack = c.establish(qs[i], 3600)
		if got, want := statements(ack), []string{"+" + qs[i].Name + " A 192.0.2.1"}; !slices.Equal(got, want) {
			t.Fatalf("ACK told %v, want %v", got, want)
		}
	}
	stop()
	stopUp()
	up.setRecords(rec("192.0.2.2")...) // changed while both are down

	unresolved := counter(t, "state_readmissions_total", "result", "unresolved")
	admitted := counter(t, "state_readmissions_total", "result", "admitted")
	refused := counter(t, "state_readmissions_total", "result", "refused")
	stateInstance(t, corefile)
	eventuallyWithin(t, 60*time.Second, "a readmission to fail for want of the upstream", func() bool { return unresolved() >= 1 })
	for i := range names {
		if o := c.refresh(qs[i], ids[i], 3600); o.Error != wire.NoError {
			t.Fatalf("refresh of an LLQ waiting for its backend: %s", wire.ErrorName(o.Error))
		}
	}
	tries := unresolved()

	stateInstance(t, upstream)
	want := make(map[uint64][]string)
	for i := range names {
		want[ids[i]] = []string{"+" + qs[i].Name + " A 192.0.2.2", "-" + qs[i].Name + " A 192.0.2.1"}
	}
	toldEach(t, c, want)
	if a, r := admitted(), refused(); a != names || r != 0 {
		t.Fatalf("readmissions: %v admitted, %v refused; want %d and 0", a, r, names)
	}
	t.Logf("%v failed tries before the refreshes (%d LLQs)", tries, names)
	for i := range names {
		if o := c.refresh(qs[i], ids[i], 3600); o.Error != wire.NoError {
			t.Fatalf("refresh after the readmission: %s", wire.ErrorName(o.Error))
		}
	}
}

// TestStateRestoredViews: two view blocks for one zone share llq's
// listener and its state file. After a restart, each restored LLQ goes
// back to its own view's topic: its client is told what changed in its
// view while llq was down, and later hears of its view's changes alone.
func TestStateRestoredViews(t *testing.T) {
	za := zoneFile(t, "a", "www IN A 192.0.2.1")
	zb := zoneFile(t, "b", "www IN A 198.51.100.1")
	llqPort := freePort(t)
	statePath := filepath.Join(t.TempDir(), "llq.state")
	block := fmt.Sprintf(`llq {
        listen 127.0.0.1:%d
        state %s 1h
    }`, llqPort, statePath)
	corefile := viewsCorefile(block, za.zoneFile, zb.zoneFile)
	llq := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), llqPort)
	stop := stateInstance(t, corefile)
	two := newRaw(t, llq, "127.0.0.2:0")
	one := newRaw(t, llq, "127.0.0.1:0")
	q := question("www.example.org.", dns.TypeA)
	idTwo, ackTwo := two.establish(q, 3600)
	idOne, ackOne := one.establish(q, 3600)
	if got := statements(ackTwo); !slices.Equal(got, []string{"+www.example.org. A 192.0.2.1"}) {
		t.Fatalf("view two's ACK told %v", got)
	}
	if got := statements(ackOne); !slices.Equal(got, []string{"+www.example.org. A 198.51.100.1"}) {
		t.Fatalf("the default view's ACK told %v", got)
	}
	stop()
	za.setRecords("www IN A 192.0.2.2")
	zb.setRecords("www IN A 198.51.100.2")

	stateInstance(t, corefile)
	if got, want := statements(recvEvent(t, two, idTwo, 30*time.Second, true)),
		[]string{"+www.example.org. A 192.0.2.2", "-www.example.org. A 192.0.2.1"}; !slices.Equal(got, want) {
		t.Fatalf("view two's client told %v after the restart, want %v", got, want)
	}
	if got, want := statements(recvEvent(t, one, idOne, 30*time.Second, true)),
		[]string{"+www.example.org. A 198.51.100.2", "-www.example.org. A 198.51.100.1"}; !slices.Equal(got, want) {
		t.Fatalf("the default view's client told %v after the restart, want %v", got, want)
	}

	// Each is in its view's topic now: a change to view two's zone reaches
	// its client alone, then one to the default view's zone the other.
	za.setRecords("www IN A 192.0.2.3")
	if got, want := statements(recvEvent(t, two, idTwo, 30*time.Second, true)),
		[]string{"+www.example.org. A 192.0.2.3", "-www.example.org. A 192.0.2.2"}; !slices.Equal(got, want) {
		t.Fatalf("view two's client told %v, want %v", got, want)
	}
	zb.setRecords("www IN A 198.51.100.3")
	if got, want := statements(recvEvent(t, one, idOne, 30*time.Second, true)),
		[]string{"+www.example.org. A 198.51.100.3", "-www.example.org. A 198.51.100.2"}; !slices.Equal(got, want) {
		t.Fatalf("the default view's client told %v, want %v", got, want)
	}
	if m, quiet := quietRaw(two, 300*time.Millisecond); !quiet {
		t.Fatalf("view two's client got the default view's change: %v", m)
	}
	for _, c := range []struct {
		r  *raw
		id uint64
	}{{two, idTwo}, {one, idOne}} {
		if o := c.r.refresh(q, c.id, 3600); o.Error != wire.NoError {
			t.Fatalf("refresh of restored LLQ %x: %s", c.id, wire.ErrorName(o.Error))
		}
	}
}

// TestStateRestoredUnprovenPort: an LLQ set up over TCP names a UDP event
// port that never acknowledges. It gets the one packet such a port may
// get, and its later news (192.0.2.9 added) is held. After a restart it
// still has not proven itself: it gets nothing, though a proven subscriber
// to the same question hears of the changes, until it sends a refresh from
// the port. Then it is told the truth of every record it was not told:
// held before the restart (the file keeps held news) or since.
func TestStateRestoredUnprovenPort(t *testing.T) {
	z := zoneFile(t, "example.org", "www IN A 192.0.2.1")
	llqPort := freePort(t)
	statePath := filepath.Join(t.TempDir(), "llq.state")
	corefile := fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1
    llq {
        listen 127.0.0.1:%d
        state %s 1h
        retransmit 200ms 3
    }
    file %s {
        reload 100ms
    }
}
`, llqPort, statePath, z.zoneFile)
	llq := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), llqPort)
	stop := stateInstance(t, corefile)
	q := question("www.example.org.", dns.TypeA)

	victim := newRaw(t, llq, "")
	setup := llqMsg(q, wire.OpSetup, 0, 3600)
	wire.Options(setup)[0].Error = uint16(victim.conn.LocalAddr().(*net.UDPAddr).Port)
	tc := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	r, _, err := tc.Exchange(setup, llq.String())
	if err != nil {
		t.Fatalf("setup over TCP: %v", err)
	}
	o := option(t, r)
	if o.Error != wire.NoError || o.Id == 0 {
		t.Fatalf("setup over TCP refused: %v", o)
	}
	vid := o.Id
	marker := newRaw(t, llq, "")
	mid, _ := marker.establish(q, 3600)

	// The first change: the one packet an unproven port may get. The
	// second is held.
	z.setRecords("www IN A 192.0.2.2")
	recvEvent(t, marker, mid, 30*time.Second, true)
	recvEvent(t, victim, vid, 30*time.Second, false)
	z.setRecords("www IN A 192.0.2.2", "www IN A 192.0.2.9")
	recvEvent(t, marker, mid, 30*time.Second, true)
	stop()

	z.setRecords("www IN A 192.0.2.4", "www IN A 192.0.2.9") // while llq is down
	stateInstance(t, corefile)
	// The marker's last acknowledgement may have come after the stop: then
	// that event is stated again too.
	toldAll(t, marker, mid, []string{"+www.example.org. A 192.0.2.4", "-www.example.org. A 192.0.2.2"}, "+www.example.org. A 192.0.2.9")
	z.setRecords("www IN A 192.0.2.5", "www IN A 192.0.2.9") // after the restart
	toldAll(t, marker, mid, []string{"+www.example.org. A 192.0.2.5", "-www.example.org. A 192.0.2.4"})
	if m, quiet := quietRaw(victim, 500*time.Millisecond); !quiet {
		t.Fatalf("the unproven port got a packet after the restart:\n%v", m)
	}

	// The port proves itself with a refresh sent from it.
	if o := victim.refresh(q, vid, 3600); o.Error != wire.NoError {
		t.Fatalf("refresh from the event port: %s", wire.ErrorName(o.Error))
	}
	// Every record it may not know the truth of: the first packet's,
	// which it never acknowledged, those held before the restart, and
	// those of the changes since. The news may take more than one packet.
	want := []string{"+www.example.org. A 192.0.2.5", "+www.example.org. A 192.0.2.9",
		"-www.example.org. A 192.0.2.1", "-www.example.org. A 192.0.2.2", "-www.example.org. A 192.0.2.4"}
	toldAll(t, victim, vid, want)
}

// toldAll acknowledges r's events for LLQ id until they have stated every
// statement of want, and fails at one that is neither in want nor in also.
func toldAll(t *testing.T, r *raw, id uint64, want []string, also ...string) {
	t.Helper()
	toldEach(t, r, map[uint64][]string{id: want}, also...)
}

// toldEach is toldAll for several LLQs of one socket, whose events come
// interleaved: each is acknowledged as it comes.
func toldEach(t *testing.T, r *raw, want map[uint64][]string, also ...string) {
	t.Helper()
	seen := map[uint64]map[string]bool{}
	missing := 0
	for id, w := range want {
		seen[id] = map[string]bool{}
		missing += len(w)
	}
	for missing > 0 {
		m := recvEvent(t, r, 0, 30*time.Second, true)
		id := wire.Options(m)[0].Id
		w, ok := want[id]
		if !ok {
			continue
		}
		for _, st := range statements(m) {
			switch {
			case slices.Contains(w, st):
				if !seen[id][st] {
					seen[id][st] = true
					missing--
				}
			case !slices.Contains(also, st):
				t.Fatalf("LLQ %x told %s; want %v", id, st, w)
			}
		}
	}
}
