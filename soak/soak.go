// Package soak runs many LLQ clients against a server for a long time while
// the zone changes, clients come and go and packets get lost, and then checks
// what matters: every client's view equals the server's answer set, no LLQ
// is left behind, and the server's memory and goroutines stay flat.
//
// `llq soak` runs it against a CoreDNS process; test/soak_test.go runs a
// short version in CI.
package soak

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
)

// Config describes a soak run.
type Config struct {
	Server      netip.AddrPort // the LLQ listener
	DNS         string         // the ordinary port, host:port: the truth
	Zone        string         // zone file the soak owns and rewrites
	Origin      string         // the zone's origin, e.g. "example.org."
	Names       int            // names in the zone, each one question
	Clients     int            // client sockets live at any time
	PerClient   int            // LLQs per client, on distinct names
	Addrs       int            // loopback source addresses to spread clients over
	Duration    time.Duration  // how long changes and churn go on
	ChangeEvery time.Duration  // one zone change per interval
	Churn       time.Duration  // one client leaves and a new one joins per interval; 0 = none
	Loss        float64        // fraction of datagrams lost in each direction
	Lease       time.Duration  // lease to request
	Retry       time.Duration  // client retransmission interval
	Settle      time.Duration  // how long views may take to converge after the last change
	Progress    io.Writer      // progress lines; nil = quiet

	// Server state, sampled during the run: live LLQs, and (when known)
	// the server's resident memory, Go heap in use and goroutines. Most of
	// a CoreDNS's RSS is its 100 MB binary, paged in as code runs; the heap
	// is what the server itself holds.
	LiveLLQs func() (int, error)
	Sample   func() (rss, heap int64, goroutines int, err error)
}

// Sample is one reading of the server during the run.
type Sample struct {
	At         time.Duration
	LLQs       int
	RSS        int64
	Heap       int64
	Goroutines int
}

// Report is the outcome of a run.
type Report struct {
	Subscriptions  int // live at the end
	Converged      int // of those, with a view equal to the truth
	Diverged       []string
	Changes        int
	Joins, Leaves  int
	Lost           int // LLQs the clients had to set up again
	SetupFailures  int
	Events         int64
	LeakedLLQs     int // still on the server after every client left and the leases ran out
	Samples        []Sample
	ConvergeTime   time.Duration
	TerminatedTime time.Duration
}

type member struct {
	c    *client.Client
	subs []*client.Subscription
}

type run struct {
	cfg     Config
	rng     *rand.Rand
	mu      sync.Mutex
	zone    map[int][]string // name index -> its addresses
	err     error
	serial  uint32
	members []*member
	nextIdx int
	rep     Report
	events  atomic.Int64
}

