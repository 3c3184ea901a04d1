package client

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

func TestRefresh(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	s := establish(t, p, c, testQ, 50, 7200)

	type res struct {
		d   time.Duration
		err error
	}
	ch := make(chan res, 1)
	go func() {
		d, err := s.Refresh(context.Background(), 30*time.Minute)
		ch <- res{d, err}
	}()
	req := p.recv()
	if req.m.Response || len(req.m.Question) != 1 || req.m.Question[0] != testQ {
		t.Errorf("refresh is not a query for %v:\n%s", testQ, req.m)
	}
	wantLLQ(t, onlyLLQ(t, req.m), wire.OpRefresh, 0, 50, 1800)
	p.reply(req, llqReply(req.m, wire.OpRefresh, 0, 50, 900))
	r := <-ch
	if r.err != nil || r.d != 15*time.Minute {
		t.Fatalf("Refresh = %s, %v; want 15m0s", r.d, r.err)
	}
	if s.Lease() != 15*time.Minute {
		t.Errorf("Lease() = %s after refresh", s.Lease())
	}
}

func TestAutoRefresh(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{RefreshAt: 0.05, Lease: time.Hour})
	s := establish(t, p, c, testQ, 51, 2) // refresh due after 100ms

	for i := range 2 {
		req := p.recv()
		// The client asks for what it wanted, not for what it was granted.
		wantLLQ(t, onlyLLQ(t, req.m), wire.OpRefresh, 0, 51, 3600)
		p.reply(req, llqReply(req.m, wire.OpRefresh, 0, 51, uint32(2+i)))
	}
	if s.Err() != nil {
		t.Fatalf("subscription ended: %v", s.Err())
	}
}

func TestAutoRefreshNoSuchLLQ(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{RefreshAt: 0.05})
	s := establish(t, p, c, testQ, 52, 1)
	req := p.recv()
	p.reply(req, llqReply(req.m, wire.OpRefresh, wire.NoSuchLLQ, 52, 0))
	waitClosed(t, s)
	var e *Error
	if !errors.As(s.Err(), &e) || e.Code != wire.NoSuchLLQ || e.Op != wire.OpRefresh {
		t.Fatalf("Err() = %v, want NO-SUCH-LLQ", s.Err())
	}
	if c.sub(52) != nil {
		t.Error("lost subscription still routed")
	}
	if _, err := s.Refresh(context.Background(), time.Hour); err != s.Err() {
		t.Errorf("Refresh after loss = %v, want %v", err, s.Err())
	}
}

func TestAutoRefreshNoReply(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{RefreshAt: 0.05, RetryInterval: 10 * time.Millisecond})
	s := establish(t, p, c, testQ, 53, 1)
	waitClosed(t, s)
	var nr *NoReplyError
	if !errors.As(s.Err(), &nr) || nr.Step != "REFRESH" {
		t.Fatalf("Err() = %v, want a NoReplyError for REFRESH", s.Err())
	}
}

func TestRefreshIn(t *testing.T) {
	for _, tc := range []struct {
		lease, retry time.Duration
		refreshAt    float64
		want         time.Duration
	}{
		{2 * time.Hour, 2 * time.Second, 0.8, 96 * time.Minute}, // long: RefreshAt
		{100 * time.Second, 2 * time.Second, 0.8, 80 * time.Second},
		{60 * time.Second, 2 * time.Second, 0.8, 44 * time.Second}, // a second round starts at 58 s
		{30 * time.Second, 2 * time.Second, 0.8, 15 * time.Second}, // never before half
		{time.Hour, 2 * time.Second, 0.05, 3 * time.Minute},        // an earlier RefreshAt stays
	} {
		c := &Client{opts: Options{RetryInterval: tc.retry, RefreshAt: tc.refreshAt}}
		s := &Subscription{c: c}
		if got := s.refreshIn(tc.lease); got != tc.want {
			t.Errorf("lease %s, retry %s, RefreshAt %.2f: refresh after %s, want %s", tc.lease, tc.retry, tc.refreshAt, got, tc.want)
		}
	}
}

