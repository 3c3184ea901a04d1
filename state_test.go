package llq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var testStateKey = bytes.Repeat([]byte{7}, stateKeyLen)

// testSnapshot has names topics of perTopic LLQs each, from distinct
// loopback addresses, with one unsettled record on every tenth LLQ and
// one IPv6 client with a zone.
func testSnapshot(t testing.TB, names, perTopic int) *snapshot {
	snap := &snapshot{saved: time.UnixMilli(time.Now().UnixMilli())}
	id := uint64(1)
	for i := range names {
		name := fmt.Sprintf("n%d.example.org.", i)
		st := savedTopic{
			q:       dns.Question{Name: name, Qtype: dns.TypeA, Qclass: dns.ClassINET},
			answers: []dns.RR{mustRR(t, name+" 300 IN A 192.0.2.1"), mustRR(t, name+" 300 IN A 192.0.2.2")},
		}
		for j := range perTopic {
			l := savedLLQ{
				id:        id<<20 | 0xabcde,
				client:    netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(j >> 8), byte(j)}), uint16(40000+i)),
				remaining: 7200,
				udpSize:   1232,
				proven:    i%2 == 0,
			}
			if j%10 == 3 {
				l.unsettled = []dns.RR{mustRR(t, name+" 300 IN A 192.0.2.9")}
			}
			st.llqs = append(st.llqs, l)
			id++
		}
		snap.topics = append(snap.topics, st)
	}
	if len(snap.topics) > 0 {
		snap.topics[0].llqs = append(snap.topics[0].llqs, savedLLQ{
			id: 1, client: netip.MustParseAddrPort("[fe80::1%eth0]:5353"), remaining: 1, udpSize: 512,
		})
	}
	return snap
}

func TestStateRoundTrip(t *testing.T) {
	for _, snap := range []*snapshot{
		{saved: time.UnixMilli(0)},
		testSnapshot(t, 1, 0),
		testSnapshot(t, 3, 20),
	} {
		b, err := encodeState(snap, testStateKey)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeState(b, testStateKey)
		if err != nil {
			t.Fatal(err)
		}
		sameSnapshot(t, snap, got)
	}
}

func sameSnapshot(t *testing.T, want, got *snapshot) {
	t.Helper()
	if !got.saved.Equal(want.saved) || len(got.topics) != len(want.topics) {
		t.Fatalf("got saved %v with %d topics, want %v with %d", got.saved, len(got.topics), want.saved, len(want.topics))
	}
	for i, w := range want.topics {
		g := got.topics[i]
		if g.q != w.q || !equalRRs(g.answers, w.answers) || len(g.llqs) != len(w.llqs) {
			t.Fatalf("topic %d: got %v %v %d LLQs, want %v %v %d", i, g.q, g.answers, len(g.llqs), w.q, w.answers, len(w.llqs))
		}
		for j, wl := range w.llqs {
			gl := g.llqs[j]
			if gl.id != wl.id || gl.client != wl.client || gl.remaining != wl.remaining || gl.udpSize != wl.udpSize || gl.proven != wl.proven || !equalRRs(gl.unsettled, wl.unsettled) {
				t.Fatalf("topic %d LLQ %d: got %+v, want %+v", i, j, gl, wl)
			}
		}
	}
}

func equalRRs(a, b []dns.RR) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !dns.IsDuplicate(a[i], b[i]) || a[i].Header().Ttl != b[i].Header().Ttl {
			return false
		}
	}
	return true
}

// TestStateDamage: every truncation, every single flipped bit, another
// version, another key and foreign bytes are refused with an error, never
// a partial snapshot or a panic.
func TestStateDamage(t *testing.T) {
	good, err := encodeState(testSnapshot(t, 2, 3), testStateKey)
	if err != nil {
		t.Fatal(err)
	}
	refuse := func(what string, b, key []byte) {
		t.Helper()
		if snap, err := decodeState(b, key); err == nil || snap != nil {
			t.Fatalf("%s: loaded (%v, %v)", what, snap, err)
		}
	}
	for n := range len(good) {
		refuse(fmt.Sprintf("truncated to %d bytes", n), good[:n], testStateKey)
	}
	for i := range len(good) * 8 {
		b := bytes.Clone(good)
		b[i/8] ^= 1 << (i % 8)
		refuse(fmt.Sprintf("bit %d flipped", i), b, testStateKey)
	}
	other := bytes.Clone(good)
	other[len(stateMagic)+1] = stateVersion + 1
	if _, err := decodeState(other, testStateKey); err == nil || !bytes.Contains([]byte(err.Error()), []byte("version 3")) {
		t.Fatalf("foreign version: %v", err)
	}
	refuse("another key", good, bytes.Repeat([]byte{8}, stateKeyLen))
	refuse("a Corefile", []byte(". {\n    llq\n}\n"), testStateKey)
	refuse("empty", nil, testStateKey)
	refuse("appended", append(bytes.Clone(good), 0), testStateKey)
}

