package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// benchConn is one OS socket of the bench. Unshared, it is bound to its one
// endpoint's address. Shared, it is bound to 0.0.0.0:PORT, which on loopback
// receives for every 127.x.y.z:PORT, and stands for endpoints of up to -addrs
// addresses: each endpoint sends with an IP_PKTINFO control message choosing
// its source address, and the reader hands each packet to the endpoint its
// destination address names. The server sees as many clients as endpoints,
// the bench spends one file descriptor per port.
type benchConn struct {
	conn    *net.UDPConn
	shared  bool
	one     *benchSocket                // unshared
	eps     map[netip.Addr]*benchSocket // shared, by destination address
	st      *benchStats
	closing atomic.Bool

	// Shared sockets read with recvmmsg and send the acks of what they read
	// with sendmmsg, so that the bench leaves the CPU to the server.
	batch  *ipv4.PacketConn
	server *net.UDPAddr
	out    []ipv4.Message // acks queued by the reader
	arena  []byte         // their bytes
}

// readBatch is the packets a shared socket reads at once; the server's
// packets to the bench are 1232 bytes at most.
const (
	readBatch    = 32
	readBatchBuf = 2048
)

// Receive buffers: a shared socket takes one change's events for all its
// endpoints at once (the kernel caps the size at net.core.rmem_max).
const (
	sharedReadBuffer   = 8 << 20
	unsharedReadBuffer = 1 << 20
)

// openEndpoints makes the -sockets endpoints and the OS sockets behind them.
// Endpoint i has source address i % -addrs; with sharing, endpoints
// k*addrs .. k*addrs+addrs-1 (all the addresses once) share socket k.
func (b *benchArgs) openEndpoints(st *benchStats, cl *changeLog) ([]*benchSocket, []*benchConn, error) {
	loop4 := b.server.Addr().Is4() && b.server.Addr().IsLoopback()
	share := b.share && loop4 && b.addrs > 1
	for {
		socks, conns, err := b.open(st, cl, loop4, share)
		if err == nil {
			st.endpoints, st.conns, st.shared = len(socks), len(conns), share
			return socks, conns, nil
		}
		for _, c := range conns {
			c.close()
		}
		if !share || !errors.Is(err, errNoPktinfo) {
			return nil, nil, err
		}
		share = false // this system cannot choose source addresses per packet
	}
}

var errNoPktinfo = errors.New("no IP_PKTINFO")

func (b *benchArgs) open(st *benchStats, cl *changeLog, loop4, share bool) ([]*benchSocket, []*benchConn, error) {
	per := 1
	if share {
		per = min(b.addrs, b.sockets)
	}
	socks := make([]*benchSocket, b.sockets)
	var conns []*benchConn
	var c *benchConn
	for i := range socks {
		var src netip.Addr // any, for a server elsewhere or on IPv6
		if loop4 {
			src = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
		if loop4 && b.addrs > 1 {
			a := i % b.addrs
			src = netip.AddrFrom4([4]byte{127, 1, byte(a / 250), byte(a%250 + 1)})
		}
		if i%per == 0 {
			var err error
			c, err = newBenchConn(share, src, st)
			if err != nil {
				return socks, conns, fmt.Errorf("socket %d: %w", len(conns), err)
			}
			c.server = net.UDPAddrFromAddrPort(b.server)
			conns = append(conns, c)
		}
		s := &benchSocket{b: b, pc: c, byMsg: map[uint16]*benchLLQ{}, byID: map[uint64]*benchLLQ{}, st: st, ch: cl}
		if share {
			s.local = netip.AddrPortFrom(src, c.port())
			s.oob = (&ipv4.ControlMessage{Src: src.AsSlice()}).Marshal()
			c.eps[src] = s
		} else {
			s.local = c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
			c.one = s
		}
		socks[i] = s
	}
	return socks, conns, nil
}

func newBenchConn(share bool, src netip.Addr, st *benchStats) (*benchConn, error) {
	if !share {
		local := &net.UDPAddr{}
		if src.IsValid() {
			local = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		}
		conn, err := net.ListenUDP("udp", local)
		if err != nil {
			return nil, err
		}
		conn.SetReadBuffer(unsharedReadBuffer)
		return &benchConn{conn: conn, st: st}, nil
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		return nil, err
	}
	c := &benchConn{conn: conn, shared: true, eps: map[netip.Addr]*benchSocket{}, st: st, batch: ipv4.NewPacketConn(conn)}
	if err := c.batch.SetControlMessage(ipv4.FlagDst, true); err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %v", errNoPktinfo, err)
	}
	// Marshal gives nothing where the system has no IP_PKTINFO to send with.
	if len((&ipv4.ControlMessage{Src: src.AsSlice()}).Marshal()) == 0 {
		conn.Close()
		return nil, errNoPktinfo
	}
	conn.SetReadBuffer(sharedReadBuffer)
	return c, nil
}

