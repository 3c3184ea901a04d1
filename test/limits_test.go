package test

import (
	"context"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// SERV-FULL for each limit, with the retry-after the RFC puts in the lease.

// trySubscribe subscribes from a fresh client on local and returns the
// error, if any.
func trySubscribe(t *testing.T, s *server, local, name string) (*client.Client, *client.Subscription, error) {
	t.Helper()
	c := dial(t, s.llq, client.Options{LocalAddr: local})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := c.Subscribe(ctx, question(name, dns.TypeA))
	return c, sub, err
}

func servFull(t *testing.T, err error) *client.Error {
	t.Helper()
	e := llqError(t, err)
	if e.Code != wire.ServFull {
		t.Fatalf("got %v, want SERV-FULL", err)
	}
	if e.RetryAfter() <= 0 {
		t.Errorf("SERV-FULL without a retry-after in the lease: %v", e)
	}
	return e
}

func TestLimitMaxLLQs(t *testing.T) {
	s := startServer(t, llqOptions+"\n        max-llqs 2", wwwRecords...)
	rejected := counter(t, "limit_rejections_total", "limit", "max-llqs")

	c1, _, err := trySubscribe(t, s, "", "www.example.org.")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := trySubscribe(t, s, "", "www.example.org."); err != nil {
		t.Fatal(err)
	}
	_, _, err = trySubscribe(t, s, "", "other.example.org.")
	servFull(t, err)
	// Raw: the refusal comes with the challenge, before any state.
	r := newRaw(t, s.llq, "")
	reply := r.exchange(llqMsg(wwwA, wire.OpSetup, 0, 30))
	checkError(t, reply, dns.RcodeSuccess, wire.ServFull)
	if option(t, reply).LeaseLife == 0 {
		t.Error("SERV-FULL challenge without retry-after")
	}
	if rejected() < 2 {
		t.Errorf("limit_rejections_total{limit=max-llqs} grew by %v", rejected())
	}

	// A terminated LLQ makes room.
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := trySubscribe(t, s, "", "other.example.org."); err != nil {
		t.Errorf("after a termination: %v", err)
	}
}

func TestLimitMaxPerClient(t *testing.T) {
	s := startServer(t, llqOptions+"\n        max-llqs-per-client 1", wwwRecords...)
	rejected := counter(t, "limit_rejections_total", "limit", "max-llqs-per-client")

	if _, _, err := trySubscribe(t, s, "127.0.0.2:0", "www.example.org."); err != nil {
		t.Fatal(err)
	}
	// Another socket on the same address is the same client.
	_, _, err := trySubscribe(t, s, "127.0.0.2:0", "other.example.org.")
	servFull(t, err)
	// Another address is another client.
	if _, sub, err := trySubscribe(t, s, "127.0.0.3:0", "www.example.org."); err != nil {
		t.Fatalf("second client address: %v", err)
	} else if len(sub.Answers()) != 2 {
		t.Errorf("answers %v", sub.Answers())
	}
	if rejected() < 1 {
		t.Errorf("limit_rejections_total{limit=max-llqs-per-client} grew by %v", rejected())
	}
}

func TestLimitSetupRate(t *testing.T) {
	s := startServer(t, llqOptions+"\n        setup-rate 1 1", wwwRecords...)
	rejected := counter(t, "limit_rejections_total", "limit", "setup-rate")

	if _, _, err := trySubscribe(t, s, "127.0.0.2:0", "www.example.org."); err != nil {
		t.Fatal(err)
	}
	_, _, err := trySubscribe(t, s, "127.0.0.2:0", "other.example.org.")
	e := servFull(t, err)
	if e.RetryAfter() > 10*time.Second {
		t.Errorf("retry-after %v for a rate of one per second", e.RetryAfter())
	}
	if rejected() < 1 {
		t.Errorf("limit_rejections_total{limit=setup-rate} grew by %v", rejected())
	}

	// Other addresses have budgets of their own. (The limiter hashes
	// addresses into buckets, so one other address may share ours; two
	// both sharing it is a one-in-millions chance.)
	_, _, err3 := trySubscribe(t, s, "127.0.0.3:0", "www.example.org.")
	_, _, err4 := trySubscribe(t, s, "127.0.0.4:0", "www.example.org.")
	if err3 != nil && err4 != nil {
		t.Errorf("other addresses refused: %v; %v", err3, err4)
	}

	// Waiting as told is enough.
	time.Sleep(e.RetryAfter())
	if _, _, err := trySubscribe(t, s, "127.0.0.2:0", "other.example.org."); err != nil {
		t.Errorf("after waiting the retry-after: %v", err)
	}
}
