package client

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/miekg/dns"
)

// FuzzPushClient feeds the client arbitrary bytes as the server's side of a
// session, after a Keepalive and two SUBSCRIBEs it sent (IDs 1, 2 and 3).
// Whatever the bytes, the client must not panic or hang, must end the
// session when the stream ends, must end every subscription with it, and
// must hold no record outside a subscription's question.
func FuzzPushClient(f *testing.F) {
	for _, seed := range pushSeeds(f) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		clientEnd, serverEnd := net.Pipe()
		go io.Copy(io.Discard, serverEnd) // whatever the client sends
		c := newPushClient(clientEnd, netip.MustParseAddrPort("127.0.0.1:853"), PushOptions{EventBuffer: 4})
		c.opts.setDefaults()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		errc := make(chan error, 1)
		go func() { errc <- c.Ping(ctx) }() // ID 1
		subs := make(chan *PushSubscription, 2)
		for _, q := range []dns.Question{
			{Name: "a.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET},
			{Name: "b.example.", Qtype: dns.TypeANY, Qclass: dns.ClassINET},
		} {
			waitPending(t, c, len(subs)+1)
			go func() {
				s, _ := c.Subscribe(ctx, q)
				subs <- s
			}()
		}
		waitPending(t, c, 3)
		serverEnd.Write(stream)
		serverEnd.Close()
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("session did not end at the end of the stream")
		}
		<-errc
		if c.Err() == nil {
			t.Fatal("session ended without an error")
		}
		for range 2 {
			s := <-subs
			if s == nil {
				continue
			}
			if s.Err() == nil {
				t.Fatal("subscription outlived its session")
			}
			for _, rr := range s.Answers() {
				h := rr.Header()
				if !strings.EqualFold(h.Name, s.q.Name) || !s.matches(h.Rrtype, h.Class) {
					t.Fatalf("%v held by the subscription to %v", rr, s.q)
				}
			}
			for range s.Events() {
			}
		}
	})
}

// waitPending waits until the client has n requests outstanding, so that
// their IDs are 1, 2, 3 in that order.
func waitPending(t *testing.T, c *PushClient, n int) {
	for deadline := time.Now().Add(waitFor); ; {
		c.mu.Lock()
		got := len(c.pending)
		c.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests pending, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func pushSeeds(tb testing.TB) [][]byte {
	var b dso.Builder
	var stream []byte
	frame := func() { stream = append(stream, b.Frame()...) }
	b.Start(1, true, 0)
	b.Keepalive(dso.Keepalive{Inactivity: 15000, Interval: 3600000})
	frame()
	b.Start(2, true, 0)
	frame()
	b.Start(3, true, 0)
	frame()
	b.Start(0, false, 0)
	b.StartPush()
	for _, s := range []string{"a.example. 60 IN A 192.0.2.1", "b.example. 60 IN TXT \"x\"", "c.example. 60 IN A 192.0.2.3"} {
		rr, _ := dns.NewRR(s)
		b.AddRecord(rr)
	}
	b.AddRecord(dso.CollectiveRemove("b.example.", dns.TypeANY, dns.ClassINET))
	frame()
	full := append([]byte(nil), stream...)
	b.Start(0, false, dns.RcodeServerFailure)
	b.RetryDelay(60000)
	frame()
	refused := []byte(nil)
	b.Start(2, true, dns.RcodeNotAuth)
	b.RetryDelay(300000)
	refused = append(refused, b.Frame()...)
	b.Start(77, false, 0)
	b.TLV(0xF800, []byte{1})
	unknown := append([]byte(nil), b.Frame()...)
	trunc := binary.BigEndian.AppendUint16(nil, 100)
	return [][]byte{full, stream, refused, unknown, append(full, trunc...), nil}
}
