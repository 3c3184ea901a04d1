package llq

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
)

// Stream listeners (LLQ over TCP, and DNS over TLS for DNS Push) meet
// clients that open connections and say nothing, or send a length and never
// the message. What bounds them is here, for every such listener to share:
// a connGate admits connections, an acceptLoop survives running out of
// descriptors, and a frameReader holds memory only for bytes that arrived.

// connLimits is what the Corefile sets for stream connections.
type connLimits struct {
	max       int           // open connections; 0 = unlimited
	perClient int           // open connections per client (see clientBits); 0 = unlimited
	idle      time.Duration // how long a connection that holds nothing stays open
	buffers   int           // bytes of messages being received, all connections together; 0 = unlimited
}

// The per-client default is far above what a client needs (LLQ over TCP
// sets up and goes; one DNS Push session carries every subscription) and
// far below what a descriptor limit allows: an address holding hundreds of
// connections is an attack, not a client.
var defaultConnLimits = connLimits{max: 10000, perClient: 256, idle: 30 * time.Second, buffers: 32 << 20}

// connGate counts one listener's connections and read buffers.
type connGate struct {
	mu        sync.Mutex
	open      int
	perClient map[netip.Prefix]int
	buffered  int
	metrics   *listenerMetrics
}

func newConnGate(m *listenerMetrics) *connGate {
	return &connGate{perClient: make(map[netip.Prefix]int), metrics: m}
}

// enter admits a connection from client, or counts the limit that refuses
// it and returns false.
func (g *connGate) enter(client netip.Prefix, lim connLimits) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if lim.max > 0 && g.open >= lim.max {
		g.metrics.connsRefused.WithLabelValues("max-connections").Inc()
		return false
	}
	if lim.perClient > 0 && g.perClient[client] >= lim.perClient {
		g.metrics.connsRefused.WithLabelValues("max-connections-per-client").Inc()
		return false
	}
	g.open++
	g.perClient[client]++
	g.metrics.connsOpen.Inc()
	return true
}

// leave forgets a connection that enter admitted.
func (g *connGate) leave(client netip.Prefix) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open--
	if g.perClient[client] <= 1 {
		delete(g.perClient, client)
	} else {
		g.perClient[client]--
	}
	g.metrics.connsOpen.Dec()
}

// reserve takes n bytes of read buffer, if the total allows.
func (g *connGate) reserve(n int, lim connLimits) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if lim.buffers > 0 && g.buffered+n > lim.buffers {
		return false
	}
	g.buffered += n
	g.metrics.readBuffered.Add(float64(n))
	return true
}

func (g *connGate) release(n int) {
	if n == 0 {
		return
	}
	g.mu.Lock()
	g.buffered -= n
	g.mu.Unlock()
	g.metrics.readBuffered.Sub(float64(n))
}

// Accept back-off bounds, as net/http has them.
const (
	acceptPauseMin = 5 * time.Millisecond
	acceptPauseMax = time.Second
)

