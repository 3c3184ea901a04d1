package llq

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// listener is llq's own socket pair. CoreDNS's listener drops every message
// with QR=1 before a plugin sees it, and event acknowledgements are such
// messages, so the LLQ exchange cannot live on CoreDNS's port.
type listener struct {
	llq   *llqTransport
	udp   *net.UDPConn
	batch batchConn
	v6    bool // the UDP socket is IPv6 (possibly dual-stack)
	tcp   *net.TCPListener
	gate  *connGate
	stop  chan struct{} // closed by close
	// Challenge responses served off the readers (see setupAside): those
	// waiting, and a token per worker serving them.
	asideQueue   chan asideSetup
	asideWorkers chan struct{}
	wg           sync.WaitGroup
	mu           sync.Mutex
	open         map[net.Conn]struct{}
}

// bind opens the listener's sockets; serve starts reading them. Between
// the two the engine learns the port (for its metrics) and restores its
// state file, before any client is read.
func bind(addr string) (*listener, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	udp, tcp, err := bindPair(ua)
	if err != nil {
		return nil, err
	}
	_ = udp.SetReadBuffer(4 << 20)
	_ = udp.SetWriteBuffer(4 << 20)
	l := &listener{udp: udp, tcp: tcp, stop: make(chan struct{}), asideQueue: make(chan asideSetup, maxSetupsQueued), asideWorkers: make(chan struct{}, maxSetupsAside), open: make(map[net.Conn]struct{})}
	// Go opens an AF_INET socket only for a specific IPv4 address; a
	// wildcard, even 0.0.0.0, gets a dual-stack AF_INET6 one, whose local
	// address then reads [::].
	if udp.LocalAddr().(*net.UDPAddr).IP.To4() != nil {
		l.batch = ipv4.NewPacketConn(udp)
	} else {
		l.v6 = true
		l.batch = ipv6.NewPacketConn(udp)
	}
	return l, nil
}

func (l *listener) serve(lt *llqTransport) {
	l.llq = lt
	l.gate = newConnGate(lt.e.metrics)
	readers := runtime.GOMAXPROCS(0)
	l.wg.Add(readers + 1)
	for range readers {
		go l.serveUDP()
	}
	holdSpare() // before serving, see acceptLoop
	go l.serveTCP()
}

// bindPair binds UDP and then TCP on the same port. With port 0 the port
// UDP got may be taken for TCP by another program; then it tries another.
func bindPair(ua *net.UDPAddr) (*net.UDPConn, *net.TCPListener, error) {
	for attempt := 0; ; attempt++ {
		udp, err := net.ListenUDP("udp", ua)
		if err != nil {
			return nil, nil, err
		}
		ta := &net.TCPAddr{IP: ua.IP, Port: udp.LocalAddr().(*net.UDPAddr).Port, Zone: ua.Zone}
		tcp, err := net.ListenTCP("tcp", ta)
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		if ua.Port != 0 || attempt == 10 {
			return nil, nil, err
		}
	}
}

func (l *listener) writeTo(b []byte, to netip.AddrPort) error {
	_, err := l.udp.WriteToUDPAddrPort(b, to)
	return err
}

// sendBatch is how many datagrams one sendmmsg carries.
const sendBatch = 64

// batchConn is ipv4.PacketConn or ipv6.PacketConn: their Message types are
// one and the same.
type batchConn interface {
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
}

// writeBatch sends ms and returns how many went out. On Linux a batch is one
// sendmmsg; elsewhere x/net falls back to one write each.
func (l *listener) writeBatch(ms []ipv4.Message) int {
	sent := 0
	for sent < len(ms) {
		n, err := l.batch.WriteBatch(ms[sent:], 0)
		if err != nil {
			// One unreachable address must not cost the rest of the batch.
			sent++
			if n > 0 {
				sent += n - 1
			}
			continue
		}
		sent += n
	}
	return sent
}

// udpAddr fills a and its IP storage ip with the socket address for to.
func (l *listener) udpAddr(a *net.UDPAddr, ip *[16]byte, to netip.AddrPort) *net.UDPAddr {
	to = l.sockAddr(to)
	if to.Addr().Is4() {
		v4 := to.Addr().As4()
		a.IP = append(ip[:0], v4[:]...)
	} else {
		*ip = to.Addr().As16()
		a.IP = ip[:]
	}
	a.Port, a.Zone = int(to.Port()), to.Addr().Zone()
	return a
}

// sockAddr maps an IPv4 destination into IPv6 form on a dual-stack socket.
func (l *listener) sockAddr(to netip.AddrPort) netip.AddrPort {
	if l.v6 && to.Addr().Is4() {
		return netip.AddrPortFrom(netip.AddrFrom16(to.Addr().As16()), to.Port())
	}
	return to
}

