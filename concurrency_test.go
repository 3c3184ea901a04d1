package llq

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/file"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// slowBackend answers from the test zone, but a question for a name
// starting with "slow" waits for release once armed: a forward waiting on a
// dead upstream.
type slowBackend struct {
	next    plugin.Handler
	armed   atomic.Bool
	entered chan string
	release chan struct{}
}

func withSlowBackend(env *testEnv, armed bool) *slowBackend {
	sb := &slowBackend{next: file.File{Zones: fileZones(env.zone)}, entered: make(chan string, 100), release: make(chan struct{})}
	sb.armed.Store(armed)
	env.e.register(&backend{owner: env.owner, zones: []string{testZone}, handler: sb})
	return sb
}

func (sb *slowBackend) Name() string { return "slow" }
func (sb *slowBackend) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if strings.HasPrefix(r.Question[0].Name, "slow") && sb.armed.Load() {
		sb.entered <- r.Question[0].Name
		<-sb.release
	}
	return sb.next.ServeDNS(ctx, w, r)
}

// The first resolution of a new topic runs off the UDP readers: with more
// slow setups under way than there are readers, a refresh is still
// answered.
func TestSlowSetupsLeaveReadersFree(t *testing.T) {
	env := newTestEnv(t, nil)
	sb := withSlowBackend(env, true)
	defer close(sb.release)
	srv := env.e.Addr().(*net.UDPAddr)
	send := func(c *udpClient, m *dns.Msg) {
		t.Helper()
		if _, err := c.conn.WriteToUDP(packMsg(t, m), srv); err != nil {
			t.Fatal(err)
		}
	}
	holder := newUDPClient(t)
	send(holder, llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600)))
	r, _ := holder.read(t, wait)
	send(holder, llqMsg(2, 1232, []dns.Question{qWWW}, setupOpt(only(t, r).Id, 3600)))
	r, _ = holder.read(t, wait)
	id := only(t, r).Id

	n := runtime.GOMAXPROCS(0) + 2
	slow := newUDPClient(t)
	for i := range n {
		q := question(fmt.Sprintf("slow%d.example.org.", i), dns.TypeA)
		send(slow, llqMsg(uint16(10+i), 1232, []dns.Question{q}, setupOpt(0, 3600)))
		ch, _ := slow.read(t, wait)
		send(slow, llqMsg(uint16(10+i), 1232, []dns.Question{q}, setupOpt(only(t, ch).Id, 3600)))
	}
	for range n {
		<-sb.entered
	}
	send(holder, llqMsg(3, 1232, []dns.Question{qWWW}, refreshOpt(id, 3600)))
	r, _ = holder.read(t, wait)
	wantOpt(t, only(t, r), wire.OpRefresh, wire.NoError)
}

// A burst of challenge responses for new questions, more than there are
// setup workers, waits for a worker: none is dropped, though the client
// would hear nothing until it resent. Every worker is held by a slow
// backend while the rest of the burst arrives.
func TestSetupBurstWaitsForWorkers(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.setupRate = 0 })
	sb := withSlowBackend(env, true)
	srv := env.e.Addr().(*net.UDPAddr)
	c := newUDPClient(t)
	send := func(m *dns.Msg) {
		t.Helper()
		if _, err := c.conn.WriteToUDP(packMsg(t, m), srv); err != nil {
			t.Fatal(err)
		}
	}
	n := maxSetupsAside + 20
	qs := make([]dns.Question, n)
	ids := make([]uint64, n)
	for i := range n {
		qs[i] = question(fmt.Sprintf("slow%d.example.org.", i), dns.TypeA)
		send(llqMsg(uint16(i+1), 1232, []dns.Question{qs[i]}, setupOpt(0, 3600)))
		r, _ := c.read(t, wait)
		ids[i] = only(t, r).Id
	}
	for i := range n {
		send(llqMsg(uint16(i+1), 1232, []dns.Question{qs[i]}, setupOpt(ids[i], 3600)))
	}
	for range maxSetupsAside {
		<-sb.entered // every worker waits on the backend; the rest of the burst is queued or on its way
	}
	close(sb.release)
	acked := make(map[uint16]bool)
	for range n {
		r, _ := c.read(t, wait)
		wantOpt(t, only(t, r), wire.OpSetup, wire.NoError)
		acked[r.Id] = true
	}
	if len(acked) != n {
		t.Fatalf("%d distinct ACKs for %d setups", len(acked), n)
	}
	if st := env.e.Stats(); st.LLQs != n {
		t.Fatalf("%d LLQs, want %d", st.LLQs, n)
	}
}

// Re-resolution runs in parallel: while one topic's backend hangs, another
// topic's change reaches its subscriber.
func TestSlowTopicDelaysNoOther(t *testing.T) {
	env := newTestEnv(t, nil)
	sb := withSlowBackend(env, false)
	defer close(sb.release)
	env.establish(t, netip.MustParseAddrPort("127.0.0.1:9"), 1232, question("slow.example.org.", dns.TypeA), 3600)
	c := newUDPClient(t)
	srv := env.e.Addr().(*net.UDPAddr)
	c.conn.WriteToUDP(packMsg(t, llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600))), srv)
	r, _ := c.read(t, wait)
	c.conn.WriteToUDP(packMsg(t, llqMsg(2, 1232, []dns.Question{qWWW}, setupOpt(only(t, r).Id, 3600))), srv)
	r, _ = c.read(t, wait)
	id := only(t, r).Id

	sb.armed.Store(true)
	swapZone(t, env.zone, eventZone)
	env.changed()
	<-sb.entered // slow.example.org. hangs
	ev, _ := c.read(t, wait)
	wantEvent(t, ev, qWWW, id)
}

// A change's retryRound leaves the events on timers of their own alone,
// which it tells without reading the timer's heap index: the scheduler
// moves that under its own lock only, while other timers come and go.
func TestRetryRoundAndScheduler(t *testing.T) {
	env := newTestEnv(t, nil)
	id, _ := env.establish(t, netip.MustParseAddrPort("127.0.0.1:9"), 1232, qWWW, 3600)
	e := env.e
	e.mu.Lock()
	s := e.llq.subs[id]
	round := &retryRound{l: e.llq}
	round.timer.init(round)
	now := time.Now()
	for i := range 200 {
		ev := newEvent(s, statement{keys: []string{}, rrs: []dns.RR{}})
		if e.llq.track(ev, []bool{}, now, i%2 == 0); ev.own { // every other one on its own timer, due later
			e.sched.schedule(&ev.retry, now.Add(time.Hour))
		}
		round.events = append(round.events, ev)
	}
	e.mu.Unlock()
	events := round.events

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() { // other timers come and go, moving the events' in the heap
		defer wg.Done()
		ts := make([]timer, 500)
		for i := 0; ; i++ {
			select {
			case <-stop:
				// Only the timers this loop has initialised: a zero
				// timer's index reads as armed.
				for j := range min(i, len(ts)) {
					e.sched.cancel(&ts[j])
				}
				return
			default:
			}
			tm := &ts[i%len(ts)]
			if i < len(ts) {
				tm.init(fireFunc(func() {}))
			}
			e.sched.schedule(tm, now.Add(time.Duration(i%997)*time.Hour))
		}
	}()
	round.fire()
	close(stop)
	wg.Wait()

	e.mu.Lock()
	defer e.mu.Unlock()
	for i, ev := range events {
		if want := i % 2; ev.tries != want {
			t.Fatalf("event %d (own timer %v) retransmitted %d times by the round, want %d", i, i%2 == 0, ev.tries, want)
		}
	}
}
