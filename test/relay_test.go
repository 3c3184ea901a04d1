package test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// relay is a UDP relay between one client and the LLQ listener that can
// lose, duplicate, delay and so reorder datagrams in both directions. The
// client talks to front; the server sees back as the client, and back is
// where events go and acks come from, as through a NAT.
type relay struct {
	t      *testing.T
	front  *net.UDPConn
	back   *net.UDPConn
	server netip.AddrPort

	mu     sync.Mutex
	client netip.AddrPort // learned from the first datagram on front
	rng    *rand.Rand

	trace []string // every datagram's fate, for failure reports

	impair                       atomic.Bool
	dropped, duplicated, delayed atomic.Int64
	wg                           sync.WaitGroup
}

const (
	lossRate      = 0.20
	duplicateRate = 0.10
	delayRate     = 0.15
	maxDelay      = 300 * time.Millisecond
)

func newRelay(t *testing.T, server netip.AddrPort) *relay {
	t.Helper()
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	r := &relay{t: t, front: listen(), back: listen(), server: server, rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
	r.wg.Add(2)
	go r.pump(r.front, func(b []byte) { r.forward(r.back, b, r.server) }, true)
	go r.pump(r.back, func(b []byte) {
		r.mu.Lock()
		to := r.client
		r.mu.Unlock()
		if to.IsValid() {
			r.forward(r.front, b, to)
		}
	}, false)
	t.Cleanup(r.close)
	return r
}

func (r *relay) addr() netip.AddrPort { return r.front.LocalAddr().(*net.UDPAddr).AddrPort() }

func (r *relay) close() {
	r.front.Close()
	r.back.Close()
	r.wg.Wait()
}

func (r *relay) pump(conn *net.UDPConn, out func([]byte), learn bool) {
	defer r.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if learn {
			r.mu.Lock()
			r.client = from
			r.mu.Unlock()
		}
		out(slices.Clone(buf[:n]))
	}
}

// note records what happened to datagram b sent on conn: which way it went,
// its DNS ID, LLQ opcode and, for events, the addresses it adds and removes.
func (r *relay) note(conn *net.UDPConn, b []byte, what string) {
	m := new(dns.Msg)
	if m.Unpack(b) != nil || len(m.Question) == 0 {
		return
	}
	dir := "S->C"
	if conn == r.back {
		dir = "C->S"
	}
	var rrs []string
	for _, rr := range m.Answer {
		a, ok := rr.(*dns.A)
		if !ok {
			continue
		}
		sign := "+"
		if rr.Header().Ttl == wire.RemoveTTL {
			sign = "-"
		}
		rrs = append(rrs, sign+a.A.String())
	}
	op := uint16(0)
	for _, o := range wire.Options(m) {
		op = o.Opcode
	}
	r.mu.Lock()
	r.trace = append(r.trace, fmt.Sprintf("%s %s %-8s %s id=%5d op=%d qr=%v %v", time.Now().Format("05.000"), dir, what, m.Question[0].Name, m.Id, op, m.Response, rrs))
	r.mu.Unlock()
}

// dump logs the trace of the datagrams about name.
func (r *relay) dump(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.trace {
		if strings.Contains(l, " "+name) {
			r.t.Log(l)
		}
	}
}

// forward sends b on conn to to, impaired when impair is on.
func (r *relay) forward(conn *net.UDPConn, b []byte, to netip.AddrPort) {
	send := func() {
		conn.WriteToUDPAddrPort(b, to) // errors after close are fine
		r.note(conn, b, "deliver")
	}
	if !r.impair.Load() {
		send()
		return
	}
	r.mu.Lock()
	drop := r.rng.Float64() < lossRate
	dup := r.rng.Float64() < duplicateRate
	delay := r.rng.Float64() < delayRate
	d1 := time.Duration(r.rng.Int64N(int64(maxDelay)))
	d2 := time.Duration(r.rng.Int64N(int64(maxDelay)))
	r.mu.Unlock()
	if drop {
		r.note(conn, b, "DROP")
		r.dropped.Add(1)
		return
	}
	if dup {
		r.duplicated.Add(1)
		time.AfterFunc(d2, send) // the copy, at some later point
	}
	if delay {
		r.delayed.Add(1)
		time.AfterFunc(d1, send)
		return
	}
	send()
}

