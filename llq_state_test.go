package llq

import (
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/file"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// stateEngine starts an engine keeping its table in path, with a file
// backend serving data, the way a CoreDNS start does: the engine (which
// restores the file) first, then the backend's registration. stop closes
// it, as a clean shutdown does; the test's cleanup does so if the test did
// not.
func stateEngine(t *testing.T, path, data string, tweak func(*config)) (e *Engine, stop func()) {
	t.Helper()
	cfg := defaultConfig()
	cfg.listen = "127.0.0.1:0"
	cfg.poll = 0
	cfg.statePath = path
	cfg.stateEvery = time.Hour // writes come from close and reload unless a test asks
	if tweak != nil {
		tweak(cfg)
	}
	e, err := newEngine(cfg)
	if err != nil {
		t.Fatalf("newEngine: %v", err)
	}
	closed := false
	stop = func() {
		if !closed {
			closed = true
			e.close()
		}
	}
	t.Cleanup(stop)
	owner := &LLQ{Zones: []string{testZone}, cfg: cfg}
	owner.setEngine(e)
	e.register(&backend{owner: owner, zones: []string{testZone}, handler: file.File{Zones: fileZones(parseZone(t, data))}})
	return e, stop
}

// event reads the next event for LLQ id and returns its answers; with ack
// it acknowledges it to e.
func (c *udpClient) event(t *testing.T, e *Engine, id uint64, ack bool) []dns.RR {
	t.Helper()
	for {
		m, _ := c.read(t, 10*time.Second)
		opts := wire.Options(m)
		if len(opts) != 1 || opts[0].Opcode != wire.OpEvent || opts[0].Id != id {
			continue
		}
		if ack {
			a := new(dns.Msg)
			a.Id, a.Response, a.Question = m.Id, true, m.Question
			wire.SetOptions(a, 1232, wire.NewOption(wire.OpEvent, wire.NoError, id, opts[0].LeaseLife))
			c.conn.WriteTo(packMsg(t, a), e.Addr())
		}
		return m.Answer
	}
}

// told turns events into the statements they make: "+RR" or "-RR".
func told(rrs []dns.RR) map[string]bool {
	out := map[string]bool{}
	for _, rr := range rrs {
		c := dns.Copy(rr)
		sign := "+"
		if c.Header().Ttl == wire.RemoveTTL {
			sign = "-"
		}
		c.Header().Ttl = 0
		out[sign+c.String()] = true
	}
	return out
}

var wwwA = question("www.example.org.", dns.TypeA)

// zoneMoved is zoneData with www's 192.0.2.2 replaced by 192.0.2.3: the
// change made while llq is down.
const zoneMoved = `$ORIGIN example.org.
$TTL 3600
@	IN SOA ns1 hostmaster 2 7200 3600 1209600 300
@	IN NS ns1
ns1	IN A 192.0.2.53
www	IN A 192.0.2.1
www	IN A 192.0.2.3
`

// What an event of the change to zoneMoved says, as told writes it.
const (
	added3   = "+www.example.org.\t0\tIN\tA\t192.0.2.3"
	removed2 = "-www.example.org.\t0\tIN\tA\t192.0.2.2"
)

func refreshCode(t *testing.T, e *Engine, c *udpClient, id uint64) uint16 {
	t.Helper()
	env := &testEnv{e: e}
	return only(t, env.exchange(t, llqMsg(9, 1232, []dns.Question{wwwA}, refreshOpt(id, 3600)), c.addr, false)).Error
}

// TestStateRestart: an LLQ set up before a clean shutdown is in the table
// of the next start, its refresh succeeds, and its client is told what
// changed while llq was down, and nothing else.
func TestStateRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "llq.state")
	c := newUDPClient(t)
	e1, stop1 := stateEngine(t, path, zoneData, nil)
	id, _ := (&testEnv{e: e1}).establish(t, c.addr, 1232, wwwA, 3600)
	stop1()

	e2, _ := stateEngine(t, path, zoneMoved, nil)
	if st := e2.Stats(); st.LLQs != 1 || st.Topics != 1 {
		t.Fatalf("after restart: %+v", st)
	}
	got := told(c.event(t, e2, id, true))
	if len(got) != 2 || !got[added3] || !got[removed2] {
		t.Fatalf("told %v, want %s and %s", got, added3, removed2)
	}
	if code := refreshCode(t, e2, c, id); code != wire.NoError {
		t.Fatalf("refresh of a restored LLQ: %s", wire.ErrorName(code))
	}
}

