package llq

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"testing"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
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

// panicking is a next plugin that panics, as a buggy one might.
type panicking struct{}

func (panicking) Name() string { return "buggy" }
func (panicking) ServeDNS(context.Context, dns.ResponseWriter, *dns.Msg) (int, error) {
	panic("buggy plugin")
}

// TestHandOnPanic: a panic below llq reaches the query's own goroutine,
// where CoreDNS's server recovers from it, whether the query ran on a
// worker or not; the worker survives it. Re-raised from a worker, it still
// says where it happened.
func TestHandOnPanic(t *testing.T) {
	l := &LLQ{Next: panicking{}, cfg: defaultConfig()}
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	onWorker := 0
	call := func() {
		defer func() {
			p := recover()
			if p == "buggy plugin" { // ran on the query's goroutine
				return
			}
			bp, ok := p.(*belowPanic)
			if !ok || bp.value != "buggy plugin" {
				t.Fatalf("recovered %v, want the plugin's panic", p)
			}
			if msg := bp.Error(); !strings.Contains(msg, "buggy plugin") || !strings.Contains(msg, "panicking.ServeDNS") {
				t.Fatalf("re-raised panic lost its origin:\n%s", msg)
			}
			onWorker++
		}()
		l.ServeDNS(context.Background(), &test.ResponseWriter{}, q.Copy())
		t.Fatal("no panic")
	}
	// The first starts a worker, a later one finds it waiting.
	eventually(t, "a query to run on a worker", func() bool { call(); return onWorker > 0 }, wait)
	for range 20 { // the worker survived
		call()
	}

	// With the handoff off, every query runs on its own goroutine.
	cfg := defaultConfig()
	cfg.handoff = false
	l = &LLQ{Next: panicking{}, cfg: cfg}
	for range 10 {
		func() {
			defer func() {
				if p := recover(); p != "buggy plugin" {
					t.Fatalf("handoff off: recovered %v, want the plugin's own panic", p)
				}
			}()
			l.ServeDNS(context.Background(), &test.ResponseWriter{}, q.Copy())
		}()
	}
}

// TestHandOnAllWorkersBlocked: with every worker held by a handler that
// blocks (a forward waiting on a dead upstream), further queries still run,
// on their own goroutines, and the workers stay bounded.
func TestHandOnAllWorkersBlocked(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan bool)
	next := plugin.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		if r.Question[0].Name == "block.example.org." {
			entered <- strings.Contains(string(debug.Stack()), "llq.worker(")
			<-release
		}
		m := new(dns.Msg)
		m.SetReply(r)
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	})
	l := &LLQ{Next: next, cfg: defaultConfig()}
	var done sync.WaitGroup
	defer done.Wait()
	defer close(release)
	// Each blocking query takes an idle worker or, finding none, runs on
	// its own goroutine and starts one more, up to the bound: until every
	// worker there can be is blocked.
	busy := 0
	for i := 0; busy < maxWorkers; i++ {
		if i > 10*maxWorkers {
			t.Fatalf("%d of %d workers busy after %d blocking queries", busy, workers.Load(), i)
		}
		done.Add(1)
		go func() {
			defer done.Done()
			q := new(dns.Msg)
			q.SetQuestion("block.example.org.", dns.TypeA)
			l.ServeDNS(context.Background(), &test.ResponseWriter{}, q)
		}()
		if <-entered {
			busy++
		}
	}
	if w := workers.Load(); w != maxWorkers {
		t.Fatalf("%d workers, the bound is %d", w, maxWorkers)
	}
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	if rcode, err := l.ServeDNS(context.Background(), rec, q); rcode != dns.RcodeSuccess || err != nil || rec.Msg == nil {
		t.Fatalf("query while every worker blocks: rcode %d, err %v", rcode, err)
	}
}

// TestHandOnConcurrent: queries in flight at once, more than there are
// workers, each get their own answer and nothing is mixed up.
func TestHandOnConcurrent(t *testing.T) {
	next := plugin.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{r.Question[0].Name}})
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	})
	l := &LLQ{Next: next, cfg: defaultConfig()}
	const n = 2 * maxWorkers
	errs := make(chan string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				name := fmt.Sprintf("q%d-%d.example.org.", i, j)
				q := new(dns.Msg)
				q.SetQuestion(name, dns.TypeTXT)
				rec := dnstest.NewRecorder(&test.ResponseWriter{})
				rcode, err := l.ServeDNS(context.Background(), rec, q)
				if rcode != dns.RcodeSuccess || err != nil || rec.Msg == nil || rec.Msg.Answer[0].(*dns.TXT).Txt[0] != name {
					errs <- fmt.Sprintf("%s: rcode %d err %v answer %v", name, rcode, err, rec.Msg)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if w := workers.Load(); w < 1 || w > maxWorkers {
		t.Errorf("%d workers, want 1 to %d", w, maxWorkers)
	}
}
