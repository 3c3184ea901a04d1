package llq

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestChallengeIssueValid(t *testing.T) {
	c := newChallenger()
	now := time.Unix(1_800_000_000, 0)
	client := netip.MustParseAddrPort("192.0.2.1:5353")
	q := question("www.example.org.", dns.TypeA)
	lease := 2 * time.Hour

	id := c.issue(now, client, q)
	if id == 0 {
		t.Fatalf("challenge ID 0")
	}
	if id>>macBits != epochOf(now) {
		t.Fatalf("ID %x does not carry epoch %x", id, epochOf(now))
	}
	if c.issue(now.Add(time.Millisecond), client, q) != id && epochOf(now.Add(time.Millisecond)) == epochOf(now) {
		t.Fatalf("same epoch, different challenge")
	}
	if !c.valid(id, now, lease, client, q) {
		t.Fatalf("own challenge refused")
	}
	// The name's case does not matter; everything else does.
	upper := q
	upper.Name = "WWW.Example.ORG."
	if !c.valid(id, now, lease, client, upper) {
		t.Fatalf("challenge refused for a change of case")
	}
	other := func(f func(*dns.Question)) dns.Question { o := q; f(&o); return o }
	for name, tc := range map[string]struct {
		client netip.AddrPort
		q      dns.Question
		id     uint64
	}{
		"other port":    {netip.MustParseAddrPort("192.0.2.1:5354"), q, id},
		"other address": {netip.MustParseAddrPort("192.0.2.2:5353"), q, id},
		"other name":    {client, other(func(q *dns.Question) { q.Name = "ww.example.org." }), id},
		"other type":    {client, other(func(q *dns.Question) { q.Qtype = dns.TypeAAAA }), id},
		"other class":   {client, other(func(q *dns.Question) { q.Qclass = dns.ClassCHAOS }), id},
		"flipped bit":   {client, q, id ^ 1},
		"other epoch":   {client, q, id + 1<<macBits},
		"zero":          {client, q, 0},
	} {
		if c.valid(tc.id, now, lease, tc.client, tc.q) {
			t.Errorf("%s: accepted", name)
		}
	}
	// Another server (another key) does not accept it.
	if newChallenger().valid(id, now, lease, client, q) {
		t.Fatalf("another challenger accepted the ID")
	}
}

func TestChallengeAge(t *testing.T) {
	c := newChallenger()
	now := time.Unix(1_800_000_000, 0)
	client := netip.MustParseAddrPort("[2001:db8::1]:40000")
	q := question("www.example.org.", dns.TypeSRV)
	id := c.issue(now, client, q)

	for _, tc := range []struct {
		later time.Duration
		lease time.Duration
		ok    bool
	}{
		{0, 15 * time.Minute, true},
		{10 * time.Minute, 15 * time.Minute, true},
		{15 * time.Minute, 15 * time.Minute, true},                // answered at the end of the lease
		{15*time.Minute + 20*time.Second, 15 * time.Minute, true}, // within one epoch of slack
		{20 * time.Minute, 15 * time.Minute, false},               // the lease is long gone
		{time.Hour, 2 * time.Hour, true},
		{3 * time.Hour, 2 * time.Hour, false},
		{-epochLen, 2 * time.Hour, false}, // from the future
	} {
		if got := c.valid(id, now.Add(tc.later), tc.lease, client, q); got != tc.ok {
			t.Errorf("answered %v later with lease %v: valid %v, want %v", tc.later, tc.lease, got, tc.ok)
		}
	}
}

func TestChallengeEpochWraps(t *testing.T) {
	c := newChallenger()
	client := netip.MustParseAddrPort("192.0.2.1:5353")
	q := question("www.example.org.", dns.TypeA)
	// The last epoch before the 20-bit counter wraps, answered in the first
	// one after.
	last := time.Unix(int64(epochMask)*int64(epochLen/time.Second), 0)
	if epochOf(last) != epochMask || epochOf(last.Add(epochLen)) != 0 {
		t.Fatalf("epoch arithmetic: %x %x", epochOf(last), epochOf(last.Add(epochLen)))
	}
	id := c.issue(last, client, q)
	if !c.valid(id, last.Add(epochLen), time.Hour, client, q) {
		t.Fatalf("challenge refused across the epoch wrap")
	}
}

func BenchmarkChallengeIssue(b *testing.B) {
	c := newChallenger()
	client := netip.MustParseAddrPort("192.0.2.1:5353")
	q := question("www.example.org.", dns.TypeA)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		c.issue(now, client, q)
	}
}
