package llq

import (
	"net/netip"
	"testing"
	"time"
)

func TestSetupLimiterBurstAndRefill(t *testing.T) {
	l := newSetupLimiter(setupRateShared.WithLabelValues(t.Name()))
	pa := defaultClientBits.key(netip.MustParseAddr("192.0.2.1"))
	now := time.Unix(1_800_000_000, 0)

	for i := 0; i < 3; i++ {
		if ok, _ := l.allow(pa, now, 2, 3); !ok {
			t.Fatalf("setup %d of a burst of 3 refused", i+1)
		}
	}
	ok, wait := l.allow(pa, now, 2, 3)
	if ok {
		t.Fatalf("fourth setup of a burst of 3 allowed")
	}
	if wait != 500*time.Millisecond {
		t.Fatalf("wait %v, want 500ms at 2/s", wait)
	}
	// Half a token later: still no, and the wait shrinks.
	if ok, wait := l.allow(pa, now.Add(250*time.Millisecond), 2, 3); ok || wait != 250*time.Millisecond {
		t.Fatalf("after 250ms: %v %v", ok, wait)
	}
	if ok, _ := l.allow(pa, now.Add(500*time.Millisecond), 2, 3); !ok {
		t.Fatalf("refused after a token refilled")
	}
	// A long pause refills to the burst, not beyond.
	later := now.Add(time.Hour)
	for i := 0; i < 3; i++ {
		if ok, _ := l.allow(pa, later, 2, 3); !ok {
			t.Fatalf("setup %d after a pause refused", i+1)
		}
	}
	if ok, _ := l.allow(pa, later, 2, 3); ok {
		t.Fatalf("burst exceeded after a pause")
	}
}

func TestSetupLimiterUnlimited(t *testing.T) {
	l := newSetupLimiter(setupRateShared.WithLabelValues(t.Name()))
	pa := defaultClientBits.key(netip.MustParseAddr("192.0.2.1"))
	for i := 0; i < 1000; i++ {
		if ok, wait := l.allow(pa, time.Unix(0, 0), 0, 0); !ok || wait != 0 {
			t.Fatalf("rate 0 limited setup %d", i)
		}
	}
}

// Clients have buckets of their own: one cannot spend another's budget,
// until more clients are being limited at once than there are buckets;
// a client that has refilled its bucket makes room.
func TestSetupLimiterPerClient(t *testing.T) {
	l := newSetupLimiter(setupRateShared.WithLabelValues(t.Name()))
	now := time.Unix(1_800_000_000, 0)
	client := func(i int) netip.Prefix {
		return defaultClientBits.key(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	for i := range exactBuckets {
		if ok, _ := l.allow(client(i), now, 1, 1); !ok {
			t.Fatalf("client %d refused its first setup", i)
		}
	}
	for i := range exactBuckets {
		if ok, _ := l.allow(client(i), now, 1, 1); ok {
			t.Fatalf("client %d set up twice with a burst of 1", i)
		}
	}
	shared := track(t, l.shared)
	l.allow(client(exactBuckets), now, 1, 1)
	if shared.moved(t) != 1 {
		t.Fatalf("a client beyond the exact buckets was not counted as shared")
	}
	// A second later every bucket has refilled and is forgotten at the next
	// sweep: the newcomer gets a bucket of its own again.
	later := now.Add(sweepEvery)
	if ok, _ := l.allow(client(exactBuckets+1), later, 1, 1); !ok || shared.moved(t) != 1 {
		t.Fatalf("newcomer after the sweep: allowed %v, shared %v", ok, shared.moved(t))
	}
	if len(l.exact) != 1 {
		t.Fatalf("%d buckets kept after the sweep, want 1", len(l.exact))
	}
}

// An IPv6 client is its /64: new addresses in it share its budget.
func TestSetupLimiterIPv6Prefix(t *testing.T) {
	l := newSetupLimiter(setupRateShared.WithLabelValues(t.Name()))
	now := time.Unix(1_800_000_000, 0)
	a := netip.MustParseAddr("2001:db8:0:1::1")
	if ok, _ := l.allow(defaultClientBits.key(a), now, 1, 1); !ok {
		t.Fatalf("first setup refused")
	}
	if ok, _ := l.allow(defaultClientBits.key(netip.MustParseAddr("2001:db8:0:1:ffff::2")), now, 1, 1); ok {
		t.Fatalf("another address in the same /64 got a fresh budget")
	}
	if ok, _ := l.allow(defaultClientBits.key(netip.MustParseAddr("2001:db8:0:2::1")), now, 1, 1); !ok {
		t.Fatalf("the next /64 pays for the first")
	}
}