// acceptLoop hands every connection ln accepts to serve until ln is closed
// or stop is. When accepting fails, mostly because descriptors ran out
// (EMFILE, ENFILE), it pauses before the next try, from 5 ms doubling up to
// a second: trying again at once spins a core for as long as the shortage
// lasts, and takes every descriptor freed meanwhile from the rest of the
// server (the file plugin reopening its zone, say).
//
// Meanwhile clients would wait in the listen backlog until they time out:
// the kernel completed their handshakes, and nobody takes them. So, out of
// descriptors, the loop resets them with the spare descriptor (see shed).
//
// The caller takes its hold on the spare (holdSpare) before it starts the
// loop's goroutine, so that the spare is open by the time the listener
// serves: a goroutine that runs late would find the descriptors already
// gone. The loop releases the hold when it ends.
func acceptLoop(ln net.Listener, stop <-chan struct{}, m *listenerMetrics, serve func(net.Conn)) {
	defer releaseSpare()
	var pause time.Duration
	for {
		c, err := ln.Accept()
		if err == nil {
			pause = 0
			serve(c)
			continue
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		m.acceptErrors.Inc()
		if outOfDescriptors(err) && shed(ln) {
			m.connsRefused.WithLabelValues("descriptors").Inc()
			continue // the next may be waiting too
		}
		pause = nextAcceptPause(pause)
		if pause == acceptPauseMin {
			log.Warningf("accept on %s: %v; pausing up to %v between tries", ln.Addr(), err, acceptPauseMax)
		}
		t := time.NewTimer(pause)
		select {
		case <-stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func outOfDescriptors(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// spare is a descriptor held in reserve while any accept loop runs: one
// for the process, as nginx keeps one per worker, so that llq's listeners
// do not take it from one another.
var spare struct {
	sync.Mutex
	f     *os.File // nil when none could be opened, or another part of the server took it
	users int
}

func holdSpare() {
	spare.Lock()
	defer spare.Unlock()
	spare.users++
	if spare.f == nil {
		spare.f = openSpare()
	}
}

func releaseSpare() {
	spare.Lock()
	defer spare.Unlock()
	spare.users--
	if spare.users == 0 && spare.f != nil {
		spare.f.Close()
		spare.f = nil
	}
}

func openSpare() *os.File {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return nil
	}
	return f
}

// shed resets the connection waiting first in ln's backlog, if any, when
// descriptors ran out: it closes the spare, which frees a descriptor for
// the moment, accepts and resets the connection, and opens the spare again.
// It reports whether it reset one.
func shed(ln net.Listener) bool {
	spare.Lock()
	defer spare.Unlock()
	if spare.f == nil {
		// Taken while it was closed: take it back if descriptors were
		// freed since, and shed next time.
		spare.f = openSpare()
		return false
	}
	spare.f.Close()
	reset := shedOne(ln)
	spare.f = openSpare()
	return reset
}

func nextAcceptPause(p time.Duration) time.Duration {
	return min(max(2*p, acceptPauseMin), acceptPauseMax)
}

// errReadBuffers ends a connection whose message would take the listener's
// read buffers past their total.
var errReadBuffers = errors.New("read buffers full")

// frameStart is the buffer a message gets when its length arrives; it
// doubles as the message's bytes fill it. An LLQ request fits in it.
const frameStart = 512

// frameReader reads length-prefixed DNS messages (RFC 1035, 4.2.2) from a
// connection. The length alone buys at most frameStart bytes; beyond that a
// message holds at most twice what has arrived, so a 2-byte prefix
// announcing 65,535 bytes pins half a kilobyte, not 64 KiB. Between
// messages it holds nothing.
type frameReader struct {
	r       io.Reader
	g       *connGate
	buf     []byte // len(buf) bytes are reserved from g
	partial bool   // part of a message has arrived
	// begun, when set, runs once a message's length has arrived: its body
	// gets its own time, so a message that starts just before the
	// connection's deadline is not cut in half by it.
	begun func()
}

// next returns the next message, valid until done.
func (f *frameReader) next(lim connLimits) ([]byte, error) {
	var hdr [2]byte
	n, err := io.ReadFull(f.r, hdr[:])
	f.partial = n > 0
	if err != nil {
		return nil, err
	}
	size := int(binary.BigEndian.Uint16(hdr[:]))
	if size > 0 && f.begun != nil {
		f.begun()
	}
	got := 0
	for got < size {
		if got == len(f.buf) {
			if err := f.grow(min(size, max(frameStart, 2*got)), lim); err != nil {
				return nil, err
			}
		}
		n, err := f.r.Read(f.buf[got:min(size, len(f.buf))])
		got += n
		if err != nil && got < size {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	f.partial = false
	return f.buf[:size], nil
}

func (f *frameReader) grow(to int, lim connLimits) error {
	if !f.g.reserve(to-len(f.buf), lim) {
		return errReadBuffers
	}
	b := make([]byte, to)
	copy(b, f.buf)
	f.buf = b
	return nil
}

// done gives back the buffer of the last message.
func (f *frameReader) done() {
	f.g.release(len(f.buf))
	f.buf = nil
}
