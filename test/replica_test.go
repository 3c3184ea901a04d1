package test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
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

// replicaCorefile is etcdCorefile for a replica in its own process: every
// port explicit on 127.0.0.1, and the prometheus plugin, through which the
// test learns that llq's etcd watch is up.
func replicaCorefile(endpoint string, p corednsPorts) string {
	llq := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p.llq)
	return strings.Replace(etcdCorefile(endpoint, llq), "example.org:0 {\n",
		fmt.Sprintf("example.org:%d {\n    prometheus 127.0.0.1:%d\n", p.dns, p.metrics), 1)
}

// replicaSub is a subscriber of the replicas test and where it is.
type replicaSub struct {
	replica int // index of the replica holding its LLQ
	sub     *client.Subscription
}

// TestReplicas: three CoreDNS processes serve one etcd; a subscriber on
// each sees every change. When a replica crashes (SIGKILL), its subscriber
// loses the LLQ at the next refresh, sets it up again on another replica,
// learns what changed meanwhile, and sees later changes; the same when a
// replica stops gracefully (SIGTERM).
func TestReplicas(t *testing.T) {
	es := startEtcd(t)
	www := func(ip string) []string {
		es.put("/skydns/org/example/www", record(ip))
		return rrSetOf(t, "www IN A "+ip)
	}
	www("192.0.2.1")

	var (
		replicas []*corednsProcess
		addrs    []netip.AddrPort
		subs     []*replicaSub
	)
	for i := range 3 {
		p := startCoreDNSProcess(t, fmt.Sprintf("replica %d", i), func(ports corednsPorts) string {
			return replicaCorefile(es.endpoint(), ports)
		})
		// Without a poll, a put before the watch is up would be missed.
		// The watch marks the zone once when it is created.
		eventuallyWithin(t, 30*time.Second, fmt.Sprintf("replica %d's etcd watch", i), func() bool {
			return p.metric("trigger_changes_total", "trigger", "etcd") >= 1
		})
		replicas = append(replicas, p)
		addrs = append(addrs, p.llq)
	}
	for i, p := range replicas {
		// A short lease: a subscriber notices a dead replica at its first
		// refresh, after 80% of it.
		c := dial(t, p.llq, client.Options{Lease: 2 * time.Second})
		subs = append(subs, &replicaSub{replica: i, sub: subscribe(t, c, "www.example.org.", dns.TypeA)})
	}

	want := www("192.0.2.2")
	for _, s := range subs {
		converge(t, s.sub, want)
	}

	dead := make([]bool, len(replicas))
	// failover takes replica victim down with down, changes the record
	// meanwhile, and checks that every subscriber ends up live on another
	// replica with the change, and sees the change after.
	failover := func(victim int, down func(), during, after string) {
		old := want
		var lost []*replicaSub
		var before [][]dns.RR
		for _, s := range subs {
			if s.replica == victim {
				lost = append(lost, s)
				before = append(before, s.sub.Answers())
			}
		}
		down()
		dead[victim] = true

		want = www(during)
		for _, s := range subs {
			if s.replica != victim {
				converge(t, s.sub, want)
			}
		}
		for i, s := range lost {
			select {
			case <-s.sub.Done():
			case <-time.After(30 * time.Second):
				t.Fatalf("the subscription to replica %d did not end", victim)
			}
			t.Logf("lost on replica %d: %v", victim, s.sub.Err())

			// Every replica, the dead ones too: the subscriber does not
			// know which are gone.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			c, sub, err := resubscribe(ctx, addrs, s.sub.Question())
			cancel()
			if err != nil {
				t.Fatalf("setting the LLQ up again: %v", err)
			}
			t.Cleanup(func() { c.Close() })
			s.replica = slices.Index(addrs, c.Server())
			if s.replica < 0 || dead[s.replica] {
				t.Fatalf("set up again on %s, a replica that is down", c.Server())
			}
			s.sub = sub
			added, removed := client.Diff(before[i], sub.Answers())
			if !slices.Equal(rrSet(added), want) || !slices.Equal(rrSet(removed), old) {
				t.Errorf("changed while not subscribed: added %v removed %v, want added %v removed %v", rrSet(added), rrSet(removed), want, old)
			}
		}

		want = www(after)
		for _, s := range subs {
			converge(t, s.sub, want)
		}
	}

	// A crash: no shutdown code runs.
	failover(0, func() { replicas[0].kill(t) }, "192.0.2.3", "192.0.2.4")
	// A graceful stop: replica 1 now holds its own subscriber's LLQ and the
	// one that moved from replica 0.
	failover(1, func() {
		if err := replicas[1].stop(); err != nil {
			t.Errorf("replica 1 after SIGTERM: %v", err)
		}
	}, "192.0.2.5", "192.0.2.6")
	if n := slices.IndexFunc(subs, func(s *replicaSub) bool { return s.replica != 2 }); n >= 0 {
		t.Errorf("subscriber %d is on replica %d, want all on replica 2", n, subs[n].replica)
	}
}