// TestConvergenceUnderLoss: through a relay that loses ~20% of datagrams
// each way, duplicates some and delays (reorders) others, a client's
// subscriptions still end up equal to what ordinary queries return after a
// burst of zone changes.
func TestConvergenceUnderLoss(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	// zone returns records for every name, each with the addresses whose
	// bit is set in its mask. TTL 1 so that the cache on the ordinary port
	// lets go soon.
	zone := func(masks []int) []string {
		var out []string
		for n, name := range names {
			for i := 1; i <= 8; i++ {
				if masks[n]&(1<<(i-1)) != 0 {
					out = append(out, fmt.Sprintf("%s 1 IN A 192.0.2.%d", name, i))
				}
			}
		}
		return out
	}
	wantFor := func(records []string, name string) []string {
		var mine []string
		for _, r := range records {
			if r[:len(name)+1] == name+" " {
				mine = append(mine, r)
			}
		}
		return rrSetOf(t, mine...)
	}

	// More retransmissions than the harness default: at 20% loss each way
	// an event and its ack get through with probability 0.64, and the test
	// is about convergence, not about dropping silent clients.
	initial := zone([]int{3, 3, 3, 3, 3})
	s := startServer(t, "listen 127.0.0.1:0\n        lease 2 60\n        retransmit 100ms 10", initial...)
	rl := newRelay(t, s.llq)
	c := dial(t, rl.addr(), client.Options{Lease: time.Minute})
	subs := make([]*client.Subscription, len(names))
	for n, name := range names {
		subs[n] = subscribe(t, c, name+".example.org.", dns.TypeA)
		converge(t, subs[n], wantFor(initial, name))
	}

	rl.impair.Store(true)
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	var final []string
	for range 10 {
		masks := make([]int, len(names))
		for n := range masks {
			masks[n] = rng.IntN(256)
		}
		final = zone(masks)
		s.setRecords(final...)
		time.Sleep(time.Duration(50+rng.IntN(150)) * time.Millisecond)
	}
	// settle waits for every subscription to hold the final answers and
	// shows the relay's trace for one that does not.
	settle := func() {
		t.Helper()
		for n, name := range names {
			want := wantFor(final, name)
			deadline := time.Now().Add(30 * time.Second)
			for !slices.Equal(rrSet(subs[n].Answers()), want) {
				if time.Now().After(deadline) {
					rl.dump(name + ".example.org.")
					t.Fatalf("%s did not converge:\n got %q\nwant %q", name, rrSet(subs[n].Answers()), want)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	settle()
	t.Logf("relay: %d dropped, %d duplicated, %d delayed", rl.dropped.Load(), rl.duplicated.Load(), rl.delayed.Load())
	if rl.dropped.Load() == 0 || rl.duplicated.Load()+rl.delayed.Load() == 0 {
		t.Error("the relay impaired nothing; the test proved nothing")
	}

	// Converged for good once the dust settles: a late duplicate or delayed
	// packet may undo the state for a moment, but not for ever. And the
	// state is what an ordinary query says.
	rl.impair.Store(false)
	time.Sleep(maxDelay + 100*time.Millisecond)
	settle()
	for n, name := range names {
		eventuallyWithin(t, 30*time.Second, "a plain query for "+name+" to agree", func() bool {
			return slices.Equal(rrSet(s.query(name+".example.org.", dns.TypeA).Answer), rrSet(subs[n].Answers()))
		})
		if err := subs[n].Err(); err != nil {
			t.Errorf("subscription for %s lost: %v", name, err)
		}
	}
}
