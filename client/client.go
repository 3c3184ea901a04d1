// Package client is an LLQ (RFC 8764) client: it discovers a zone's LLQ
// server, sets up long-lived queries with the four-way handshake, keeps their
// leases alive, applies and acknowledges change events, and terminates them.
//
// One Client owns one UDP socket and one reader goroutine, which every
// Subscription made through it shares; lease refreshes run from timers. A
// Client with many subscriptions therefore costs one socket and one goroutine
// in all, plus a timer per subscription.
package client

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Defaults, taken from Apple's client where it has one (kLLQ_DefLease,
// kLLQ_INIT_RESEND).
const (
	DefaultLease         = 2 * time.Hour
	DefaultUDPSize       = 1232
	DefaultRetryInterval = 2 * time.Second
	DefaultRefreshAt     = 0.8
	DefaultEventBuffer   = 256
)

// Direction tells an OnPacket hook which way a datagram went.
type Direction int

const (
	Sent Direction = iota
	Received
)

// Options configures a Client. The zero value is usable.
type Options struct {
	Lease     time.Duration // requested lease; default 2h (Apple's kLLQ_DefLease 7200 s)
	UDPSize   uint16        // advertised EDNS0 size; default 1232
	LocalAddr string        // local UDP address to bind ("127.0.0.2:0"); default ":0" of the server's family

	// RetryInterval is the wait after the first transmission of a request
	// (RFC 8764 5.2: >= 2 s); the client then waits twice as long after the
	// second and four times as long after the third before giving up. The
	// same schedule covers refresh and terminate. Default 2s.
	RetryInterval time.Duration

	// RefreshAt is the fraction of the granted lease after which the client
	// refreshes on its own; default 0.8 as RFC 8764 suggests. A lease too
	// short for two rounds of retransmissions after that point is
	// refreshed earlier, but not before half of it.
	RefreshAt float64

	// EventBuffer is the capacity of each subscription's Events channel.
	// When a consumer falls that far behind, the oldest undelivered event is
	// dropped (see Subscription.Dropped); the answer set stays exact
	// regardless. Default 256.
	EventBuffer int

	// TCPEventPort puts the client's UDP port in LLQ-ERROR of a Challenge
	// Response repeated over TCP (after a truncated ACK+Answers), as Apple's
	// client does in every LLQ message it sends over TCP. A server that
	// learns the client's address from that message then sends events to
	// the UDP socket, not to the TCP connection's port. Off by default,
	// since it is a convention of Apple's, not of the RFC.
	TCPEventPort bool

	// AckFilter, when set, decides per event message whether to send its
	// ack (return false to drop it). For tests of server retransmission.
	AckFilter func(*dns.Msg) bool

	// OnEvent, when set, is called from the reader goroutine for every event
	// packet, after it was applied, queued on the Events channel and acked.
	// It holds up every subscription of the Client, so it must not block
	// (nor call Close); it is for consumers of many subscriptions at once.
	OnEvent func(*Subscription, Event)

	// OnPacket, when set, sees every datagram the client sends or receives,
	// before any filtering. b is only valid during the call.
	OnPacket func(dir Direction, peer netip.AddrPort, b []byte)

	// Drop, when set, decides per datagram, after OnPacket, whether the
	// network loses it: soak tests and the load generator simulate loss in
	// both directions with it.
	Drop func(dir Direction, b []byte) bool
}

func (o *Options) setDefaults() {
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.UDPSize == 0 {
		o.UDPSize = DefaultUDPSize
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = DefaultRetryInterval
	}
	if o.RefreshAt <= 0 || o.RefreshAt >= 1 {
		o.RefreshAt = DefaultRefreshAt
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = DefaultEventBuffer
	}
}

// Client talks LLQ to one server over one UDP socket.
type Client struct {
	conn   *net.UDPConn
	server netip.AddrPort
	opts   Options
	done   chan struct{} // closed when the reader has exited

	mu      sync.Mutex
	pending map[uint16]chan *dns.Msg // outstanding requests by DNS message ID
	subs    map[uint64]*Subscription // by LLQ ID, from challenge until end
	closing bool
	readErr error // why the reader stopped, when it was not Close
}

// Dial opens a UDP socket for talking LLQ to server and starts its reader.
func Dial(server netip.AddrPort, opts Options) (*Client, error) {
	if !server.IsValid() {
		return nil, fmt.Errorf("llq: invalid server address %q", server)
	}
	opts.setDefaults()
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())

	// An unspecified local address follows the server's family, so a v4
	// server is not reached through a dual-stack socket that reports
	// v4-mapped source addresses.
	network, local := "udp6", opts.LocalAddr
	if server.Addr().Is4() {
		network = "udp4"
	}
	if local == "" {
		local = ":0"
	} else {
		network = "udp"
	}
	laddr, err := net.ResolveUDPAddr(network, local)
	if err != nil {
		return nil, fmt.Errorf("llq: local address %q: %w", local, err)
	}
	conn, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, fmt.Errorf("llq: %w", err)
	}

	c := &Client{
		conn:    conn,
		server:  server,
		opts:    opts,
		done:    make(chan struct{}),
		pending: make(map[uint16]chan *dns.Msg),
		subs:    make(map[uint64]*Subscription),
	}
	go c.read()
	return c, nil
}

// Server returns the address the client talks to.
func (c *Client) Server() netip.AddrPort { return c.server }

// LocalAddr returns the address of the client's UDP socket, which is where
// the server sends events.
func (c *Client) LocalAddr() netip.AddrPort {
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Close terminates every live subscription (a REFRESH with lease 0, with
// retransmissions), then closes the socket. It returns the termination
// failures, if any; the socket is closed regardless.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		<-c.done
		return nil
	}
	c.closing = true
	var subs []*Subscription
	for _, s := range c.subs {
		if s.live() {
			subs = append(subs, s)
		}
	}
	c.mu.Unlock()

	// Terminate in parallel: against a dead server each one takes the whole
	// retransmission schedule. The bound keeps a client with thousands of
	// subscriptions from bursting them all at once.
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		errs  []error
		sem   = make(chan struct{}, 64)
	)
	for _, s := range subs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := s.Close(); err != nil {
				errMu.Lock()
				errs = append(errs, err)
				errMu.Unlock()
			}
		})
	}
	wg.Wait()

	if err := c.conn.Close(); err != nil {
		errs = append(errs, err)
	}
	<-c.done
	return errors.Join(errs...)
}

// read is the only reader of the socket: it matches replies to outstanding
// requests and hands events to their subscriptions.
func (c *Client) read() {
	defer c.stop()
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, from, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			c.mu.Lock()
			c.readErr = fmt.Errorf("llq: reading from socket: %w", err)
			c.mu.Unlock()
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if c.opts.OnPacket != nil {
			c.opts.OnPacket(Received, from, buf[:n])
		}
		if c.opts.Drop != nil && c.opts.Drop(Received, buf[:n]) {
			continue
		}
		// Anyone can send to our port; only the server may answer or
		// notify, which also keeps the LLQ IDs from being guessable by
		// third parties through our acks.
		if from != c.server {
			continue
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil || !m.Response {
			continue
		}
		c.dispatch(m, from)
	}
}

func (c *Client) dispatch(m *dns.Msg, from netip.AddrPort) {
	// Events carry a server-chosen DNS ID, which can collide with one of
	// ours; the LLQ opcode tells them apart.
	if opts := wire.Options(m); len(opts) > 0 && opts[0].Opcode == wire.OpEvent {
		c.event(m, opts, from)
		return
	}
	c.mu.Lock()
	ch := c.pending[m.Id]
	c.mu.Unlock()
	if ch == nil {
		return // a late duplicate of a reply already taken, or not ours
	}
	select {
	case ch <- m:
	default: // a retransmitted request drew a second reply; the first wins
	}
}

// stop runs when the reader exits: whatever was waiting on the socket learns
// it is gone.
func (c *Client) stop() {
	close(c.done)
	c.mu.Lock()
	err := c.readErr
	var subs []*Subscription
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	if err == nil {
		return // Close: it has already terminated the subscriptions
	}
	for _, s := range subs {
		s.end(err)
	}
}

func (c *Client) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readErr != nil {
		return c.readErr
	}
	return ErrClosed
}

func (c *Client) send(b []byte) error {
	if c.opts.OnPacket != nil {
		c.opts.OnPacket(Sent, c.server, b)
	}
	if c.opts.Drop != nil && c.opts.Drop(Sent, b) {
		return nil
	}
	_, err := c.conn.WriteToUDPAddrPort(b, c.server)
	return err
}

func (c *Client) removeSub(s *Subscription) {
	c.mu.Lock()
	if c.subs[s.id] == s {
		delete(c.subs, s.id)
	}
	c.mu.Unlock()
}

func (c *Client) sub(id uint64) *Subscription {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subs[id]
}

// request builds an LLQ request for q with a single LLQ option.
func (c *Client) request(q dns.Question, op uint16, id uint64, lease uint32) *dns.Msg {
	m := new(dns.Msg)
	m.Question = []dns.Question{q}
	wire.SetOptions(m, c.opts.UDPSize, wire.NewOption(op, wire.NoError, id, lease))
	return m
}

// leaseSeconds converts a lease for the wire. A positive lease never rounds
// down to 0, which would mean "terminate".
func leaseSeconds(d time.Duration) uint32 {
	s := d / time.Second
	switch {
	case d <= 0:
		return 0
	case s == 0:
		return 1
	case s > 0xFFFFFFFF:
		return 0xFFFFFFFF
	}
	return uint32(s)
}
