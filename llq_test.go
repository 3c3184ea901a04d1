package llq

import (
	"context"
	"testing"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
	ot "github.com/opentracing/opentracing-go"
	"github.com/opentracing/opentracing-go/mocktracer"
)

// namedHandler answers every query and remembers the writer it was given.
type namedHandler struct{ got dns.ResponseWriter }

func (h *namedHandler) Name() string { return "cache" }

func (h *namedHandler) ServeDNS(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	h.got = w
	m := new(dns.Msg)
	m.SetReply(r)
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

// TestNextAsNextOrFailure: handing a query on, llq leaves exactly the
// traces plugin.NextOrFailure leaves. The prometheus plugin's recorder
// learns the next plugin's name, a trace gets the next plugin's span, and
// any other writer reaches the next plugin as it is.
func TestNextAsNextOrFailure(t *testing.T) {
	next := &namedHandler{}
	l := &LLQ{Next: next, cfg: defaultConfig()}
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)

	rec := metrics.NewRecorder(&test.ResponseWriter{})
	if _, err := l.ServeDNS(context.Background(), rec, q.Copy()); err != nil {
		t.Fatal(err)
	}
	if rec.Plugin != "cache" {
		t.Errorf("the prometheus recorder names %q as the answering plugin, want cache", rec.Plugin)
	}

	w := &test.ResponseWriter{}
	l.ServeDNS(context.Background(), w, q.Copy())
	if next.got != dns.ResponseWriter(w) {
		t.Errorf("the next plugin got %T, not the writer llq was given", next.got)
	}

	tracer := mocktracer.New()
	span := tracer.StartSpan("parent")
	l.ServeDNS(ot.ContextWithSpan(context.Background(), span), w, q.Copy())
	span.Finish()
	var names []string
	for _, s := range tracer.FinishedSpans() {
		names = append(names, s.OperationName)
	}
	if len(names) != 2 || names[0] != "cache" {
		t.Errorf("finished spans %v, want the next plugin's and the parent", names)
	}

	l.Next = nil
	if rcode, err := l.ServeDNS(context.Background(), w, q.Copy()); rcode != dns.RcodeServerFailure || err == nil {
		t.Errorf("without a next plugin: rcode %d, error %v", rcode, err)
	}
}

var _ plugin.Handler = (*namedHandler)(nil)