// TestStateInvalidBody: a body whose MAC is right but whose content is not
// sound (as a buggy or foreign writer holding the key might produce) is
// refused whole.
func TestStateInvalidBody(t *testing.T) {
	base := func() *snapshot { return testSnapshot(t, 2, 2) }
	for name, spoil := range map[string]func(s *snapshot){
		"duplicate ID":   func(s *snapshot) { s.topics[1].llqs[0].id = s.topics[0].llqs[0].id },
		"ID 0":           func(s *snapshot) { s.topics[1].llqs[1].id = 0 },
		"port 0":         func(s *snapshot) { s.topics[0].llqs[0].client = netip.MustParseAddrPort("127.0.0.1:0") },
		"unspecified":    func(s *snapshot) { s.topics[0].llqs[0].client = netip.MustParseAddrPort("0.0.0.0:53") },
		"multicast":      func(s *snapshot) { s.topics[0].llqs[0].client = netip.MustParseAddrPort("224.0.0.251:5353") },
		"small UDP size": func(s *snapshot) { s.topics[0].llqs[0].udpSize = 511 },
		"CHAOS question": func(s *snapshot) { s.topics[0].q.Qclass = dns.ClassCHAOS },
		"ANY question":   func(s *snapshot) { s.topics[1].q.Qtype = dns.TypeANY },
		"OPT among answers": func(s *snapshot) {
			s.topics[0].answers = append(s.topics[0].answers, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}})
		},
		"OPT among unsettled": func(s *snapshot) {
			s.topics[0].llqs[0].unsettled = []dns.RR{&dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}}
		},
	} {
		s := base()
		spoil(s)
		b, err := encodeState(s, testStateKey)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if snap, err := decodeState(b, testStateKey); err == nil || snap != nil {
			t.Errorf("%s: loaded", name)
		}
	}
}

// TestStateSharedQuestion: topics of two blocks or clients may share a
// question (see topicKey), and the file keeps both.
func TestStateSharedQuestion(t *testing.T) {
	s := testSnapshot(t, 2, 2)
	s.topics[1].q = s.topics[0].q
	b, err := encodeState(s, testStateKey)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := decodeState(b, testStateKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.topics) != 2 || snap.topics[1].q != s.topics[0].q {
		t.Fatalf("topics %+v", snap.topics)
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "llq.state")
	for _, data := range [][]byte{[]byte("one"), []byte("two, longer")} {
		if err := writeAtomic(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %q, %v; want %q", got, err, data)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if err := writeAtomic(filepath.Join(dir, "missing", "llq.state"), nil, 0o600); err == nil {
		t.Fatal("wrote into a missing directory")
	}
	// What a crash in the middle of a write leaves is cleaned up.
	os.WriteFile(filepath.Join(dir, ".llq.state.tmp123"), []byte("half"), 0o600)
	removeTemps(path)
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("after removeTemps: %v", entries)
	}
}

func TestStateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "llq.state")
	k1, fresh, err := stateKey(path)
	if err != nil || !fresh || len(k1) != stateKeyLen {
		t.Fatalf("first key: %d bytes, fresh %v, %v", len(k1), fresh, err)
	}
	if fi, _ := os.Stat(path + ".key"); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode())
	}
	k2, fresh, err := stateKey(path)
	if err != nil || fresh || !bytes.Equal(k1, k2) {
		t.Fatalf("second key differs or fresh (%v, %v)", fresh, err)
	}
	os.WriteFile(path+".key", []byte("short"), 0o600)
	k3, fresh, err := stateKey(path)
	if err != nil || !fresh || bytes.Equal(k3, k1) {
		t.Fatalf("damaged key not replaced (%v, %v)", fresh, err)
	}
	if _, err := readState(path, k3); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing state file: %v", err)
	}
}