func (c *benchConn) port() uint16 {
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort().Port()
}

// close closes the socket and so ends its reader.
func (c *benchConn) close() {
	c.closing.Store(true)
	c.conn.Close()
}

// read hands every packet the socket receives to its endpoint until the
// socket is closed.
func (c *benchConn) read() {
	if c.shared {
		c.readShared()
		return
	}
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, from, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if c.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c.one.handle(buf[:n], from, time.Now())
	}
}

// readShared reads up to readBatch packets a system call, hands each to the
// endpoint its destination address names, and sends the acks in one.
func (c *benchConn) readShared() {
	ms := make([]ipv4.Message, readBatch)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, readBatchBuf)}
		ms[i].OOB = make([]byte, 64)
	}
	for {
		n, err := c.batch.ReadBatch(ms, 0)
		if err != nil {
			if c.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		now := time.Now()
		for _, m := range ms[:n] {
			var cm ipv4.ControlMessage
			if cm.Parse(m.OOB[:m.NN]) != nil || cm.Dst == nil {
				c.st.stray.Add(1)
				continue
			}
			dst, _ := netip.AddrFromSlice(cm.Dst.To4())
			s := c.eps[dst]
			from, ok := m.Addr.(*net.UDPAddr)
			if s == nil || !ok || m.N > readBatchBuf {
				c.st.stray.Add(1)
				continue
			}
			s.handle(m.Buffers[0][:m.N], from.AddrPort(), now)
		}
		c.flush()
	}
}

// queue sends b from s to the server: at the end of the read batch on a
// shared socket (only its reader calls queue), at once otherwise.
func (c *benchConn) queue(s *benchSocket, b []byte) {
	c.queueTo(s, b, c.server, s.b.server)
}

// queueTo is queue to any address, given both ways (to and ap are the same).
func (c *benchConn) queueTo(s *benchSocket, b []byte, to *net.UDPAddr, ap netip.AddrPort) {
	if !c.shared {
		s.send(b, ap)
		return
	}
	start := len(c.arena)
	c.arena = append(c.arena, b...)
	if len(c.out) < cap(c.out) { // reuse the Message and its Buffers
		c.out = c.out[:len(c.out)+1]
	} else {
		c.out = append(c.out, ipv4.Message{})
	}
	m := &c.out[len(c.out)-1]
	m.Buffers = append(m.Buffers[:0], c.arena[start:len(c.arena):len(c.arena)])
	m.OOB, m.Addr = s.oob, to
}

// flush sends what queue queued.
func (c *benchConn) flush() {
	for out := c.out; len(out) > 0; {
		n, err := c.batch.WriteBatch(out, 0)
		if err != nil {
			break
		}
		out = out[n:]
	}
	c.out, c.arena = c.out[:0], c.arena[:0]
}

// send sends b to the server (or to any address) from the endpoint.
func (s *benchSocket) send(b []byte, to netip.AddrPort) {
	s.pc.conn.WriteMsgUDPAddrPort(b, s.oob, to)
}

// udpDrops sums the packets the kernel dropped for a full receive queue on
// the UDP sockets bound to addrs, from /proc/net/udp (Linux, IPv4, this
// network namespace). found tells how many of addrs it saw.
func udpDrops(addrs []netip.AddrPort) (drops int64, found int, err error) {
	mine := make(map[string]bool, len(addrs))
	for _, ap := range addrs {
		if !ap.Addr().Unmap().Is4() {
			continue
		}
		a := ap.Addr().Unmap().As4()
		// The kernel prints the address as a 32-bit number in host order.
		mine[fmt.Sprintf("%08X:%04X", binary.NativeEndian.Uint32(a[:]), ap.Port())] = true
	}
	f, err := os.Open("/proc/net/udp")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 13 || !mine[fs[1]] {
			continue
		}
		n, err := strconv.ParseInt(fs[len(fs)-1], 10, 64)
		if err != nil {
			return 0, 0, err
		}
		drops += n
		found++
	}
	return drops, found, sc.Err()
}

// connDrops is udpDrops for the bench's own sockets.
func connDrops(conns []*benchConn) (int64, error) {
	addrs := make([]netip.AddrPort, len(conns))
	for i, c := range conns {
		addrs[i] = c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	drops, found, err := udpDrops(addrs)
	if err == nil && found < len(addrs) {
		err = errors.New("not every socket is in /proc/net/udp")
	}
	return drops, err
}

// serverDrops is udpDrops for the server's socket, when it is on this host.
func serverDrops(server netip.AddrPort) (int64, bool) {
	if !server.Addr().IsLoopback() {
		return 0, false
	}
	drops, found, err := udpDrops([]netip.AddrPort{server})
	return drops, err == nil && found == 1
}