// TestAutoRefreshSecondRound: a refresh whose whole first round of
// transmissions is lost is tried again before the lease ends, and the LLQ
// survives. Lease 5 s and retry 300 ms: the refresh starts at 2.6 s, its
// first round ends at 4.7 s, and the second round's first request goes out
// then, 300 ms before the lease ends.
func TestAutoRefreshSecondRound(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{RetryInterval: 300 * time.Millisecond})
	s := establish(t, p, c, testQ, 55, 5)
	first := p.recv()
	wantLLQ(t, onlyLLQ(t, first.m), wire.OpRefresh, 0, 55, 7200)
	for range maxAttempts - 1 { // the round's retransmissions: lost too
		if pk := p.recvRaw(); string(pk.raw) != string(first.raw) {
			t.Fatalf("expected a retransmission of the refresh, got:\n%s", pk.m)
		}
	}
	second := p.recv() // a new round: a new DNS ID
	wantLLQ(t, onlyLLQ(t, second.m), wire.OpRefresh, 0, 55, 7200)
	p.reply(second, llqReply(second.m, wire.OpRefresh, 0, 55, 5))
	left := func() time.Duration {
		s.mu.Lock()
		defer s.mu.Unlock()
		return time.Until(s.expires)
	}
	deadline := time.Now().Add(waitFor)
	for left() < 4*time.Second { // renewed: 5 s from the reply
		if s.Err() != nil || time.Now().After(deadline) {
			t.Fatalf("refresh in the second round did not take: %s left, error %v", left(), s.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRefreshGrantedZero(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	s := establish(t, p, c, testQ, 54, 7200)
	ch := make(chan error, 1)
	go func() {
		_, err := s.Refresh(context.Background(), time.Hour)
		ch <- err
	}()
	req := p.recv()
	p.reply(req, llqReply(req.m, wire.OpRefresh, 0, 54, 0))
	if err := <-ch; !errors.Is(err, ErrProtocol) {
		t.Fatalf("Refresh = %v, want ErrProtocol", err)
	}
	waitClosed(t, s)
}

func TestClose(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	s := establish(t, p, c, testQ, 60, 7200)

	ch := make(chan error, 1)
	go func() { ch <- s.Close() }()
	req := p.recv()
	if req.m.Response || len(req.m.Question) != 1 || req.m.Question[0] != testQ {
		t.Errorf("terminate is not a query for %v:\n%s", testQ, req.m)
	}
	wantLLQ(t, onlyLLQ(t, req.m), wire.OpRefresh, 0, 60, 0)
	p.reply(req, llqReply(req.m, wire.OpRefresh, 0, 60, 0))
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	waitClosed(t, s)
	if s.Err() != ErrClosed {
		t.Errorf("Err() = %v, want ErrClosed", s.Err())
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestCloseNoReply(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{RetryInterval: 10 * time.Millisecond})
	s := establish(t, p, c, testQ, 61, 7200)
	var nr *NoReplyError
	if err := s.Close(); !errors.As(err, &nr) || nr.Step != "terminate" {
		t.Fatalf("Close = %v, want NoReplyError for terminate", err)
	}
	if s.Err() != ErrClosed {
		t.Errorf("Err() = %v, want ErrClosed", s.Err())
	}
}

func TestClientClose(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	q2 := dns.Question{Name: "two.example.org.", Qtype: dns.TypeAAAA, Qclass: dns.ClassINET}
	s1 := establish(t, p, c, testQ, 70, 7200)
	s2 := establish(t, p, c, q2, 71, 7200)

	ch := make(chan error, 1)
	go func() { ch <- c.Close() }()
	ids := map[uint64]bool{}
	for range 2 {
		req := p.recv()
		o := onlyLLQ(t, req.m)
		if o.Opcode != wire.OpRefresh || o.LeaseLife != 0 {
			t.Errorf("not a terminate: %s", o)
		}
		ids[o.Id] = true
		p.reply(req, llqReply(req.m, wire.OpRefresh, 0, o.Id, 0))
	}
	if !ids[70] || !ids[71] {
		t.Errorf("terminated %v, want 70 and 71", ids)
	}
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	waitClosed(t, s1)
	waitClosed(t, s2)
	if _, err := s1.Refresh(context.Background(), time.Hour); err != ErrClosed {
		t.Errorf("Refresh after Close = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}
