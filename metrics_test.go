package llq

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Every llq series carries the listener label, and two listeners on port 0
// get two values: the ports the kernel chose.
func TestMetricsListenerLabel(t *testing.T) {
	a := newTestEnv(t, nil)
	b := newTestEnv(t, nil)
	if a.e.metrics.name == b.e.metrics.name || a.e.metrics.name != a.e.Addr().String() {
		t.Fatalf("listener labels %q and %q for listeners on %v and %v", a.e.metrics.name, b.e.metrics.name, a.e.Addr(), b.e.Addr())
	}
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	families := 0
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "coredns_llq_") {
			continue
		}
		families++
		for _, m := range mf.GetMetric() {
			found := false
			for _, lp := range m.GetLabel() {
				found = found || lp.GetName() == listenerLabelName && lp.GetValue() != ""
			}
			if !found {
				t.Errorf("%s has a series without a listener: %v", mf.GetName(), m.GetLabel())
			}
		}
	}
	if families == 0 {
		t.Fatal("no llq metric registered")
	}
}

// A listener's gauges go when it closes; its counters stay.
func TestMetricsForgottenAtClose(t *testing.T) {
	cfg := defaultConfig()
	cfg.listen = "127.0.0.1:0"
	e, err := newEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	name := e.metrics.name
	e.metrics.refreshes.Inc()
	e.close()
	// DeleteLabelValues reports whether the series was there.
	if liveLLQs.DeleteLabelValues(name) || topicsGauge.DeleteLabelValues(name) || connsOpen.DeleteLabelValues(name) ||
		limitGauge.DeleteLabelValues(name, "max-llqs") {
		t.Error("a gauge of the closed listener is still exported")
	}
	if !refreshes.DeleteLabelValues(name) {
		t.Error("a counter of the closed listener is gone")
	}
}
