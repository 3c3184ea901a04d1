package llq

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// An event port named over TCP has not asked for anything: it gets at most
// one packet per setup, never a retransmission, until it acknowledges; a
// port that has acknowledged gets every event and retransmission.
func TestUnprovenEventPortBounded(t *testing.T) {
	const n = 20
	var names, before, after []string
	for i := range n {
		names = append(names, fmt.Sprintf("n%d.example.org.", i))
		before = append(before, fmt.Sprintf("n%d IN A 192.0.2.1", i))
		after = append(after, fmt.Sprintf("n%d IN A 192.0.2.2", i))
	}
	env := newTestEnv(t, func(c *config) { c.retransmit, c.attempts = 50*time.Millisecond, 3 })
	swapZone(t, env.zone, withRecords(before...))
	victim := newUDPClient(t) // never sends a thing
	ids := make(map[uint64]bool)
	for i, name := range names {
		o := setupOpt(0, 3600)
		o.Error = victim.addr.Port()
		src := netip.AddrPortFrom(victim.addr.Addr(), uint16(40000+i))
		r := env.exchange(t, llqMsg(1, 1232, []dns.Question{question(name, dns.TypeA)}, o), src, true)
		ids[only(t, r).Id] = true
	}
	// A proven client that never acknowledges: once it has been dropped,
	// every retransmission of this change is behind us.
	marker := newUDPClient(t)
	env.establish(t, marker.addr, 1232, question(names[0], dns.TypeA), 3600)
	dropped := track(t, env.e.metrics.droppedSilent)
	retrans := track(t, env.e.metrics.retransmissions)

	swapZone(t, env.zone, withRecords(after...))
	env.changed()
	eventually(t, "the silent proven client to be dropped", func() bool { return dropped.moved(t) >= 1 }, wait)
	var first *dns.Msg
	got := 0
	for {
		m, ok := victim.quiet(100 * time.Millisecond)
		if ok {
			break
		}
		wantEvent(t, m, m.Question[0], only(t, m).Id)
		if first == nil {
			first = m
		}
		got++
	}
	if got != n {
		t.Fatalf("the unproven port got %d packets for %d setups, want one each", got, n)
	}
	if r := retrans.moved(t); r != 2 {
		t.Fatalf("%v retransmissions, want only the proven client's 2", r)
	}

	// One LLQ's port proves itself by acknowledging: it alone hears of the
	// next change, and is retransmitted to like any.
	env.ack(t, victim, first)
	proven := only(t, first).Id
	swapZone(t, env.zone, withRecords(before...))
	env.changed()
	for range 2 { // the event and its retransmission
		ev, _ := victim.read(t, wait)
		if id := only(t, ev).Id; id != proven {
			t.Fatalf("LLQ %x, whose port never acknowledged, got a second packet", id)
		}
	}
}
