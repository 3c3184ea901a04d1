package test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
)

// TestMetricsPerListener: a CoreDNS process with two server blocks, each
// with its own llq listener, exports one series per listener on its
// /metrics endpoint, labelled listener with the address the Corefile
// gives, so an operator tells the blocks apart: an LLQ on one counts on
// that one alone, and each listener's limits are its own.
func TestMetricsPerListener(t *testing.T) {
	var other uint16 // the second block's llq listener
	p := startCoreDNSProcess(t, "two blocks", func(ports corednsPorts) string {
		for other = freePort(t); other == ports.dns || other == ports.llq || other == ports.metrics; other = freePort(t) {
		}
		block := func(zone, addr string, llq uint16, maxLLQs int) string {
			return fmt.Sprintf(`%s:%d {
    bind 127.0.0.1
    prometheus 127.0.0.1:%d
    llq {
        listen 127.0.0.1:%d
        max-llqs %d
    }
    hosts {
        %s www.%s
    }
}
`, zone, ports.dns, ports.metrics, llq, maxLLQs, addr, zone)
		}
		return block("a.example", "192.0.2.1", ports.llq, 100) + block("b.example", "192.0.2.2", other, 200)
	})
	a := fmt.Sprintf("127.0.0.1:%d", p.ports.llq)
	b := fmt.Sprintf("127.0.0.1:%d", other)
	b4 := netip.AddrPortFrom(p.llq.Addr(), other)
	for !answers(b4.String()) { // the first block's listener answered already
		if p.exited() {
			t.Fatalf("exited before the second LLQ port answered:\n%s", p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// want checks that the metric has the value given for each listener.
	// A gauge has a series per listener from the start; a counter's series
	// with labels of its own appears with its first count.
	want := func(what, name string, perListener map[string]float64, labels ...string) {
		t.Helper()
		mfs, err := p.scrape()
		if err != nil {
			t.Fatal(err)
		}
		got := byListener(mfs, name, labels...)
		for l, v := range perListener {
			g, ok := got[l]
			if g != v || !ok && !strings.HasSuffix(name, "_total") {
				t.Errorf("%s: coredns_llq_%s%v: listener %s has %v (present %v), want %v; all: %v", what, name, labels, l, g, ok, v, got)
			}
		}
	}
	want("at start", "subscriptions", map[string]float64{a: 0, b: 0})
	want("at start", "limit", map[string]float64{a: 100, b: 200}, "limit", "max-llqs")

	ca := dial(t, p.llq, client.Options{})
	subA := subscribe(t, ca, "www.a.example.", dns.TypeA)
	want("an LLQ on the first listener", "subscriptions", map[string]float64{a: 1, b: 0})
	want("an LLQ on the first listener", "setups_total", map[string]float64{a: 1, b: 0}, "result", "established")
	want("an LLQ on the first listener", "topics", map[string]float64{a: 1, b: 0})

	cb := dial(t, b4, client.Options{})
	subscribe(t, cb, "www.b.example.", dns.TypeA)
	want("one LLQ on each listener", "subscriptions", map[string]float64{a: 1, b: 1})

	if err := subA.Close(); err != nil {
		t.Fatalf("terminate: %v", err)
	}
	want("the first listener's LLQ terminated", "subscriptions", map[string]float64{a: 0, b: 1})
	want("the first listener's LLQ terminated", "terminations_total", map[string]float64{a: 1, b: 0})
}

// byListener returns, for the llq metric name (without "coredns_llq_"),
// the value of each listener's series whose labels include the given
// name/value pairs.
func byListener(mfs []*dto.MetricFamily, name string, labels ...string) map[string]float64 {
	got := make(map[string]float64)
	for _, mf := range mfs {
		if mf.GetName() != "coredns_llq_"+name {
			continue
		}
		for _, m := range mf.GetMetric() {
			listener, ok := "", true
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "listener" {
					listener = lp.GetValue()
				}
			}
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
				}
				ok = ok && found
			}
			if ok && listener != "" {
				got[listener] += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return got
}
