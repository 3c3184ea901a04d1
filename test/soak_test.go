package test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/llqdns/llq/soak"
	"github.com/prometheus/client_golang/prometheus"
)

// TestSoakShort is CI's version of bench/soak.sh: clients come and go, the
// zone changes, 5 % of the datagrams get lost each way; at the end every
// view equals the server's answers, no LLQ is left behind and no goroutine
// leaked.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("soak")
	}
	// No cache: the soak's truth is a plain query, which must show the zone
	// as it is now.
	s := startServerWith(t, config{noCache: true, options: `listen 127.0.0.1:0
        lease 5 10
        retransmit 300ms 6
        max-llqs-per-client 0
        setup-rate 0`})
	before := runtime.NumGoroutine()
	cfg := soak.Config{
		Server: s.llq, DNS: s.dns, Zone: s.zoneFile, Origin: "example.org.",
		Names: 50, Clients: 40, PerClient: 5, Addrs: 20,
		Duration: 15 * time.Second, ChangeEvery: 200 * time.Millisecond, Churn: 200 * time.Millisecond,
		Loss: 0.05, Lease: 5 * time.Second, Retry: 300 * time.Millisecond, Settle: 30 * time.Second,
		LiveLLQs: liveLLQs,
	}
	rep, err := soak.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range rep.Diverged {
		t.Errorf("diverged: %s", d)
	}
	if rep.Subscriptions == 0 || rep.Changes == 0 || rep.Events == 0 || rep.Leaves == 0 {
		t.Errorf("the soak did too little: %+v", rep)
	}
	if rep.LeakedLLQs != 0 {
		t.Errorf("%d LLQs left on the server", rep.LeakedLLQs)
	}
	eventually(t, "goroutines back to where they were", func() bool { return runtime.NumGoroutine() <= before+2 })
	t.Logf("changes %d, joins %d, events %d, lost %d, setup failures %d, %d views converged",
		rep.Changes, rep.Joins, rep.Events, rep.Lost, rep.SetupFailures, rep.Converged)
}

// liveLLQs reads coredns_llq_subscriptions from the process's registry.
func liveLLQs() (int, error) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == "coredns_llq_subscriptions" {
			return int(mf.GetMetric()[0].GetGauge().GetValue()), nil
		}
	}
	return 0, nil
}
