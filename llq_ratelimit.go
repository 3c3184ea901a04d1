package llq

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// setupLimiter rate-limits LLQ creation per client (see clientBits) with
// token buckets. A client's bucket is its own: two clients share one only
// when more than exactBuckets of them have each spent tokens within the
// last BURST/RATE seconds (5 s with the defaults), and every setup counted
// here comes from an address that answered a challenge or opened a TCP
// connection, so those are that many real clients at once. Past that the
// newcomers fall back to overflowBuckets slots chosen by a keyed hash,
// where colliding clients share a budget; memory stays bounded either way.
//
// A bucket that has filled up again says nothing a new bucket would not,
// so it is forgotten: the exact table holds only clients that set up LLQs
// recently.
type setupLimiter struct {
	mu        sync.Mutex
	exact     map[netip.Prefix]*bucket
	nextSweep time.Time
	seed      maphash.Seed
	overflow  [overflowBuckets]bucket
	shared    prometheus.Counter // setups limited in an overflow bucket
}

const (
	exactBuckets    = 1 << 15
	overflowBuckets = 4096
	// sweepEvery spaces the sweeps of a full exact table, so that a flood
	// of clients costs one pass over it per interval, not one per setup.
	sweepEvery = time.Second
)

type bucket struct {
	tokens float64
	last   time.Time
}

func newSetupLimiter(shared prometheus.Counter) *setupLimiter {
	return &setupLimiter{exact: make(map[netip.Prefix]*bucket), seed: maphash.MakeSeed(), shared: shared}
}

// allow takes one token for client. When none is left it returns how long
// until one will be.
func (l *setupLimiter) allow(client netip.Prefix, now time.Time, rate float64, burst int) (bool, time.Duration) {
	if rate <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketFor(client, now, rate, burst)
	if b.last.IsZero() {
		b.tokens = float64(burst)
	} else {
		b.tokens = b.refilled(now, rate, burst)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / rate * float64(time.Second))
}

func (b *bucket) refilled(now time.Time, rate float64, burst int) float64 {
	return min(float64(burst), b.tokens+now.Sub(b.last).Seconds()*rate)
}

// bucketFor finds or makes client's bucket. Call with l.mu held.
func (l *setupLimiter) bucketFor(client netip.Prefix, now time.Time, rate float64, burst int) *bucket {
	if b, ok := l.exact[client]; ok {
		return b
	}
	if len(l.exact) >= exactBuckets && !now.Before(l.nextSweep) {
		l.nextSweep = now.Add(sweepEvery)
		for k, b := range l.exact {
			if b.refilled(now, rate, burst) >= float64(burst) {
				delete(l.exact, k)
			}
		}
	}
	if len(l.exact) < exactBuckets {
		b := new(bucket)
		l.exact[client] = b
		return b
	}
	l.shared.Inc()
	a := client.Addr().As16()
	h := maphash.Bytes(l.seed, append(a[:], byte(client.Bits())))
	return &l.overflow[h%overflowBuckets]
}
