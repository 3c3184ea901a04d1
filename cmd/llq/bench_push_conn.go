package main

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/miekg/dns"
)

// pushConn is one TLS connection of `llq bench push`: a DSO session with
// the server under test, or a bare connection to the baseline server. It is
// the least a client can be (one reader goroutine, no per-subscription
// state), so that the bench measures the server, not itself.
type pushConn struct {
	idx  int
	conn *tls.Conn
	st   *pushStats

	wmu    sync.Mutex
	b      dso.Builder
	frames []byte // frames batched into one Write
	nextID uint16

	subscribed atomic.Int32 // SUBSCRIBEs answered NOERROR
	refused    atomic.Int32 // SUBSCRIBEs answered otherwise
	seen       atomic.Int64 // the last fan-out round a message of was counted
	answered   chan struct{}
	done       chan struct{}
}

// pushStats is what the readers of all connections count.
type pushStats struct {
	round    atomic.Int64 // the fan-out round under way; 0 for none
	arrived  atomic.Int64 // connections the round's message reached
	first    atomic.Int64 // its first and last arrival, Unix nanoseconds
	last     atomic.Int64
	pushLen  atomic.Int64 // length of the last PUSH frame, prefix included
	pushes   atomic.Int64 // PUSH messages received
	answers  atomic.Int64 // SUBSCRIBE responses, NOERROR
	refusals atomic.Int64 // SUBSCRIBE responses, other rcodes
	retries  atomic.Int64 // Retry Delay messages
	lost     atomic.Int64 // connections that ended while the bench held them
}

// arrive counts a message of the round under way on c.
func (st *pushStats) arrive(c *pushConn, now int64) {
	r := st.round.Load()
	if r == 0 || c.seen.Swap(r) == r {
		return
	}
	st.first.CompareAndSwap(0, now)
	for {
		l := st.last.Load()
		if now <= l || st.last.CompareAndSwap(l, now) {
			break
		}
	}
	st.arrived.Add(1)
}

// startRound resets the arrival counts for round r.
func (st *pushStats) startRound(r int64) {
	st.arrived.Store(0)
	st.first.Store(0)
	st.last.Store(0)
	st.round.Store(r)
}

// waitRound waits until want connections had the round's message, or limit
// passed, and returns how many did, first to last.
func (st *pushStats) waitRound(want int, limit time.Duration) rate {
	deadline := time.Now().Add(limit)
	for st.arrived.Load() < int64(want) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	n := st.arrived.Load()
	st.round.Store(0)
	return rate{int(n), time.Duration(st.last.Load() - st.first.Load())}
}

// dialPush opens connection idx from src to server and completes the TLS
// handshake.
func dialPush(ctx context.Context, idx int, src netip.Addr, server netip.AddrPort, conf *tls.Config, st *pushStats) (*pushConn, error) {
	d := net.Dialer{Timeout: 30 * time.Second}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	raw, err := d.DialContext(ctx, "tcp", server.String())
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, conf)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return &pushConn{idx: idx, conn: c, st: st, nextID: 1, answered: make(chan struct{}, 1), done: make(chan struct{})}, nil
}

// queue adds a message built by build to the frames the next flush writes.
func (c *pushConn) queueLocked(build func(b *dso.Builder, id uint16) error) error {
	id := c.nextID
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	if err := build(&c.b, id); err != nil {
		return err
	}
	c.frames = append(c.frames, c.b.Frame()...)
	return nil
}

func (c *pushConn) flushLocked() error {
	_, err := c.conn.Write(c.frames)
	c.frames = c.frames[:0]
	return err
}

// establish sends the Keepalive request that opens the DSO session and
// SUBSCRIBEs for qs, in one Write: a client need not wait for the
// Keepalive's response (RFC 8490 section 5.1).
func (c *pushConn) establish(qs []dns.Question) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.queueLocked(func(b *dso.Builder, id uint16) error {
		b.Start(id, false, 0)
		b.Keepalive(dso.Keepalive{Inactivity: dso.Millis(time.Hour), Interval: dso.Millis(time.Hour)})
		return nil
	})
	for _, q := range qs {
		if err := c.queueLocked(func(b *dso.Builder, id uint16) error { b.Start(id, false, 0); return b.Subscribe(q) }); err != nil {
			return err
		}
	}
	return c.flushLocked()
}

// subscribe sends one SUBSCRIBE.
func (c *pushConn) subscribe(q dns.Question) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.queueLocked(func(b *dso.Builder, id uint16) error { b.Start(id, false, 0); return b.Subscribe(q) }); err != nil {
		return err
	}
	return c.flushLocked()
}

// sendRaw writes one frame holding msg.
func (c *pushConn) sendRaw(msg []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.conn.Write(dso.AppendFrame(nil, msg))
	return err
}

// read counts what the server sends until the connection ends. Message ID
// 1 is the Keepalive request's; other responses answer SUBSCRIBEs.
func (c *pushConn) read() {
	defer close(c.done)
	var buf []byte
	for {
		msg, err := dso.ReadMessage(c.conn, buf, dso.MaxMessageLen)
		if err != nil {
			c.st.lost.Add(1)
			return
		}
		now := time.Now().UnixNano()
		buf = msg[:0]
		if len(msg) < dso.HeaderLen {
			continue
		}
		id := binary.BigEndian.Uint16(msg)
		response := msg[2]&0x80 != 0
		rcode := int(msg[3] & 0xF)
		var primary uint16
		if len(msg) >= dso.HeaderLen+4 {
			primary = binary.BigEndian.Uint16(msg[dso.HeaderLen:])
		}
		switch {
		case response && id != 1:
			if rcode == dns.RcodeSuccess {
				c.subscribed.Add(1)
				c.st.answers.Add(1)
			} else {
				c.refused.Add(1)
				c.st.refusals.Add(1)
			}
			select {
			case c.answered <- struct{}{}:
			default:
			}
		case response:
		case id == 0 && primary == dso.TypeRetryDelay:
			c.st.retries.Add(1)
		default: // a PUSH, or the baseline's frame
			c.st.pushes.Add(1)
			c.st.pushLen.Store(int64(len(msg) + 2))
			c.st.arrive(c, now)
		}
	}
}

// waitSubscribed waits until n SUBSCRIBEs were answered.
func (c *pushConn) waitSubscribed(ctx context.Context, n int32) error {
	for c.subscribed.Load()+c.refused.Load() < n {
		select {
		case <-c.answered:
		case <-c.done:
			return fmt.Errorf("session %d ended", c.idx)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if r := c.refused.Load(); r > 0 {
		return fmt.Errorf("session %d: %d SUBSCRIBEs refused", c.idx, r)
	}
	return nil
}

func (c *pushConn) close() {
	c.conn.Close()
	<-c.done
}
