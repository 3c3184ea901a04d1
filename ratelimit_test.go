package llq

import (
	"hash/maphash"
	"net/netip"
	"testing"
	"time"
)

func TestSetupLimiterBurstAndRefill(t *testing.T) {
	l := newSetupLimiter()
	a := netip.MustParseAddr("192.0.2.1")
	now := time.Unix(1_800_000_000, 0)

	for i := 0; i < 3; i++ {
		if ok, _ := l.allow(a, now, 2, 3); !ok {
			t.Fatalf("setup %d of a burst of 3 refused", i+1)
		}
	}
	ok, wait := l.allow(a, now, 2, 3)
	if ok {
		t.Fatalf("fourth setup of a burst of 3 allowed")
	}
	if wait != 500*time.Millisecond {
		t.Fatalf("wait %v, want 500ms at 2/s", wait)
	}
	// Half a token later: still no, and the wait shrinks.
	if ok, wait := l.allow(a, now.Add(250*time.Millisecond), 2, 3); ok || wait != 250*time.Millisecond {
		t.Fatalf("after 250ms: %v %v", ok, wait)
	}
	if ok, _ := l.allow(a, now.Add(500*time.Millisecond), 2, 3); !ok {
		t.Fatalf("refused after a token refilled")
	}
	// A long pause refills to the burst, not beyond.
	later := now.Add(time.Hour)
	for i := 0; i < 3; i++ {
		if ok, _ := l.allow(a, later, 2, 3); !ok {
			t.Fatalf("setup %d after a pause refused", i+1)
		}
	}
	if ok, _ := l.allow(a, later, 2, 3); ok {
		t.Fatalf("burst exceeded after a pause")
	}
}

func TestSetupLimiterUnlimited(t *testing.T) {
	l := newSetupLimiter()
	a := netip.MustParseAddr("192.0.2.1")
	for i := 0; i < 1000; i++ {
		if ok, wait := l.allow(a, time.Unix(0, 0), 0, 0); !ok || wait != 0 {
			t.Fatalf("rate 0 limited setup %d", i)
		}
	}
}

func TestSetupLimiterPerAddress(t *testing.T) {
	l := newSetupLimiter()
	slot := func(a netip.Addr) uint64 {
		b := a.As16()
		return maphash.Bytes(l.seed, b[:]) % uint64(len(l.buckets))
	}
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("2001:db8::1")
	for slot(a) == slot(b) { // one chance in 4096
		b = b.Next()
	}
	now := time.Unix(1_800_000_000, 0)
	if ok, _ := l.allow(a, now, 1, 1); !ok {
		t.Fatalf("first setup refused")
	}
	if ok, _ := l.allow(a, now, 1, 1); ok {
		t.Fatalf("a's budget not spent")
	}
	if ok, _ := l.allow(b, now, 1, 1); !ok {
		t.Fatalf("b pays for a")
	}
}
