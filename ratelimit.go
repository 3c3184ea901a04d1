package llq

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// setupLimiter rate-limits LLQ creation per client address with token
// buckets in a fixed-size table indexed by a hash of the address: memory is
// bounded whatever the number of addresses, at the price that two addresses
// sharing a slot share a budget.
type setupLimiter struct {
	mu      sync.Mutex
	seed    maphash.Seed
	buckets [4096]bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newSetupLimiter() *setupLimiter { return &setupLimiter{seed: maphash.MakeSeed()} }

// allow takes one token for addr. When none is left it returns how long until
// one will be.
func (l *setupLimiter) allow(addr netip.Addr, now time.Time, rate float64, burst int) (bool, time.Duration) {
	if rate <= 0 {
		return true, 0
	}
	a := addr.As16()
	i := maphash.Bytes(l.seed, a[:]) % uint64(len(l.buckets))
	l.mu.Lock()
	defer l.mu.Unlock()
	b := &l.buckets[i]
	if b.last.IsZero() {
		b.tokens = float64(burst)
	} else {
		b.tokens += now.Sub(b.last).Seconds() * rate
		if b.tokens > float64(burst) {
			b.tokens = float64(burst)
		}
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / rate * float64(time.Second))
}
