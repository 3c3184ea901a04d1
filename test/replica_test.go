package test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// resubscribe sets q up again on the first of servers that takes it, the
// way llq watch does after losing an LLQ: it backs off between rounds and
// gives up only on a refusal retrying cannot cure.
func resubscribe(ctx context.Context, servers []netip.AddrPort, q dns.Question) (*client.Client, *client.Subscription, error) {
	wait := 100 * time.Millisecond
	for {
		for _, srv := range servers {
			c, err := client.Dial(srv, client.Options{Lease: 2 * time.Second, RetryInterval: 100 * time.Millisecond})
			if err != nil {
				return nil, nil, err
			}
			sub, err := c.Subscribe(ctx, q)
			if err == nil {
				return c, sub, nil
			}
			c.Close()
			var e *client.Error
			if errors.As(err, &e) && (e.Code == wire.Static || e.Code == wire.FormatErr || e.Code == wire.BadVers) {
				return nil, nil, err
			}
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// TestReplicas: three CoreDNS instances serve one etcd; a subscriber on
// each sees every change. When one instance goes, its subscriber loses the
// LLQ at the next refresh, sets it up again on another instance, learns
// what changed meanwhile, and sees later changes.
func TestReplicas(t *testing.T) {
	es := startEtcd(t)
	es.put("/skydns/org/example/www", record("192.0.2.1"))
	var (
		replicas []*server
		addrs    []netip.AddrPort
		subs     []*client.Subscription
	)
	for range 3 {
		s := startEtcdDNS(t, es)
		replicas = append(replicas, s)
		addrs = append(addrs, s.llq)
		// A short lease: a subscriber notices a dead server at its first
		// refresh, after 80% of it.
		c := dial(t, s.llq, client.Options{Lease: 2 * time.Second})
		subs = append(subs, subscribe(t, c, "www.example.org.", dns.TypeA))
	}

	es.put("/skydns/org/example/www", record("192.0.2.2"))
	for _, sub := range subs {
		converge(t, sub, rrSetOf(t, "www IN A 192.0.2.2"))
	}

	// The first instance goes away.
	lost := subs[0]
	before := lost.Answers()
	replicas[0].stop()
	es.put("/skydns/org/example/www", record("192.0.2.3"))
	for _, sub := range subs[1:] {
		converge(t, sub, rrSetOf(t, "www IN A 192.0.2.3"))
	}
	select {
	case <-lost.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the subscription to the stopped instance did not end")
	}
	t.Logf("lost: %v", lost.Err())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, sub, err := resubscribe(ctx, addrs, lost.Question())
	if err != nil {
		t.Fatalf("setting the LLQ up again: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if c.Server() == addrs[0] {
		t.Fatalf("set up again on the stopped instance %s", addrs[0])
	}
	added, removed := client.Diff(before, sub.Answers())
	if !slices.Equal(rrSet(added), rrSetOf(t, "www IN A 192.0.2.3")) || !slices.Equal(rrSet(removed), rrSetOf(t, "www IN A 192.0.2.2")) {
		t.Errorf("changed while not subscribed: added %v removed %v", added, removed)
	}

	es.put("/skydns/org/example/www", record("192.0.2.4"))
	want := rrSetOf(t, "www IN A 192.0.2.4")
	converge(t, sub, want)
	for _, s := range subs[1:] {
		converge(t, s, want)
	}
}
