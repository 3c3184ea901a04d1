package main

import (
	"io"
	"net/netip"
	"testing"
	"time"
)

// Every session follows name 0, for the fan-out, and its other questions
// (the first -subs, then the SUBSCRIBE rate's) are distinct: a session
// subscribing to a question twice is aborted (RFC 8765 section 6.2).
func TestSubNames(t *testing.T) {
	const perSession, names = 10, 50
	for s := range 200 {
		if n := subName(s, 0, perSession, names); n != 0 {
			t.Fatalf("session %d: first subscription to name %d, want 0", s, n)
		}
		seen := map[int]bool{}
		for j := range names {
			n := subName(s, j, perSession, names)
			if n < 0 || n >= names || seen[n] {
				t.Fatalf("session %d subscription %d: name %d repeated or out of range", s, j, n)
			}
			seen[n] = true
		}
	}
}

// A round counts each connection once, from the first to the last
// arrival, and nothing outside a round.
func TestPushStatsRound(t *testing.T) {
	st := &pushStats{}
	a, b := &pushConn{st: st}, &pushConn{st: st}
	st.arrive(a, 5) // set-up traffic, no round
	st.startRound(1)
	st.arrive(a, 100)
	st.arrive(a, 150) // a second message on a
	st.arrive(b, 400)
	r := st.waitRound(2, time.Second)
	if r.n != 2 || r.span != 300 {
		t.Fatalf("round 1: %d arrivals over %d ns, want 2 over 300", r.n, r.span)
	}
	st.arrive(b, 500) // after the round
	st.startRound(2)
	st.arrive(b, 600)
	if r := st.waitRound(1, time.Second); r.n != 1 || r.span != 0 {
		t.Fatalf("round 2: %d arrivals over %d ns, want 1 over 0", r.n, r.span)
	}
}

func TestBenchPushFlags(t *testing.T) {
	p, err := parseBenchPush([]string{"@127.0.0.1:8853", "-sessions", "10", "-subscribe-sessions", "100", "-baseline", "127.0.0.1:8854"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if p.subSessions != 10 || p.baseline != netip.MustParseAddrPort("127.0.0.1:8854") {
		t.Fatalf("got %d subscribing sessions, baseline %s", p.subSessions, p.baseline)
	}
	for _, args := range [][]string{
		{"127.0.0.1"},
		{"@127.0.0.1", "-subs", "0"},
		{"@127.0.0.1", "-subs", "20", "-names", "10"},
		{"@127.0.0.1", "-zone", "db"},
		{"@127.0.0.1", "-watchers", "10"},
	} {
		if _, err := parseBenchPush(args, io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	if src := source(netip.MustParseAddrPort("127.0.0.1:853"), 251, 300); src != netip.MustParseAddr("127.1.1.2") {
		t.Errorf("source 251: %s", src)
	}
	if src := source(netip.MustParseAddrPort("[::1]:853"), 1, 10); src.IsValid() {
		t.Errorf("source on IPv6: %s", src)
	}
}