// TestStateUnsettled: an event the client never acknowledged before the
// shutdown is stated again after the restart, even though nothing changed
// while llq was down.
func TestStateUnsettled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "llq.state")
	c := newUDPClient(t)
	e1, stop1 := stateEngine(t, path, zoneData, nil)
	id, _ := (&testEnv{e: e1}).establish(t, c.addr, 1232, wwwA, 3600)
	e1.mu.Lock()
	b, _ := e1.backendFor(testZone)
	e1.mu.Unlock()
	swapZone(t, b.handler.(file.File).Zones.Z[testZone], zoneMoved)
	e1.changes.mark(change{trigger: "test", zone: testZone})
	c.event(t, e1, id, false) // heard, not acknowledged
	stop1()

	e2, _ := stateEngine(t, path, zoneMoved, nil)
	got := told(c.event(t, e2, id, true))
	if !got[added3] || !got[removed2] {
		t.Fatalf("restated %v", got)
	}
}

// TestStateDamagedFile: a file that is damaged, foreign, forged or from
// another key is ignored: the server starts empty, as without the option,
// and the refresh gets NO-SUCH-LLQ, as it does today after a restart.
func TestStateDamagedFile(t *testing.T) {
	for name, damage := range map[string]func(path string){
		"truncated": func(path string) {
			b, _ := os.ReadFile(path)
			os.WriteFile(path, b[:len(b)-7], 0o600)
		},
		"flipped": func(path string) {
			b, _ := os.ReadFile(path)
			b[len(b)/2] ^= 0x10
			os.WriteFile(path, b, 0o600)
		},
		"foreign version": func(path string) {
			b, _ := os.ReadFile(path)
			b[len(stateMagic)+1] = 9
			os.WriteFile(path, b, 0o600)
		},
		"another key": func(path string) { os.WriteFile(path+".key", make([]byte, stateKeyLen), 0o600) },
		"key lost":    func(path string) { os.Remove(path + ".key") },
		"garbage":     func(path string) { os.WriteFile(path, []byte("not a state file"), 0o600) },
		"a directory": func(path string) { os.Remove(path); os.Mkdir(path, 0o700) },
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "llq.state")
			c := newUDPClient(t)
			e1, stop1 := stateEngine(t, path, zoneData, nil)
			id, _ := (&testEnv{e: e1}).establish(t, c.addr, 1232, wwwA, 3600)
			stop1()
			damage(path)
			e2, _ := stateEngine(t, path, zoneMoved, nil)
			if st := e2.Stats(); st.LLQs != 0 || st.Topics != 0 {
				t.Fatalf("loaded from a damaged file: %+v", st)
			}
			if code := refreshCode(t, e2, c, id); code != wire.NoSuchLLQ {
				t.Fatalf("refresh: %s, want NO-SUCH-LLQ", wire.ErrorName(code))
			}
		})
	}
}

// TestStateBounds: whatever a file says, restored LLQs obey the limits of
// the running configuration, and those whose lease ran out while llq was
// down are gone.
func TestStateBounds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "llq.state")
	key, _, err := stateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	snap := &snapshot{saved: now.Add(-time.Hour), topics: []savedTopic{{
		q:       wwwA,
		answers: rrs(t, "www.example.org. 3600 IN A 192.0.2.1", "www.example.org. 3600 IN A 192.0.2.2"),
		llqs: []savedLLQ{
			{id: 1, client: netip.MustParseAddrPort("127.0.0.1:1"), remaining: 1800, udpSize: 1232},    // expired half an hour ago
			{id: 2, client: netip.MustParseAddrPort("127.0.0.1:2"), remaining: 1 << 31, udpSize: 1232}, // far beyond the max lease
			{id: 3, client: netip.MustParseAddrPort("127.0.0.1:3"), remaining: 7200, udpSize: 1232},    // fine
			{id: 4, client: netip.MustParseAddrPort("127.0.0.1:4"), remaining: 7200, udpSize: 1232},    // over max-llqs-per-client 2
			{id: 5, client: netip.MustParseAddrPort("127.0.0.2:5"), remaining: 7200, udpSize: 1232},    // over max-llqs 2
		},
	}}}
	b, err := encodeState(snap, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeAtomic(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	e, _ := stateEngine(t, path, zoneData, func(c *config) { c.maxLLQs, c.maxPerClient, c.maxLease = 2, 2, time.Hour })
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.llq.subs) != 2 || e.llq.subs[2] == nil || e.llq.subs[3] == nil {
		t.Fatalf("restored %d LLQs: %v", len(e.llq.subs), e.llq.subs)
	}
	if exp := e.llq.subs[2].expires; exp.After(time.Now().Add(time.Hour)) {
		t.Fatalf("restored lease ends %v, beyond the max lease", exp)
	}
}

