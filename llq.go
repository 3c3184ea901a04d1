// Package llq is a CoreDNS plugin that serves DNS Long-Lived Queries
// (RFC 8764): clients subscribe to a question and are sent the changes to its
// answer as they happen.
//
// The files read in layers, from the bottom up:
//   - wire/: wire formats miekg/dns lacks.
//   - The engine (engine.go, topics.go, changes.go, answers.go, resolver.go,
//     scheduler.go): topics, one per distinct question, with their last
//     answers; re-resolution on change; adds and removes handed to the
//     transports. It never sees a packet.
//   - Transports, peers over the engine, each with its own framing,
//     batching, acknowledgement and retry: llq_*.go is LLQ over UDP and
//     TCP (challenge, leases, events, retransmission).
//   - Triggers (watchers.go, probes.go, etcd.go, kubernetes.go, hosts.go):
//     they only say which names may have changed.
//   - The CoreDNS face (llq.go, setup.go, discovery.go, registry.go,
//     handoff.go).
package llq

import (
	"context"
	"sync"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
	ot "github.com/opentracing/opentracing-go"
)

// LLQ is the plugin handler on CoreDNS's own port. The LLQ exchange itself
// runs on the engine's listener; here llq only answers discovery queries and
// makes LLQ queries look like ordinary ones.
type LLQ struct {
	Next  plugin.Handler
	Zones []string
	cfg   *config

	// Set up once by setup.go, before any question arrives.
	addr      string   // the CoreDNS server's address, see serverAddr
	block     string   // see blockID
	perClient []string // plugins that make answers depend on the client

	mu    sync.RWMutex
	e     *Engine
	below plugin.Handler    // the first plugin after cache, see setup.go
	srv   *dnsserver.Server // the CoreDNS server of the block, once started
}

func (l *LLQ) Name() string { return "llq" }

func (l *LLQ) engine() *Engine {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.e
}

func (l *LLQ) server() *dnsserver.Server {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.srv
}

func (l *LLQ) setServer(srv *dnsserver.Server) {
	l.mu.Lock()
	l.srv = srv
	l.mu.Unlock()
}

func (l *LLQ) belowHandler() plugin.Handler {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.below
}

func (l *LLQ) setEngine(e *Engine) {
	l.mu.Lock()
	l.e = e
	l.mu.Unlock()
}

// ServeDNS implements plugin.Handler.
func (l *LLQ) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if len(r.Question) == 1 && len(r.Question[0].Name) > 0 {
		// Every name llq synthesises starts with "_" or "l".
		switch r.Question[0].Name[0] {
		case '_', 'l', 'L':
			if rcode, err, done := l.discovery(ctx, w, r); done {
				return rcode, err
			}
		}
	}
	if rs := resolvingFrom(ctx); rs != nil {
		return l.skipCache(ctx, w, r, rs)
	}
	stripLLQ(r)
	if !l.cfg.handoff {
		return l.next(ctx, w, r)
	}
	return l.handOn(ctx, w, r)
}

// next hands an ordinary query on. plugin.NextOrFailure would wrap w to
// tell the prometheus plugin's recorder which plugin answered, and start a
// trace span: the wrapper only records anything when w is that recorder
// itself, and the span only exists when tracing. Otherwise llq hands the
// query on as it came, which saves every ordinary query an allocation and
// two stack frames (see BENCHMARKS.md, ordinary-query throughput).
func (l *LLQ) next(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if _, tracked := w.(plugin.PluginTracker); tracked || l.Next == nil || ot.SpanFromContext(ctx) != nil {
		return plugin.NextOrFailure(l.Name(), l.Next, ctx, w, r)
	}
	return l.Next.ServeDNS(ctx, w, r)
}

// stripLLQ removes LLQ options from a query that reached CoreDNS's port: the
// client gets the answer a server without LLQ gives, so it falls back to
// polling cleanly, and no LLQ option travels on to cache or forward. The
// OPT record is replaced, not edited: others may hold the original.
func stripLLQ(r *dns.Msg) {
	opt := r.IsEdns0()
	if opt == nil || len(opt.Option) == 0 {
		return
	}
	has := false
	for _, o := range opt.Option {
		if o.Option() == dns.EDNS0LLQ {
			has = true
			break
		}
	}
	if !has {
		return
	}
	clean := &dns.OPT{Hdr: opt.Hdr}
	for _, o := range opt.Option {
		if o.Option() != dns.EDNS0LLQ {
			clean.Option = append(clean.Option, o)
		}
	}
	extra := make([]dns.RR, 0, len(r.Extra))
	for _, rr := range r.Extra {
		if rr == dns.RR(opt) {
			rr = clean
		}
		extra = append(extra, rr)
	}
	r.Extra = extra
}