// readBatch is how many datagrams one recvmmsg takes in: during a fan-out
// the acks arrive as fast as the events leave. readSlot is the room for
// each; a datagram that fills it is no LLQ request (one question and its
// option take under 300 bytes) and is answered FORMERR.
const (
	readBatch = 16
	readSlot  = 4096
)

func (l *listener) serveUDP() {
	defer l.wg.Done()
	ms := make([]ipv4.Message, readBatch)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, readSlot)}
	}
	for {
		n, err := l.batch.ReadBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		for _, m := range ms[:n] {
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			src := ua.AddrPort()
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			b := m.Buffers[0][:m.N]
			var reply []byte
			var after []delivery // sent once the reply is on its way
			switch {
			case m.N >= readSlot: // maybe cut short: MSG_TRUNC is not portable
				reply = formErrHeader(b)
			case challengeResponse(b) && !l.llq.e.topicsExist(b):
				l.setupAside(b, src)
			default:
				reply, after = l.llq.serveThen(b, src, false)
			}
			if reply != nil {
				l.writeTo(reply, src)
			}
			l.llq.send(after, "event")
		}
	}
}

// A challenge response may create a topic, whose first resolution asks the
// backend and may take as long as the backend does (a forward to a slow
// upstream: seconds). On a reader it would hold up every ack and refresh
// behind it, events would be retransmitted and healthy LLQs dropped as
// silent; so, unless every question it asks is a topic already, it runs
// on one of at most maxSetupsAside workers. Those that find every worker
// busy wait in a queue of maxSetupsQueued; past that a response is
// dropped, and the client, which resends an unanswered challenge response,
// tries again. The queue is what keeps a burst of new questions from being
// dropped wholesale: a reader takes in many datagrams before the workers
// it starts get to run (on one core, all of them), and a client's resend
// comes only after a second or more of back-off.
const (
	maxSetupsAside  = 64
	maxSetupsQueued = 4096 // at most 4 KiB each: 16 MiB at worst, a few hundred bytes each in practice
)

// asideSetup is a challenge response waiting for a worker.
type asideSetup struct {
	b   []byte
	src netip.AddrPort
}

// challengeResponse reports whether b is a request with an LLQ setup option
// carrying an ID: the second half of the UDP handshake. Acks (responses)
// are told apart on their first bytes.
func challengeResponse(b []byte) bool {
	if len(b) < 12 || b[2]&0x80 != 0 {
		return false
	}
	found := false
	wire.Scan(b, nil, func(o dns.EDNS0_LLQ) {
		found = found || o.Opcode == wire.OpSetup && o.Id != 0
	})
	return found
}