// FuzzLoad feeds the state loader arbitrary files. Whatever they hold it
// must not panic, and whatever it accepts must be sound, encode back to an
// equivalent file, and restore into an engine's table consistently, leaving
// nothing behind once its LLQs are gone. The body is fuzzed both as the
// whole file, which the MAC nearly always stops, and re-signed, which
// reaches the parser.
func FuzzLoad(f *testing.F) {
	for _, snap := range []*snapshot{{saved: time.UnixMilli(1)}, testSnapshot(f, 1, 1), testSnapshot(f, 2, 3)} {
		b, err := encodeState(snap, testStateKey)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add(binary.BigEndian.AppendUint16([]byte(stateMagic), stateVersion))
	f.Fuzz(func(t *testing.T, data []byte) {
		if snap, err := decodeState(data, testStateKey); err == nil {
			checkLoaded(t, snap)
		}
		head := len(stateMagic) + 2
		if len(data) < head+stateMACLen {
			return
		}
		body := data[:len(data)-stateMACLen]
		signed := resigned(body)
		snap, err := decodeState(signed, testStateKey)
		if err != nil {
			return
		}
		checkLoaded(t, snap)
		checkRestored(t, snap)
		again, err := encodeState(snap, testStateKey)
		if err != nil {
			return // a record miekg/dns unpacks but cannot pack again
		}
		snap2, err := decodeState(again, testStateKey)
		if err != nil {
			t.Fatalf("an accepted snapshot, encoded again, does not load: %v", err)
		}
		checkLoaded(t, snap2)
	})
}

// resigned puts the current header on body and signs it.
func resigned(body []byte) []byte {
	b := binary.BigEndian.AppendUint16([]byte(stateMagic), stateVersion)
	b = append(b, body[len(stateMagic)+2:]...)
	return append(b, stateMAC(testStateKey, b)...)
}

// fuzzEngine is one engine for every input a fuzzing process tries: its
// listener would cost each input a socket.
var fuzzEngine struct {
	sync.Once
	e   *Engine
	err error
}

// checkRestored restores snap, as if saved just now, into an engine with
// no backend, packs the events the restart would send (without sending
// them: the addresses are the fuzzer's), checks that the table is
// consistent, then drops every LLQ and checks that nothing is left.
func checkRestored(t *testing.T, snap *snapshot) {
	t.Helper()
	fuzzEngine.Do(func() {
		cfg := defaultConfig()
		cfg.listen = "127.0.0.1:0"
		cfg.poll = 0
		fuzzEngine.e, fuzzEngine.err = newEngine(cfg)
	})
	e := fuzzEngine.e
	if fuzzEngine.err != nil {
		t.Fatal(fuzzEngine.err)
	}
	l := e.llq
	now := time.Now()
	timers := e.sched.len()
	saved := *snap
	saved.saved = now
	evs := l.restore(&saved, now)
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range evs {
		if !ev.sub.gone() {
			l.restate(ev, now) // packs it; an error would be logged, and the event retried
		}
	}
	inTopics, perClient := 0, 0
	for k, tp := range e.topics {
		if tp.key != k || !k.provisional() {
			t.Fatalf("topic %+v under key %+v", tp.key, k)
		}
		for _, x := range tp.subs {
			s := x.(*llqSub)
			if s.topic != tp || l.subs[s.id] != s {
				t.Fatalf("LLQ %x in topic %v is not in the table", s.id, k)
			}
			inTopics++
		}
	}
	for _, n := range l.perClient {
		perClient += n
	}
	if inTopics != len(l.subs) || perClient != len(l.subs) || len(l.restored) != len(l.subs) {
		t.Fatalf("%d LLQs in the table, %d in topics, %d counted per client, %d to readmit", len(l.subs), inTopics, perClient, len(l.restored))
	}
	if len(l.subs) > snap.llqs() {
		t.Fatalf("%d LLQs restored from a file of %d", len(l.subs), snap.llqs())
	}
	for _, s := range l.subs {
		l.drop(s)
	}
	l.restored = nil
	if len(l.subs) != 0 || len(e.topics) != 0 || len(e.questions) != 0 || len(l.perClient) != 0 {
		t.Fatalf("left behind: %d LLQs, %d topics, %d questions, %d clients", len(l.subs), len(e.topics), len(e.questions), len(l.perClient))
	}
	if n := e.sched.len(); n != timers {
		t.Fatalf("%d timers armed after every LLQ left, %d before", n, timers)
	}
}

func checkLoaded(t *testing.T, snap *snapshot) {
	t.Helper()
	ids := map[uint64]bool{}
	for _, tp := range snap.topics {
		for _, l := range tp.llqs {
			if l.id == 0 || ids[l.id] || !l.client.Addr().IsValid() || l.client.Port() == 0 || l.udpSize < 512 {
				t.Fatalf("unsound LLQ accepted: %+v", l)
			}
			ids[l.id] = true
		}
	}
}
