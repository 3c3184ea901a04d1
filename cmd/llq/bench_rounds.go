package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"
)

// A round of -baseline times, back to back, the ways of getting one
// datagram to every endpoint: a change to name 0 fanned out by the server
// as LLQ events (with -zone), the bare Go sender, and the bare Go sender
// with every packet acked. This machine is a shared VM whose speed drifts
// by a fifth from one second to the next; timing them close together,
// several times, and taking the median of each round's ratio measures the
// server rather than the drift.
//
// The bare sender sends in a random order, as the server does (it finds
// the subscribers of a question in a map): endpoints in order would send
// the datagrams of one shared socket back to back, and their reader would
// take them in one wake-up and one read, a saving the server cannot have.
// The round also times the sender in endpoint order, for comparison.
type round struct {
	fan, base, acked   rate
	inOrder            rate
	ackedSent          int64
	ackedReceived      int64
	ackedLast          time.Duration // of the last ack, after the first packet
	sinkDrops          int64
	sinkDropsOK        bool
	fanDups, fanWanted int
}

// rate is n packets that arrived in span, first to last.
type rate struct {
	n    int
	span time.Duration
}

func (r rate) perSecond() float64 {
	if r.n < 2 || r.span <= 0 {
		return 0
	}
	return float64(r.n) / r.span.Seconds()
}

// rounds runs -rounds rounds and files them in st.
func (b *benchArgs) rounds(ctx context.Context, st *benchStats, cl *changeLog, socks []*benchSocket) error {
	for range b.roundCount {
		var r round
		if b.zone != "" && st.fanWant > 0 {
			// The tail of the hold, or of the last round, would share
			// the CPU with the fan-out.
			settle(st.received.Load, 500*time.Millisecond, 30*time.Second)
			r.fan, r.fanDups = b.fanOut(ctx, cl, st.fanWant)
			r.fanWanted = st.fanWant
		}
		settle(st.received.Load, 500*time.Millisecond, 30*time.Second)
		shuffled := slices.Clone(socks)
		rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		var err error
		if r.base, err = b.plainBaseline(st, shuffled); err != nil {
			return err
		}
		settle(func() int64 { return st.received.Load() + st.baselineCount() }, 500*time.Millisecond, 30*time.Second)
		if err := b.ackedBaseline(st, shuffled, &r); err != nil {
			return err
		}
		settle(func() int64 { return st.received.Load() + st.ackedCount() }, 500*time.Millisecond, 30*time.Second)
		if r.inOrder, err = b.plainBaseline(st, socks); err != nil {
			return err
		}
		st.rounds = append(st.rounds, r)
	}
	return nil
}

// fanOut makes one change to name 0 and times its events, first to last
// arrival, once it has reached want LLQs or 30 s have passed.
func (b *benchArgs) fanOut(ctx context.Context, cl *changeLog, want int) (rate, int) {
	i, err := b.change(ctx, cl)
	if err != nil {
		return rate{}, 0
	}
	deadline := time.Now().Add(30 * time.Second)
	var arrivals []time.Time
	dups := 0
	for {
		cl.mu.Lock()
		ch := &cl.changes[i]
		done := len(ch.arrivals) >= want
		if done || !time.Now().Before(deadline) {
			arrivals, dups = slices.Clone(ch.arrivals), ch.dups
		}
		cl.mu.Unlock()
		if arrivals != nil || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(arrivals) == 0 {
		return rate{}, dups
	}
	first, last := slices.MinFunc(arrivals, time.Time.Compare), slices.MaxFunc(arrivals, time.Time.Compare)
	return rate{len(arrivals), last.Sub(first)}, dups
}

// plainBaseline times the bare Go sender once, sending to the endpoints in
// the order given.
func (b *benchArgs) plainBaseline(st *benchStats, socks []*benchSocket) (rate, error) {
	st.mu.Lock()
	st.baseline, st.baseFirst, st.baseLast = 0, time.Time{}, time.Time{}
	st.mu.Unlock()
	if err := blast(socks, baselinePacket); err != nil {
		return rate{}, err
	}
	time.Sleep(time.Second) // let the last packets arrive
	st.mu.Lock()
	defer st.mu.Unlock()
	return rate{st.baseline, st.baseLast.Sub(st.baseFirst)}, nil
}

// median returns the median of xs (the mean of the middle two of an even
// count), or 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// roundRows writes the rounds into the summary table.
func roundRows(row func(k, f string, a ...any), rounds []round, endpoints int) {
	if len(rounds) == 0 {
		return
	}
	var fans, bases, ackeds, inOrder, overBase, overAcked []float64
	for k, r := range rounds {
		fan, base, acked := r.fan.perSecond(), r.base.perSecond(), r.acked.perSecond()
		cells := []string{}
		if fan > 0 {
			cells = append(cells, fmt.Sprintf("fan-out %d of %d LLQs in %s = %.0f events/s", r.fan.n, r.fanWanted, r.fan.span.Round(time.Millisecond), fan))
			if r.fanDups > 0 {
				cells = append(cells, fmt.Sprintf("%d retransmitted", r.fanDups))
			}
			fans = append(fans, fan)
		}
		cells = append(cells, fmt.Sprintf("bare sender %d of %d in %s = %.0f packets/s", r.base.n, endpoints, r.base.span.Round(time.Millisecond), base))
		bases = append(bases, base)
		ack := fmt.Sprintf("with acks %d in %s = %.0f packets/s (acks received: %d of %d, the last %s after the first packet arrived", r.acked.n, r.acked.span.Round(time.Millisecond), acked, r.ackedReceived, r.ackedSent, r.ackedLast.Round(time.Millisecond))
		if r.sinkDropsOK {
			ack += fmt.Sprintf(", %d dropped by the receiver's kernel", r.sinkDrops)
		}
		cells = append(cells, ack+")")
		ackeds = append(ackeds, acked)
		cells = append(cells, fmt.Sprintf("bare sender in endpoint order %d in %s = %.0f packets/s", r.inOrder.n, r.inOrder.span.Round(time.Millisecond), r.inOrder.perSecond()))
		inOrder = append(inOrder, r.inOrder.perSecond())
		if fan > 0 && base > 0 && acked > 0 {
			overBase, overAcked = append(overBase, fan/base), append(overAcked, fan/acked)
			cells = append(cells, fmt.Sprintf("ratios %.2f / %.2f", fan/base, fan/acked))
		}
		row(fmt.Sprintf("round %d", k+1), "%s", strings.Join(cells, "; "))
	}
	if len(fans) > 0 {
		row("fan-out: events for one change, first to last arrival, median of the rounds", "%.0f events/s", median(fans))
	}
	row("baseline: a bare Go UDP sender to the same endpoints in a random order, median of the rounds", "%.0f packets/s (in endpoint order: %.0f)", median(bases), median(inOrder))
	row("baseline with acks: bare Go sender, every packet answered to a bare Go receiver, median of the rounds", "%.0f packets/s", median(ackeds))
	if len(overBase) > 0 {
		row("fan-out events/s over baseline / over baseline with acks: median of the rounds' ratios (lowest, highest)", "**%.2f** (%.2f, %.2f) / %.2f (%.2f, %.2f)",
			median(overBase), slices.Min(overBase), slices.Max(overBase), median(overAcked), slices.Min(overAcked), slices.Max(overAcked))
	}
}
