package llq

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/file"
	"github.com/miekg/dns"
)

// flakyHandler answers from a file zone, or fails the way a backend behind
// forward can: a truncated answer over UDP, SERVFAIL, or no answer at all.
type flakyHandler struct {
	f    file.File
	mu   sync.Mutex
	mode string // "", "tc-udp", "tc", "servfail", "silent"
	seen []*dns.Msg
}

func (h *flakyHandler) Name() string { return "flaky" }

func (h *flakyHandler) set(mode string) { h.mu.Lock(); h.mode = mode; h.mu.Unlock() }

func (h *flakyHandler) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	h.mu.Lock()
	mode := h.mode
	h.seen = append(h.seen, r.Copy())
	h.mu.Unlock()
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	switch {
	case mode == "tc" || mode == "tc-udp" && udp:
		m := new(dns.Msg)
		m.SetReply(r)
		m.Truncated = true
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	case mode == "servfail":
		return dns.RcodeServerFailure, nil
	case mode == "silent":
		return dns.RcodeSuccess, nil
	}
	return h.f.ServeDNS(ctx, w, r)
}

// A truncated answer is asked again over TCP, with a large EDNS0 buffer
// both times: an answer cut to fit 512 bytes is not the answer.
func TestResolveTruncatedRetriesOverTCP(t *testing.T) {
	h := &flakyHandler{f: file.File{Zones: fileZones(parseZone(t, zoneData))}, mode: "tc-udp"}
	rrs, ok := resolve(h, qWWW, newUDPClient(t).addr)
	if !ok {
		t.Fatal("a truncated UDP answer with a full TCP one failed")
	}
	sameRRs(t, rrs, "www.example.org. 3600 IN A 192.0.2.1", "www.example.org. 3600 IN A 192.0.2.2")
	if len(h.seen) != 2 {
		t.Fatalf("asked %d times, want UDP then TCP", len(h.seen))
	}
	for _, m := range h.seen {
		if o := m.IsEdns0(); o == nil || o.UDPSize() < 4096 {
			t.Fatalf("re-resolution without a large EDNS0 buffer: %v", m)
		}
	}
	h.set("tc")
	if _, ok := resolve(h, qWWW, newUDPClient(t).addr); ok {
		t.Fatal("an answer truncated even over TCP counted as an answer")
	}
}

// A failed re-resolution (truncated, SERVFAIL, silent) is no news: no
// event, the answers stay, and the topic is asked again on its own until
// the backend answers.
func TestFailedResolutionIsNoRemoval(t *testing.T) {
	env := newTestEnv(t, nil)
	h := &flakyHandler{f: file.File{Zones: fileZones(env.zone)}}
	env.e.unregister(env.owner)
	env.e.register(&backend{owner: env.owner, zones: []string{testZone}, handler: h})
	c := newUDPClient(t)
	id, _ := env.establish(t, c.addr, 1232, qWWW, 3600)

	for _, mode := range []string{"tc", "servfail", "silent"} {
		h.set(mode)
		failed := track(t, env.e.metrics.resolveFailures)
		env.changed()
		eventually(t, mode+" re-resolution", func() bool { return failed.moved(t) >= 1 }, wait)
		if m, ok := c.quiet(100 * time.Millisecond); !ok {
			t.Fatalf("%s re-resolution sent %v", mode, m)
		}
		env.e.mu.Lock()
		n := len(env.e.llq.subs[id].topic.answers)
		env.e.mu.Unlock()
		if n != 2 {
			t.Fatalf("%s re-resolution left %d answers, want the 2 there were", mode, n)
		}
	}

	// The backend recovers with a change: the topic's own retry finds it,
	// without another trigger.
	swapZone(t, env.zone, eventZone)
	h.set("")
	ev, _ := c.read(t, 5*time.Second)
	wantEvent(t, ev, qWWW, id)
	sameRRs(t, ev.Answer, "www.example.org. 3600 IN A 192.0.2.3", "www.example.org. 4294967295 IN A 192.0.2.2")
}
