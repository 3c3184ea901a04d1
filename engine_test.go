package llq

import (
	"context"
	"net"
	"runtime"
	"sync"
	"testing"

	"github.com/coredns/coredns/plugin/file"
	"github.com/miekg/dns"
)

// gatedHandler answers from the file zone as it is when a query arrives and
// then, while closed, holds the answer back: a slow backend.
type gatedHandler struct {
	f       file.File
	mu      sync.Mutex
	gate    chan struct{} // nil: open
	entered chan struct{}
}

func (g *gatedHandler) Name() string { return "gated" }

func (g *gatedHandler) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	rec := &captureWriter{}
	rcode, err := g.f.ServeDNS(ctx, rec, r)
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		g.entered <- struct{}{}
		<-gate
	}
	if rec.msg != nil {
		w.WriteMsg(rec.msg)
	}
	return rcode, err
}

// A change that lands while a new topic's first resolution is in flight
// must still reach its subscriber: the change pass cannot see a topic that
// does not exist yet.
func TestChangeDuringFirstResolution(t *testing.T) {
	env := newTestEnv(t, nil)
	g := &gatedHandler{f: file.File{Zones: fileZones(env.zone)}, gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	env.e.unregister(env.owner)
	env.e.register(&backend{owner: env.owner, zones: []string{testZone}, handler: g})
	c := newUDPClient(t)

	ch := only(t, env.exchange(t, llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600)), c.addr, false))
	acked := make(chan *dns.Msg, 1)
	go func() {
		out := env.e.llq.serve(packMsg(t, llqMsg(2, 1232, []dns.Question{qWWW}, setupOpt(ch.Id, 3600))), c.addr, false)
		m := new(dns.Msg)
		m.Unpack(out)
		acked <- m
	}()
	<-g.entered // resolved the old data, not yet returned

	swapZone(t, env.zone, eventZone)
	env.changed()
	eventually(t, "the change pass", func() bool {
		env.e.mu.Lock()
		defer env.e.mu.Unlock()
		return len(env.e.changes.pending) == 0
	}, wait)
	g.mu.Lock()
	gate := g.gate
	g.gate = nil // later resolutions go straight through
	g.mu.Unlock()
	close(gate)

	ack := <-acked
	sameRRs(t, ack.Answer, wwwRecords...) // what the backend said then
	ev, _ := c.read(t, wait)
	wantEvent(t, ev, qWWW, ch.Id)
	sameRRs(t, ev.Answer, "www.example.org. 3600 IN A 192.0.2.3", "www.example.org. 4294967295 IN A 192.0.2.2")
	env.ack(t, c, ev)
}

// An engine that cannot bind its listener leaves nothing running behind.
func TestNewEngineListenFailure(t *testing.T) {
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	before := runtime.NumGoroutine()
	for _, listen := range []string{busy.LocalAddr().String(), "not an address", "127.0.0.1:99999"} {
		cfg := defaultConfig()
		cfg.listen = listen
		if e, err := newEngine(cfg); err == nil {
			e.close()
			t.Fatalf("listen %q: no error", listen)
		}
	}
	eventually(t, "the failed engines' goroutines to end", func() bool { return runtime.NumGoroutine() <= before }, wait)
}