// TestStateWrites: the keeper writes on its interval when the table
// changed, on a reload, and two engines cannot share a file.
func TestStateWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "llq.state")
	c := newUDPClient(t)
	e, _ := stateEngine(t, path, zoneData, func(c *config) { c.stateEvery = 10 * time.Millisecond })
	id, _ := (&testEnv{e: e}).establish(t, c.addr, 1232, wwwA, 3600)
	key, _, _ := stateKey(path)
	eventually(t, "the periodic write", func() bool {
		snap, err := readState(path, key)
		return err == nil && len(snap.topics) == 1 && len(snap.topics[0].llqs) == 1 && snap.topics[0].llqs[0].id == id
	}, 10*time.Second)

	// A reload writes at once, even with no change and a long interval.
	os.Remove(path)
	cfg := *e.config()
	cfg.stateEvery = time.Hour
	e.reconfigure(&cfg)
	eventually(t, "the reload's write", func() bool { _, err := os.Stat(path); return err == nil }, 10*time.Second)

	cfg2 := defaultConfig()
	cfg2.listen, cfg2.statePath = "127.0.0.1:0", path
	if e2, err := newEngine(cfg2); err == nil {
		e2.close()
		t.Fatal("a second engine took the same state file")
	}
}

// BenchmarkStateWrite: a write of the state file with 100,000 LLQs on 1,000
// topics, two answers each: the snapshot under the engine lock, encoding,
// write, fsync, rename and the directory's fsync. It reports the file's
// bytes per LLQ and the process's CPU time per write (user+system, from
// getrusage: the fsyncs wait without it, and a loaded machine's wall time
// says little), and the CPU time of the snapshot alone, which is what holds
// the engine lock.
func BenchmarkStateWrite(b *testing.B) {
	const topics, perTopic = 1000, 100
	path := filepath.Join(b.TempDir(), "llq.state")
	key, _, err := stateKey(path)
	if err != nil {
		b.Fatal(err)
	}
	snap := testSnapshot(b, topics, perTopic)
	for i := range snap.topics {
		for j := range snap.topics[i].llqs {
			snap.topics[i].llqs[j].unsettled = nil // no restatements to send
		}
	}
	data, err := encodeState(snap, key)
	if err != nil {
		b.Fatal(err)
	}
	if err := writeAtomic(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.listen, cfg.poll, cfg.maxLLQs, cfg.maxPerClient = "127.0.0.1:0", 0, 0, 0
	cfg.statePath, cfg.stateEvery = path, time.Hour
	e, err := newEngine(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer e.close()
	n := e.Stats().LLQs
	if n < topics*perTopic {
		b.Fatalf("restored %d LLQs", n)
	}
	k := e.llq.state
	// The snapshot is what holds the engine lock.
	b.Run("snapshot", func(b *testing.B) {
		cpu0 := processCPU()
		for b.Loop() {
			e.llq.stateSnapshot(time.Now())
		}
		b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
	})
	b.Run("write", func(b *testing.B) {
		cpu0 := processCPU()
		for b.Loop() {
			if err := k.write(true); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(fi.Size()), "file-bytes")
		b.ReportMetric(float64(fi.Size())/float64(n), "bytes/LLQ")
	})
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
