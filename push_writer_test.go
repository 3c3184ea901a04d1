package llq

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/miekg/dns"
)

// TestOutQueueEmptyWakes queues records while the writer also wakes with
// nothing to write (a session kicks its writer after every message it
// handles). Every record must reach the client once and intact: a writer
// that handed its spare buffer to the queue twice encoded records the
// engine was appending into the same array, and cleared them.
func TestOutQueueEmptyWakes(t *testing.T) {
	srv, cli := net.Pipe()
	defer cli.Close()
	var q outQueue
	q.init(newListenerMetrics(t.Name()))
	q.setConn(srv, 0)

	const n = 5000
	go func() {
		for i := range n {
			rr := &dns.A{Hdr: dns.RR_Header{Name: "n.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: uint32(i + 1)}, A: net.IPv4(192, 0, 2, 1)}
			q.record(rr, true)
			if i%10 != 9 {
				continue
			}
			q.kick()
			// Once the writer has taken the burst, a wake that finds
			// nothing, while the writer may still be writing the burst.
			for {
				q.mu.Lock()
				empty := len(q.items) == 0
				q.mu.Unlock()
				if empty {
					break
				}
				runtime.Gosched()
			}
			q.kick()
		}
		q.kick()
	}()
	seen := make([]bool, n)
	got := 0
	var buf []byte
	for got < n {
		msg, err := dso.ReadMessage(cli, buf, dso.MaxMessageLen)
		if err != nil {
			t.Fatalf("after %d records: %v", got, err)
		}
		m, err := dso.Parse(msg)
		if err != nil {
			t.Fatal(err)
		}
		p, ok := m.Primary()
		if !ok || p.Type != dso.TypePush {
			t.Fatalf("message with primary TLV %v, want PUSH", p.Type)
		}
		rrs, err := dso.ParsePush(m, p, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, rr := range rrs {
			i := int(rr.Header().Ttl) - 1
			if i < 0 || i >= n || seen[i] {
				t.Fatalf("record %d pushed twice or out of range", i)
			}
			seen[i] = true
			got++
		}
		buf = msg[:0]
	}
	q.stop()
	srv.Close()
}

// TestOutQueueWriterOnlyWhileBusy: the writer goroutine runs while there
// is output and ends when the queue is empty, so that an idle session
// holds no goroutine for it; output queued later starts it again, and stop
// ends the queue whether or not a writer runs.
func TestOutQueueWriterOnlyWhileBusy(t *testing.T) {
	srv, cli := net.Pipe()
	defer cli.Close()
	var q outQueue
	q.init(newListenerMetrics(t.Name()))
	q.keepalive(0, dso.Keepalive{Inactivity: 1000, Interval: 10000}) // queued before the connection
	q.setConn(srv, 0)
	q.kick()
	idle := func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return !q.running
	}
	for i := range 3 {
		if _, err := dso.ReadMessage(cli, nil, dso.MaxMessageLen); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		eventually(t, "writer gone", idle, 10*time.Second)
		q.response(uint16(i+1), dns.RcodeSuccess, 0)
		q.kick()
	}
	go func() {
		dso.ReadMessage(cli, nil, dso.MaxMessageLen) // the last response
	}()
	q.stop()
	select {
	case <-q.done:
	default:
		t.Fatal("stop returned with the queue not ended")
	}
	srv.Close()
}