// Run runs the soak and returns its report. An error means the run could not
// be carried out; a failed check is in the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.PerClient > cfg.Names || cfg.Names <= 0 || cfg.Clients <= 0 {
		return nil, fmt.Errorf("soak: want 0 < PerClient <= Names and Clients > 0")
	}
	if cfg.Settle <= 0 {
		cfg.Settle = time.Minute
	}
	r := &run{cfg: cfg, rng: rand.New(rand.NewPCG(1, 2)), zone: make(map[int][]string)}
	for i := 0; i < cfg.Names; i++ {
		r.zone[i] = []string{fmt.Sprintf("192.0.2.%d", i%250+1)}
	}
	if err := r.writeZone(); err != nil {
		return nil, err
	}
	if err := r.waitServed(ctx); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := r.joinMany(ctx, cfg.Clients); err != nil {
		return nil, err
	}
	r.sample(start)

	// Changes, churn and progress each keep their own pace: a slow join
	// under loss must not hold up the zone changes.
	runCtx, stop := context.WithTimeout(ctx, cfg.Duration)
	defer stop()
	var wg sync.WaitGroup
	every := func(d time.Duration, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(d)
			defer t.Stop()
			for {
				select {
				case <-runCtx.Done():
					return
				case <-t.C:
					if err := f(); err != nil {
						r.fail(err)
						return
					}
				}
			}
		}()
	}
	every(cfg.ChangeEvery, r.change)
	if cfg.Churn > 0 {
		every(cfg.Churn, func() error {
			r.leaveOldest()
			return r.joinMany(runCtx, 1)
		})
	}
	every(time.Second, func() error { r.relive(runCtx); return nil })
	every(10*time.Second, func() error { r.sample(start); r.progress(start); return nil })
	<-runCtx.Done()
	wg.Wait()
	if err := r.failure(); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	// Let the last changes and retransmissions arrive, then compare.
	settled := time.Now()
	deadline := settled.Add(cfg.Settle)
	for {
		r.relive(ctx)
		diverged, total := r.check(ctx)
		r.rep.Subscriptions, r.rep.Converged, r.rep.Diverged = total, total-len(diverged), diverged
		if len(diverged) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Second)
	}
	r.rep.ConvergeTime = time.Since(settled)
	r.sample(start)

	// Everyone leaves at once; whatever a lost terminate left behind must
	// expire.
	left := time.Now()
	r.mu.Lock()
	all := r.members
	r.members = nil
	r.mu.Unlock()
	var closing sync.WaitGroup
	for _, m := range all {
		closing.Add(1)
		go func() { defer closing.Done(); m.c.Close() }()
	}
	closing.Wait()
	r.rep.Leaves += len(all)
	if cfg.LiveLLQs != nil {
		limit := time.Now().Add(cfg.Lease + 10*time.Second)
		for {
			n, err := cfg.LiveLLQs()
			if err == nil && n == 0 || time.Now().After(limit) || ctx.Err() != nil {
				r.rep.LeakedLLQs = n
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	r.rep.TerminatedTime = time.Since(left)
	r.sample(start)
	r.rep.Events = r.events.Load()
	return &r.rep, nil
}

func (r *run) lossy() func(client.Direction, []byte) bool {
	if r.cfg.Loss <= 0 {
		return nil
	}
	return func(client.Direction, []byte) bool { return rand.Float64() < r.cfg.Loss }
}

// joinMany adds n clients, many at a time.
func (r *run) joinMany(ctx context.Context, n int) error {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := r.join(ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// join adds a client with PerClient LLQs on distinct random names, set up
// concurrently as a real client's questions would be.
func (r *run) join(ctx context.Context) error {
	r.mu.Lock()
	idx := r.nextIdx
	r.nextIdx++
	names := r.rng.Perm(r.cfg.Names)[:r.cfg.PerClient]
	r.mu.Unlock()
	local := "127.0.0.1:0"
	if r.cfg.Addrs > 1 {
		a := idx % r.cfg.Addrs
		local = fmt.Sprintf("127.2.%d.%d:0", a/250, a%250+1)
	}
	c, err := client.Dial(r.cfg.Server, client.Options{
		Lease: r.cfg.Lease, LocalAddr: local, RetryInterval: r.cfg.Retry, Drop: r.lossy(),
		EventBuffer: 1, OnEvent: func(*client.Subscription, client.Event) { r.events.Add(1) },
	})
	if err != nil {
		return err
	}
	m := &member{c: c, subs: make([]*client.Subscription, len(names))}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := dns.Question{Name: r.name(n), Qtype: dns.TypeA, Qclass: dns.ClassINET}
			sub, err := c.Subscribe(ctx, q)
			if err != nil {
				failed.Add(1)
				return
			}
			m.subs[i] = sub
		}()
	}
	wg.Wait()
	live := m.subs[:0]
	for _, sub := range m.subs {
		if sub != nil {
			live = append(live, sub)
		}
	}
	m.subs = live
	r.mu.Lock()
	r.members = append(r.members, m)
	r.rep.Joins++
	r.rep.SetupFailures += int(failed.Load())
	r.mu.Unlock()
	return nil
}

// leaveOldest closes the oldest client, which terminates its LLQs.
func (r *run) leaveOldest() {
	r.mu.Lock()
	if len(r.members) == 0 {
		r.mu.Unlock()
		return
	}
	m := r.members[0]
	r.members = r.members[1:]
	r.rep.Leaves++
	r.mu.Unlock()
	m.c.Close()
}

func (r *run) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
}

func (r *run) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// relive sets up again the LLQs the server lost (it dropped a client that
// missed too many acks, or a refresh got no answer), as a real client does.
func (r *run) relive(ctx context.Context) {
	r.mu.Lock()
	members := append([]*member(nil), r.members...)
	r.mu.Unlock()
	for _, m := range members {
		for i, sub := range m.subs {
			select {
			case <-sub.Done():
			default:
				continue
			}
			again, err := m.c.Subscribe(ctx, sub.Question())
			r.mu.Lock()
			r.rep.Lost++
			if err == nil {
				m.subs[i] = again
			} else {
				r.rep.SetupFailures++
			}
			r.mu.Unlock()
		}
	}
}

// change rewrites the zone: one name gains or loses an address.
func (r *run) change() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.rng.IntN(r.cfg.Names)
	addrs := r.zone[n]
	if len(addrs) > 1 && r.rng.IntN(2) == 0 {
		r.zone[n] = addrs[:len(addrs)-1]
	} else {
		r.zone[n] = append(addrs, fmt.Sprintf("198.51.100.%d", r.rng.IntN(250)+1))
	}
	r.rep.Changes++
	return r.writeZone()
}

func (r *run) name(i int) string { return fmt.Sprintf("s%d.%s", i, r.cfg.Origin) }

