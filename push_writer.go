package llq

import (
	"net"
	"sync"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// outQueue is what waits to be written to a session: whole messages
// (responses, Keepalive, Retry Delay) and records for PUSH messages, in
// order. The writer builds the PUSH messages when it gets to them, so
// that everything ready goes in as few messages as fit (RFC 8765 section
// 6.3.1), and writes them in one go.
//
// The writer goroutine runs only while there is something to write: most
// sessions are idle most of the time, and a goroutine parked per session
// would cost each of them a stack (measured with llq bench push, about a
// sixth of a session's memory).
type outQueue struct {
	mu       sync.Mutex
	conn     net.Conn
	items    []outItem
	bytes    int  // roughly what items take on the wire
	max      int  // bytes allowed to wait; 0 = no limit
	final    bool // a Retry Delay is queued: nothing goes after it
	over     bool // dropped for queueing more than max
	stopping bool
	retryAt  time.Time // once the Retry Delay is out: when the client must have closed
	running  bool      // a writer goroutine is at work
	ended    bool      // no writer will run again: done is closed
	done     chan struct{}
	metrics  *listenerMetrics
}

type outItem struct {
	frame []byte // a whole message with its length prefix, or nil for a record
	rr    dns.RR
	add   bool
}

// writeTimeout bounds one write: a client whose TCP window stays shut that
// long is gone.
const writeTimeout = 30 * time.Second

func (q *outQueue) init(m *listenerMetrics) {
	q.metrics = m
	q.done = make(chan struct{})
}

// kick starts the writer when there is work for it and it is not running:
// output queued, or the queue stopping. Before setConn it waits.
func (q *outQueue) kick() {
	q.mu.Lock()
	q.kickLocked()
	q.mu.Unlock()
}

func (q *outQueue) kickLocked() {
	if !q.running && !q.ended && q.conn != nil && (len(q.items) > 0 || q.stopping) {
		q.running = true
		go q.write()
	}
}

// endLocked marks that no writer will run again.
func (q *outQueue) endLocked() {
	q.running = false
	if !q.ended {
		q.ended = true
		close(q.done)
	}
}

// push queues it unless a Retry Delay ended the session's output; past the
// byte limit, the queue is replaced by a Retry Delay SERVFAIL (the server
// is overloaded, for this client at least) and the session is dropped.
func (q *outQueue) push(it outItem, size int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.final {
		return
	}
	q.items = append(q.items, it)
	q.bytes += size
	if q.max > 0 && q.bytes > q.max {
		q.over = true
		q.items = q.items[:0]
		q.bytes = 0
		q.finalLocked(dns.RcodeServerFailure, dso.Millis(time.Second))
		q.metrics.retryDelays.WithLabelValues("slow-reader").Inc()
		if q.conn != nil {
			// Unblock a write the client is not reading and the read
			// waiting for it: the session ends within the grace period.
			grace := time.Now().Add(dso.RetryCloseGrace)
			q.conn.SetWriteDeadline(grace)
			q.conn.SetReadDeadline(grace)
		}
		q.kickLocked()
	}
}

func (q *outQueue) record(rr dns.RR, add bool) {
	q.push(outItem{rr: rr, add: add}, dns.Len(rr))
}

func (q *outQueue) frame(msg []byte) {
	f := dso.AppendFrame(nil, msg)
	q.push(outItem{frame: f}, len(f))
}

// response queues the response to request id, with a Retry Delay when ms
// is not zero.
func (q *outQueue) response(id uint16, rcode int, ms uint32) {
	var b dso.Builder
	b.Start(id, true, rcode)
	if ms != 0 {
		b.RetryDelay(ms)
	}
	f := b.Frame()
	q.push(outItem{frame: f}, len(f))
}

// keepalive queues a Keepalive response to id, or with id 0 a
// unidirectional Keepalive telling the client new values.
func (q *outQueue) keepalive(id uint16, k dso.Keepalive) {
	var b dso.Builder
	b.Start(id, id != 0, dns.RcodeSuccess)
	b.Keepalive(k)
	f := b.Frame()
	q.push(outItem{frame: f}, len(f))
}

// retry queues a Retry Delay as the last thing the session says.
func (q *outQueue) retry(rcode int, ms uint32) {
	q.mu.Lock()
	if !q.final {
		q.finalLocked(rcode, ms)
	}
	q.mu.Unlock()
	q.kick()
}

func (q *outQueue) finalLocked(rcode int, ms uint32) {
	var b dso.Builder
	b.Start(0, false, rcode)
	b.RetryDelay(ms)
	f := b.Frame()
	q.items = append(q.items, outItem{frame: f})
	q.final = true
}

// finish marks what is queued as the last output, without a Retry Delay.
func (q *outQueue) finish() {
	q.mu.Lock()
	q.final = true
	q.mu.Unlock()
}

func (q *outQueue) retrying() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.final
}

