package test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	ctest "github.com/coredns/coredns/test"
	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
)

// startForwarder starts a second CoreDNS whose example.org block runs llq
// in front of forward to upstream (host:port), without cache, polling every
// 50 ms, and returns its LLQ listener.
func startForwarder(t *testing.T, upstream string) netip.AddrPort {
	t.Helper()
	port := freePort(t)
	corefile := fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1
    llq {
        listen 127.0.0.1:%d
        lease 2 60
        retransmit 200ms 3
        poll 50ms
    }
    forward . %s
}
`, port, upstream)
	inst, _, _, err := ctest.CoreDNSServerAndPorts(corefile)
	if err != nil {
		t.Fatalf("starting the forwarder: %v\n%s", err, corefile)
	}
	t.Cleanup(func() { inst.ShutdownCallbacks(); inst.Stop() })
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
}

// TestForwardLargeAnswerNoSpuriousEvents: through forward, an answer over
// 512 bytes (40 A records, shuffled by loadbalance upstream) is the whole
// answer in the ACK, and many unrelated changes upstream send its
// subscriber nothing: a re-resolution cut short by truncation is no news.
func TestForwardLargeAnswerNoSpuriousEvents(t *testing.T) {
	var big []string
	for i := range 40 {
		big = append(big, fmt.Sprintf("big IN A 192.0.2.%d", i+1))
	}
	up := startServerWith(t, config{plugins: "loadbalance", noCache: true}, append(slices.Clone(big), `marker IN TXT "v0"`)...)
	if r := up.query("big.example.org.", dns.TypeA); r.Len() <= 512 {
		t.Fatalf("the answer is %d bytes, want over 512", r.Len())
	}
	llq := startForwarder(t, up.dns)

	log := &eventLog{}
	c := dial(t, llq, client.Options{UDPSize: 4096, OnPacket: log.hook})
	sub := subscribe(t, c, "big.example.org.", dns.TypeA)
	marker := subscribe(t, c, "marker.example.org.", dns.TypeTXT)
	if got, want := rrSet(sub.Answers()), rrSetOf(t, big...); !slices.Equal(got, want) {
		t.Fatalf("ACK carries %d records, want the %d of the answer", len(got), len(want))
	}
	resolved := counter(t, "resolutions_total", "trigger", "poll")

	for i := range 12 {
		unrelated := []string{fmt.Sprintf("other%d IN A 198.51.100.%d", i, i+1), fmt.Sprintf("other%d IN TXT \"%d\"", i, i)}
		barrier(t, up, marker, append(slices.Clone(big), unrelated...), fmt.Sprintf("v%d", i+1))
	}
	barrier(t, up, marker, big, "end")
	if resolved() < 24 {
		t.Fatalf("only %v poll re-resolutions", resolved())
	}
	if evs := log.of(sub.ID()); len(evs) != 0 {
		t.Fatalf("%d spurious events, the first:\n%v", len(evs), evs[0].msg)
	}
	if got, want := rrSet(sub.Answers()), rrSetOf(t, big...); !slices.Equal(got, want) {
		t.Fatalf("subscriber holds %d records, want %d", len(got), len(want))
	}
}
