package test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Leases: refresh, terminate, expiry, and surviving a Corefile reload.

func TestRefreshClampsLease(t *testing.T) {
	s := startServer(t, "", wwwRecords...) // lease 2 60
	refreshes := counter(t, "refreshes_total")
	c := dial(t, s.llq, client.Options{Lease: time.Hour})
	sub := subscribe(t, c, "www.example.org.", dns.TypeA)
	if sub.Lease() != 60*time.Second {
		t.Errorf("setup asking 1h granted %v, want the maximum 60s", sub.Lease())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct{ ask, want time.Duration }{
		{time.Second, 2 * time.Second},
		{time.Hour, 60 * time.Second},
		{30 * time.Second, 30 * time.Second},
	} {
		got, err := sub.Refresh(ctx, tc.ask)
		if err != nil {
			t.Fatalf("refresh %v: %v", tc.ask, err)
		}
		if got != tc.want || sub.Lease() != tc.want {
			t.Errorf("refresh asking %v granted %v (Lease() %v), want %v", tc.ask, got, sub.Lease(), tc.want)
		}
	}
	if n := refreshes(); n < 3 {
		t.Errorf("refreshes_total grew by %v, want 3", n)
	}

	// By hand: the reply is a REFRESH with no answers.
	r := newRaw(t, s.llq, "")
	id, _ := r.establish(wwwA, 1)
	reply := r.exchange(llqMsg(wwwA, wire.OpRefresh, id, 1))
	if len(reply.Answer) != 0 {
		t.Errorf("refresh reply carries answers:\n%v", reply)
	}
	if o := option(t, reply); o.Opcode != wire.OpRefresh || o.Error != wire.NoError || o.Id != id || o.LeaseLife != 2 {
		t.Errorf("refresh reply %v, want REFRESH NO-ERROR lease 2", o)
	}
}

func TestTerminate(t *testing.T) {
	s := startServer(t, "", wwwRecords...)
	terminations := counter(t, "terminations_total")
	c := dial(t, s.llq, client.Options{})
	sub := subscribe(t, c, "www.example.org.", dns.TypeA)
	r := newRaw(t, s.llq, "")

	// While it lives, anyone at the client's address may refresh it.
	if o := r.refresh(wwwA, sub.ID(), 30); o.Error != wire.NoError {
		t.Fatalf("refresh of a live LLQ: %v", o)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if !errors.Is(sub.Err(), client.ErrClosed) {
		t.Errorf("Err after Close: %v", sub.Err())
	}
	if _, ok := <-sub.Events(); ok {
		t.Error("Events still open after Close")
	}
	if o := r.refresh(wwwA, sub.ID(), 30); o.Error != wire.NoSuchLLQ {
		t.Errorf("refresh after terminate: %v, want NO-SUCH-LLQ", o)
	}
	if n := terminations(); n != 1 {
		t.Errorf("terminations_total grew by %v, want 1", n)
	}

	// Terminating by hand: the reply is a REFRESH with lease 0.
	id, _ := r.establish(wwwA, 30)
	o := r.refresh(wwwA, id, 0)
	if o.Error != wire.NoError || o.Opcode != wire.OpRefresh || o.LeaseLife != 0 || o.Id != id {
		t.Errorf("terminate reply %v", o)
	}
	if o := r.refresh(wwwA, id, 30); o.Error != wire.NoSuchLLQ {
		t.Errorf("refresh after a raw terminate: %v", o)
	}
}

// TestExpiry: an LLQ nobody refreshes disappears when its lease runs out,
// while the Go client, refreshing on its own, keeps an older one alive.
func TestExpiry(t *testing.T) {
	s := startServer(t, "", wwwRecords...) // lease 2 60
	expirations := counter(t, "expirations_total")
	refreshes := counter(t, "refreshes_total")

	// Refreshing at half the lease leaves a second of slack on a loaded
	// machine.
	c := dial(t, s.llq, client.Options{Lease: 2 * time.Second, RefreshAt: 0.5})
	kept := subscribe(t, c, "www.example.org.", dns.TypeA)

	r := newRaw(t, s.llq, "")
	id, ack := r.establish(wwwA, 2)
	if o := option(t, ack); o.LeaseLife != 2 {
		t.Fatalf("granted %d, want 2", o.LeaseLife)
	}
	eventually(t, "the unrefreshed LLQ to expire", func() bool { return expirations() >= 1 })
	if o := r.refresh(wwwA, id, 30); o.Error != wire.NoSuchLLQ {
		t.Errorf("refresh after expiry: %v, want NO-SUCH-LLQ", o)
	}

	// The client's LLQ is older, so without its automatic refreshes it
	// would have expired first.
	if refreshes() < 1 {
		t.Error("the client did not refresh on its own")
	}
	if err := kept.Err(); err != nil {
		t.Fatalf("client's LLQ lost: %v", err)
	}
	s.setRecords("www IN A 192.0.2.1")
	converge(t, kept, rrSetOf(t, "www IN A 192.0.2.1"))
	if n := expirations(); n != 1 {
		t.Errorf("expirations_total grew by %v, want 1", n)
	}
}

// TestReloadKeepsLLQs: a Corefile reload keeps the listener and every live
// LLQ; the new settings apply to them; the final shutdown frees the port.
func TestReloadKeepsLLQs(t *testing.T) {
	port := freePort(t)
	listener := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	cfg := config{
		options: fmt.Sprintf("listen %s\n        lease 2 60\n        retransmit 200ms 3", listener),
		llq:     listener,
	}
	s := startServerWith(t, cfg, "www IN A 192.0.2.1")
	c := dial(t, s.llq, client.Options{Lease: 30 * time.Second})
	sub := subscribe(t, c, "www.example.org.", dns.TypeA)

	cfg.options = fmt.Sprintf("listen %s\n        lease 3 50\n        retransmit 200ms 3", listener)
	s.restart(s.corefileWith(cfg))

	// Discovery still points at the same listener.
	if got := s.discover(); got != listener {
		t.Errorf("after reload discovery says %v, want %v", got, listener)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := sub.Refresh(ctx, time.Hour)
	if err != nil {
		t.Fatalf("refresh after reload: %v", err)
	}
	if got != 50*time.Second {
		t.Errorf("refresh after reload granted %v, want the new maximum 50s", got)
	}
	if got, err := sub.Refresh(ctx, time.Second); err != nil || got != 3*time.Second {
		t.Errorf("refresh after reload asking 1s: %v %v, want the new minimum 3s", got, err)
	}

	// Changes after the reload, seen by the new file plugin, still reach
	// the old LLQ.
	s.setRecords("www IN A 192.0.2.1", "www IN A 192.0.2.2")
	converge(t, sub, rrSetOf(t, "www IN A 192.0.2.1", "www IN A 192.0.2.2"))

	// And new LLQs work alongside.
	c2 := dial(t, s.llq, client.Options{})
	sub2 := subscribe(t, c2, "www.example.org.", dns.TypeA)
	s.setRecords("www IN A 192.0.2.3")
	converge(t, sub, rrSetOf(t, "www IN A 192.0.2.3"))
	converge(t, sub2, rrSetOf(t, "www IN A 192.0.2.3"))

	c.Close()
	c2.Close()
	s.stop()
	if !portFree(port) {
		t.Errorf("LLQ port %d still bound after the final shutdown", port)
	}
}