func (q *outQueue) overflowed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.over
}

// closeBy is retryAt, or zero while no Retry Delay is out.
func (q *outQueue) closeBy() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.retryAt
}

func (q *outQueue) setConn(c net.Conn, max int) {
	q.mu.Lock()
	q.conn, q.max = c, max
	q.mu.Unlock()
}

// stop has the writer write what is queued, within a second, and end.
func (q *outQueue) stop() {
	q.mu.Lock()
	q.stopping = true
	c := q.conn
	q.mu.Unlock()
	q.kick()
	select {
	case <-q.done:
	case <-time.After(time.Second):
		if c != nil {
			c.Close()
		}
		<-q.done
	}
}

var builders = sync.Pool{New: func() any { return new(dso.Builder) }}

// batches hold the bytes of one write; shared, as the writers are.
var batches = sync.Pool{New: func() any { return new([]byte) }}

// write is the session's writer goroutine: it writes what is queued until
// the queue is empty, then ends (and with the queue stopping, ends it).
func (q *outQueue) write() {
	bp := batches.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 64<<10 { // a burst's buffer is not kept
			batches.Put(bp)
		}
	}()
	for {
		q.mu.Lock()
		items, conn, final := q.items, q.conn, q.final
		if len(items) == 0 {
			if q.stopping {
				q.endLocked()
			}
			q.running = false
			q.mu.Unlock()
			return
		}
		q.items, q.bytes = nil, 0
		q.mu.Unlock()
		*bp = encode((*bp)[:0], items, q.metrics.pushesSent)
		clear(items) // let go of the records
		conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := conn.Write(*bp); err != nil {
			conn.Close()
			q.mu.Lock()
			q.endLocked()
			q.mu.Unlock()
			return
		}
		if final {
			q.mu.Lock()
			q.retryAt = time.Now().Add(dso.RetryCloseGrace)
			q.mu.Unlock()
			conn.SetReadDeadline(q.closeBy())
		}
	}
}

// encode appends items to dst as framed messages: frames as they are, runs
// of records as PUSH messages of at most dso.MaxPushLen bytes each, with
// name compression. Adds carry the record's TTL (at least 1: Apple's
// client does not keep an add with TTL 0); removes are per record
// (0xFFFFFFFF), the only kind Apple's client understands.
func encode(dst []byte, items []outItem, sent prometheus.Counter) []byte {
	b := builders.Get().(*dso.Builder)
	defer builders.Put(b)
	for i := 0; i < len(items); {
		if items[i].frame != nil {
			dst = append(dst, items[i].frame...)
			i++
			continue
		}
		b.Start(0, false, dns.RcodeSuccess)
		b.StartPush()
		for i < len(items) && items[i].frame == nil {
			it := items[i]
			ttl := uint32(dso.RemoveRecordTTL)
			if it.add {
				ttl = min(max(it.rr.Header().Ttl, 1), dso.MaxAddTTL)
			}
			if err := b.AddRecordTTL(it.rr, ttl); err == dso.ErrFull && b.Records() > 0 {
				break // this message is full: the record starts the next
			} else if err != nil {
				log.Errorf("cannot push %s: %v", it.rr.Header().Name, err)
			}
			i++
		}
		if b.Records() > 0 {
			dst = append(dst, b.Frame()...)
			sent.Inc()
		}
	}
	return dst
}