// topicsExist reports whether every question of b is a topic already, so
// that a challenge response for it asks a backend that has answered it
// before (the admission of the client, see establish) and can stay on the
// reader.
func (e *Engine) topicsExist(b []byte) bool {
	n := int(binary.BigEndian.Uint16(b[4:]))
	off := 12
	keys := make([]questionKey, 0, 1)
	for range n {
		name, next, err := dns.UnpackDomainName(b, off)
		if err != nil || next+4 > len(b) {
			return false
		}
		q := dns.Question{Name: name, Qtype: binary.BigEndian.Uint16(b[next:]), Qclass: binary.BigEndian.Uint16(b[next+2:])}
		keys = append(keys, keyOf(q))
		off = next + 4
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, k := range keys {
		if e.questions[k] == 0 {
			return false
		}
	}
	return true
}

// setupAside serves a challenge response off the reader.
func (l *listener) setupAside(b []byte, src netip.AddrPort) {
	select {
	case l.asideQueue <- asideSetup{slices.Clone(b), src}: // the reader's buffer is reused
	default:
		l.llq.e.metrics.setupsDropped.Inc()
		return
	}
	select {
	case l.asideWorkers <- struct{}{}:
		l.wg.Add(1)
		go l.asideWorker()
	default: // every worker is busy, and each looks at the queue before it ends
	}
}

// asideWorker serves queued challenge responses until none is left. It
// looks again after giving its token back: a response queued while it was
// doing so, by a reader that found every token taken, is not stranded.
func (l *listener) asideWorker() {
	defer l.wg.Done()
	for {
		for {
			var a asideSetup
			select {
			case a = <-l.asideQueue:
			default:
			}
			if a.b == nil {
				break
			}
			reply, after := l.llq.serveThen(a.b, a.src, false)
			if reply != nil {
				l.writeTo(reply, a.src)
			}
			l.llq.send(after, "event")
		}
		<-l.asideWorkers
		if len(l.asideQueue) == 0 {
			return
		}
		select {
		case l.asideWorkers <- struct{}{}:
		default:
			return // the workers holding every token will see it
		}
	}
}

func (l *listener) serveTCP() {
	defer l.wg.Done()
	acceptLoop(l.tcp, l.stop, l.llq.e.metrics, func(c net.Conn) {
		src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		cfg := l.llq.e.config()
		client := cfg.clientBits.key(src.Addr())
		if !l.gate.enter(client, cfg.conns) {
			c.Close()
			return
		}
		l.mu.Lock()
		if l.open == nil { // close ran meanwhile
			l.mu.Unlock()
			l.gate.leave(client)
			c.Close()
			return
		}
		l.open[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.serveConn(c, src, client)
	})
}

// serveConn answers the messages of one TCP connection. LLQ over TCP sets
// up and refreshes; events go over UDP. So a connection is kept only while
// it holds an LLQ it set up or refreshed: one that holds none is closed
// when the idle time has passed since it last did, whatever it sends
// meanwhile (a byte every little while must not keep it forever). A
// message must also arrive whole within the idle time.
func (l *listener) serveConn(c net.Conn, src netip.AddrPort, client netip.Prefix) {
	f := frameReader{r: c, g: l.gate}
	defer func() {
		f.done()
		c.Close()
		l.gate.leave(client)
		l.mu.Lock()
		delete(l.open, c) // a no-op on the nil map after close
		l.mu.Unlock()
		l.wg.Done()
	}()
	var held heldLLQs
	deadline := time.Now().Add(l.llq.e.config().conns.idle)
	// A message must arrive whole within the idle time of its first bytes;
	// the deadline between messages stays as the loop sets it.
	f.begun = func() { c.SetReadDeadline(time.Now().Add(l.llq.e.config().conns.idle)) }
	for {
		c.SetReadDeadline(deadline)
		lim := l.llq.e.config().conns
		msg, err := f.next(lim)
		if err != nil {
			var ne net.Error
			timeout := errors.As(err, &ne) && ne.Timeout()
			if timeout && !f.partial && l.llq.holds(&held, src.Addr()) {
				deadline = time.Now().Add(lim.idle)
				continue
			}
			switch {
			case timeout:
				l.llq.e.metrics.connsClosed.WithLabelValues("idle").Inc()
			case errors.Is(err, errReadBuffers):
				l.llq.e.metrics.connsClosed.WithLabelValues("read-buffers").Inc()
			}
			return
		}
		reply := l.llq.serve(msg, src, true)
		f.done()
		if reply != nil {
			held.note(reply)
			out := make([]byte, 2+len(reply))
			binary.BigEndian.PutUint16(out, uint16(len(reply)))
			copy(out[2:], reply)
			c.SetWriteDeadline(time.Now().Add(lim.idle))
			if _, err := c.Write(out); err != nil {
				return
			}
		}
		if l.llq.holds(&held, src.Addr()) {
			deadline = time.Now().Add(lim.idle)
		}
	}
}

// heldLLQs are the LLQs a connection set up or refreshed, a few at most:
// one live LLQ is enough to keep the connection.
type heldLLQs []uint64

const maxHeld = 8

// note remembers the LLQs that reply grants and forgets those it ends.
func (h *heldLLQs) note(reply []byte) {
	wire.Scan(reply, nil, func(o dns.EDNS0_LLQ) {
		if o.Error != wire.NoError || o.Id == 0 || o.Opcode != wire.OpSetup && o.Opcode != wire.OpRefresh {
			return
		}
		i := slices.Index(*h, o.Id)
		switch {
		case o.LeaseLife == 0 && i >= 0:
			*h = slices.Delete(*h, i, i+1)
		case o.LeaseLife > 0 && i < 0 && len(*h) < maxHeld:
			*h = append(*h, o.Id)
		}
	})
}

// holds reports whether one of held is a live LLQ of the client at addr,
// and forgets those that are not.
func (l *llqTransport) holds(held *heldLLQs, addr netip.Addr) bool {
	if len(*held) == 0 {
		return false
	}
	l.e.mu.Lock()
	defer l.e.mu.Unlock()
	*held = slices.DeleteFunc(*held, func(id uint64) bool { return !l.known(id, addr) })
	return len(*held) > 0
}

func (l *listener) close() {
	close(l.stop)
	l.udp.Close()
	l.tcp.Close()
	l.mu.Lock()
	for c := range l.open {
		c.Close()
	}
	l.open = nil
	l.mu.Unlock()
	l.wg.Wait()
}
