package llq

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// listener is llq's own socket pair. CoreDNS's listener drops every message
// with QR=1 before a plugin sees it, and event acknowledgements are such
// messages, so the LLQ exchange cannot live on CoreDNS's port.
type listener struct {
	e     *Engine
	udp   *net.UDPConn
	batch batchConn
	v6    bool // the UDP socket is IPv6 (possibly dual-stack)
	tcp   *net.TCPListener
	wg    sync.WaitGroup
	mu    sync.Mutex
	open  map[net.Conn]struct{}
}

// tcpIdle is how long a TCP client may stay silent before its connection is
// closed; LLQ over TCP only sets up and refreshes, events go over UDP.
const tcpIdle = 30 * time.Second

func listen(addr string, e *Engine) (*listener, error) {
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
	l := &listener{e: e, udp: udp, tcp: tcp, open: make(map[net.Conn]struct{})}
	// Go opens an AF_INET socket only for a specific IPv4 address; a
	// wildcard, even 0.0.0.0, gets a dual-stack AF_INET6 one, whose local
	// address then reads [::].
	if udp.LocalAddr().(*net.UDPAddr).IP.To4() != nil {
		l.batch = ipv4.NewPacketConn(udp)
	} else {
		l.v6 = true
		l.batch = ipv6.NewPacketConn(udp)
	}
	readers := runtime.GOMAXPROCS(0)
	l.wg.Add(readers + 1)
	for range readers {
		go l.serveUDP()
	}
	go l.serveTCP()
	return l, nil
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
			if m.N >= readSlot { // maybe cut short: MSG_TRUNC is not portable

				reply = formErrHeader(b)
			} else {
				reply = l.e.serve(b, src, false)
			}
			if reply != nil {
				l.writeTo(reply, src)
			}
		}
	}
}

func (l *listener) serveTCP() {
	defer l.wg.Done()
	for {
		c, err := l.tcp.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		l.mu.Lock()
		if l.open == nil { // close ran meanwhile
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.open[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.serveConn(c)
	}
}

func (l *listener) serveConn(c *net.TCPConn) {
	defer func() {
		c.Close()
		l.mu.Lock()
		delete(l.open, c) // a no-op on the nil map after close
		l.mu.Unlock()
		l.wg.Done()
	}()
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	var hdr [2]byte
	buf := make([]byte, 0, 512)
	for {
		c.SetReadDeadline(time.Now().Add(tcpIdle))
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		reply := l.e.serve(buf, src, true)
		if reply == nil {
			continue
		}
		out := make([]byte, 2+len(reply))
		binary.BigEndian.PutUint16(out, uint16(len(reply)))
		copy(out[2:], reply)
		c.SetWriteDeadline(time.Now().Add(tcpIdle))
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

func (l *listener) close() {
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