func (r *run) writeZone() error {
	r.serial++
	var b strings.Builder
	// Serials from the clock stay above whatever the file held before.
	fmt.Fprintf(&b, "$ORIGIN %s\n$TTL 3600\n@ IN SOA ns1 hostmaster %d 7200 3600 1209600 3600\n  IN NS ns1\nns1 IN A 127.0.0.1\n",
		r.cfg.Origin, uint32(time.Now().Unix()-1.7e9)+r.serial)
	for i := 0; i < r.cfg.Names; i++ {
		for _, a := range r.zone[i] {
			fmt.Fprintf(&b, "s%d IN A %s\n", i, a)
		}
	}
	tmp := r.cfg.Zone + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, r.cfg.Zone)
}

// waitServed waits until the ordinary port serves the soak's zone.
func (r *run) waitServed(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if rrs, err := r.truth(r.name(0)); err == nil && len(rrs) > 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("soak: %s does not serve %s from %s", r.cfg.DNS, r.name(0), r.cfg.Zone)
}

func (r *run) truth(name string) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	in, err := dns.Exchange(m, r.cfg.DNS)
	if err != nil {
		return nil, err
	}
	return in.Answer, nil
}

// check compares every live LLQ's view with a plain query.
func (r *run) check(ctx context.Context) (diverged []string, total int) {
	truth := make(map[string][]dns.RR)
	r.mu.Lock()
	members := append([]*member(nil), r.members...)
	r.mu.Unlock()
	for _, m := range members {
		for _, sub := range m.subs {
			select {
			case <-sub.Done():
				continue
			default:
			}
			total++
			name := sub.Question().Name
			want, ok := truth[name]
			if !ok {
				var err error
				if want, err = r.truth(name); err != nil {
					diverged = append(diverged, fmt.Sprintf("%s: no truth: %v", name, err))
					continue
				}
				truth[name] = want
			}
			if added, removed := client.Diff(sub.Answers(), want); len(added)+len(removed) > 0 {
				diverged = append(diverged, fmt.Sprintf("%s from %s: lacks %v, has extra %v", name, m.c.LocalAddr(), added, removed))
			}
		}
	}
	return diverged, total
}

func (r *run) sample(start time.Time) {
	s := Sample{At: time.Since(start).Round(time.Second)}
	if r.cfg.LiveLLQs != nil {
		s.LLQs, _ = r.cfg.LiveLLQs()
	}
	if r.cfg.Sample != nil {
		s.RSS, s.Heap, s.Goroutines, _ = r.cfg.Sample()
	}
	r.mu.Lock()
	r.rep.Samples = append(r.rep.Samples, s)
	r.mu.Unlock()
}

func (r *run) progress(start time.Time) {
	if r.cfg.Progress == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.rep.Samples[len(r.rep.Samples)-1]
	fmt.Fprintf(r.cfg.Progress, "%6.0fs changes %d joins %d leaves %d lost %d events %d server: LLQs %d RSS %.1f MiB heap %.1f MiB goroutines %d\n",
		time.Since(start).Seconds(), r.rep.Changes, r.rep.Joins, r.rep.Leaves, r.rep.Lost, r.events.Load(), s.LLQs, mb(s.RSS), mb(s.Heap), s.Goroutines)
}

// Markdown renders the report as a table for BENCHMARKS.md.
func (rep *Report) Markdown(cfg Config, w io.Writer) {
	row := func(k, f string, a ...any) { fmt.Fprintf(w, "| %s | %s |\n", k, fmt.Sprintf(f, a...)) }
	fmt.Fprintf(w, "| figure | value |\n| --- | --- |\n")
	row("duration / change interval / churn interval", "%s / %s / %s", cfg.Duration, cfg.ChangeEvery, cfg.Churn)
	row("clients x LLQs each (live at once)", "%d x %d = %d", cfg.Clients, cfg.PerClient, cfg.Clients*cfg.PerClient)
	row("loss each way", "%.0f %%", cfg.Loss*100)
	row("zone changes / client joins / leaves", "%d / %d / %d", rep.Changes, rep.Joins, rep.Leaves)
	row("event packets received", "%d", rep.Events)
	row("LLQs lost and set up again / setup failures", "%d / %d", rep.Lost, rep.SetupFailures)
	row("views equal to the server's answers at the end", "%d of %d (after %s)", rep.Converged, rep.Subscriptions, rep.ConvergeTime.Round(time.Second))
	row("LLQs left on the server after all clients left", "%d (checked after %s)", rep.LeakedLLQs, rep.TerminatedTime.Round(time.Second))
	if n := len(rep.Samples); n > 1 {
		first, mid, last := rep.Samples[0], rep.Samples[n/2], rep.Samples[n-2]
		row("server RSS start / middle / end of load", "%.1f / %.1f / %.1f MiB", mb(first.RSS), mb(mid.RSS), mb(last.RSS))
		row("server Go heap in use start / middle / end of load", "%.1f / %.1f / %.1f MiB", mb(first.Heap), mb(mid.Heap), mb(last.Heap))
		row("server goroutines start / middle / end of load / after", "%d / %d / %d / %d", first.Goroutines, mid.Goroutines, last.Goroutines, rep.Samples[n-1].Goroutines)
	}
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }
