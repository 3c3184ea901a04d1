package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Private LLQ: LLQ over TLS (advertised as _dns-llq-tls._tcp), the third
// protocol of this package. The connection proves the client's address, so
// setup is two messages (Setup, then ACK + Answers); events, their acks,
// refreshes and the terminating refresh all travel on the connection. The
// LLQs end with it: losing the connection loses them all, each ending with
// the connection's error, and a client sets them up again on a new one.

// PrivateServiceLabel is prepended to a zone to find its private LLQ
// server.
const PrivateServiceLabel = "_dns-llq-tls._tcp."

// DiscoverPrivate finds the private LLQ server for name as DiscoverPush
// finds the DNS Push server, from SRV _dns-llq-tls._tcp.<zone>.
func DiscoverPrivate(ctx context.Context, resolver, name string) (server netip.AddrPort, target, zone string, err error) {
	if zone, err = findZone(ctx, resolver, dns.Fqdn(name)); err != nil {
		return server, "", "", err
	}
	server, target, err = discoverService(ctx, resolver, zone, PrivateServiceLabel, "private LLQ")
	return server, target, zone, err
}

// PrivateOptions configures a PrivateClient: TLS as for DNS Push (TLS,
// CAFile, ServerName of PushOptions; its keepalive fields are unused), the
// lease and when to refresh it as for a Client.
type PrivateOptions struct {
	PushOptions
	Lease     time.Duration // requested lease; default 2h
	RefreshAt float64       // fraction of the granted lease; default 0.8
}

// PrivateClient is one TLS connection to a private LLQ server. One reader
// goroutine serves every LLQ on it.
type PrivateClient struct {
	conn *dns.Conn
	opts PrivateOptions
	done chan struct{} // closed when the reader has exited

	wmu sync.Mutex // one message per write

	mu      sync.Mutex
	pending map[uint16]*privateRequest
	subs    map[uint64]*PrivateSubscription
	err     error // why the connection ended
}

type privateRequest struct {
	q     dns.Question
	reply chan *dns.Msg
	sub   *PrivateSubscription // made by the reader from an ACK, before any event can name it
}

// DialPrivate opens a TLS connection to server and starts its reader.
func DialPrivate(ctx context.Context, server netip.AddrPort, opts PrivateOptions) (*PrivateClient, error) {
	opts.setDefaults()
	if opts.Lease <= 0 {
		opts.Lease = DefaultLease
	}
	if opts.RefreshAt <= 0 || opts.RefreshAt >= 1 {
		opts.RefreshAt = DefaultRefreshAt
	}
	cfg, err := opts.tlsConfig(server)
	if err != nil {
		return nil, err
	}
	d := tls.Dialer{Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", server.String())
	if err != nil {
		return nil, fmt.Errorf("llq: %w", err)
	}
	c := &PrivateClient{conn: &dns.Conn{Conn: conn}, opts: opts, done: make(chan struct{}),
		pending: make(map[uint16]*privateRequest), subs: make(map[uint64]*PrivateSubscription)}
	go c.read()
	return c, nil
}

// Done is closed when the connection has ended; Err then says why.
func (c *PrivateClient) Done() <-chan struct{} { return c.done }

// Err is why the connection ended, nil while it is up.
func (c *PrivateClient) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close terminates every LLQ (a REFRESH with lease 0 each, answered on
// the connection, or not at all within ctx's time) and closes the
// connection; the server would end them with it anyway.
func (c *PrivateClient) Close(ctx context.Context) error {
	c.mu.Lock()
	subs := make([]*PrivateSubscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	var errs []error
	for _, s := range subs {
		if _, err := s.refresh(ctx, 0); err != nil && !errors.Is(err, ErrClosed) {
			errs = append(errs, err)
		}
	}
	c.end(ErrClosed)
	<-c.done
	return errors.Join(errs...)
}

// end closes the connection and ends every LLQ with err, once.
func (c *PrivateClient) end(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	err = c.err
	subs := c.subs
	c.subs = map[uint64]*PrivateSubscription{}
	for _, r := range c.pending {
		close(r.reply)
	}
	c.pending = map[uint16]*privateRequest{}
	c.mu.Unlock()
	c.conn.Close()
	for _, s := range subs {
		s.stop(err)
	}
}

func (c *PrivateClient) write(m *dns.Msg) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.conn.WriteMsg(m)
}

// request sends an LLQ request for q and waits for its reply.
func (c *PrivateClient) request(ctx context.Context, q dns.Question, o *dns.EDNS0_LLQ) (*privateRequest, *dns.Msg, error) {
	m := new(dns.Msg)
	m.Question = []dns.Question{q}
	wire.SetOptions(m, DefaultUDPSize, o)
	req := &privateRequest{q: q, reply: make(chan *dns.Msg, 1)}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, nil, c.err
	}
	for {
		m.Id = dns.Id()
		if _, used := c.pending[m.Id]; !used {
			break
		}
	}
	c.pending[m.Id] = req
	c.mu.Unlock()
	if err := c.write(m); err != nil {
		c.end(fmt.Errorf("%w: %v", ErrSessionLost, err))
		return nil, nil, c.Err()
	}
	select {
	case r, ok := <-req.reply:
		if !ok {
			return nil, nil, c.Err()
		}
		return req, r, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, m.Id)
		c.mu.Unlock()
		return nil, nil, ctx.Err()
	}
}

// read is the reader goroutine: replies to their requests, events to their
// LLQs, each acknowledged, until the connection ends.
func (c *PrivateClient) read() {
	defer close(c.done)
	for {
		m, err := c.conn.ReadMsg()
		if err != nil {
			c.end(fmt.Errorf("%w: %v", ErrSessionLost, err))
			return
		}
		opts := wire.Options(m)
		if !m.Response || len(opts) != 1 {
			continue // a client of one LLQ per message expects no other
		}
		if opts[0].Opcode == wire.OpEvent {
			c.event(m, opts[0])
			continue
		}
		c.mu.Lock()
		req := c.pending[m.Id]
		delete(c.pending, m.Id)
		if req != nil && opts[0].Opcode == wire.OpSetup && opts[0].Error == wire.NoError && opts[0].Id != 0 {
			// The events that follow an ACK (the rest of a large answer
			// set, changes since) may come before Subscribe runs again.
			req.sub = newPrivateSubscription(c, req.q, opts[0].Id, m.Answer)
			c.subs[opts[0].Id] = req.sub
		}
		c.mu.Unlock()
		if req != nil {
			req.reply <- m
		}
	}
}

// event applies an event to its LLQ and acknowledges it, as Apple's
// client does: QR=1, the event's ID and question, the option echoed.
func (c *PrivateClient) event(m *dns.Msg, o *dns.EDNS0_LLQ) {
	c.mu.Lock()
	s := c.subs[o.Id]
	c.mu.Unlock()
	if s == nil {
		return // not ours, or terminated: no ack
	}
	s.apply(m)
	a := new(dns.Msg)
	a.Id, a.Response, a.Question = m.Id, true, m.Question
	wire.SetOptions(a, DefaultUDPSize, wire.NewOption(wire.OpEvent, wire.NoError, o.Id, o.LeaseLife))
	if err := c.write(a); err != nil {
		go c.end(fmt.Errorf("%w: %v", ErrSessionLost, err))
	}
}

// Subscribe sets up an LLQ for q: a Setup with ID 0, answered by the ACK
// and the current answers (the rest of a large set follows as events).
// A refusal is an *Error; the connection stays up.
func (c *PrivateClient) Subscribe(ctx context.Context, q dns.Question) (*PrivateSubscription, error) {
	q.Name = dns.Fqdn(q.Name)
	if q.Qclass == 0 {
		q.Qclass = dns.ClassINET
	}
	req, r, err := c.request(ctx, q, wire.NewOption(wire.OpSetup, wire.NoError, 0, uint32(c.opts.Lease/time.Second)))
	if err != nil {
		return nil, err
	}
	o, err := checkReply(r, wire.OpSetup)
	if err != nil {
		return nil, err
	}
	if req.sub == nil {
		return nil, fmt.Errorf("%w: ACK without an LLQ ID", ErrProtocol)
	}
	req.sub.granted(time.Duration(o.LeaseLife) * time.Second)
	return req.sub, nil
}

// PrivateSubscription is one private LLQ on a PrivateClient's connection.
type PrivateSubscription struct {
	c      *PrivateClient
	q      dns.Question
	id     uint64
	events chan Event
	done   chan struct{}

	mu      sync.Mutex
	answers answerSet
	timer   *time.Timer
	err     error
	dropped uint64
}

func newPrivateSubscription(c *PrivateClient, q dns.Question, id uint64, answers []dns.RR) *PrivateSubscription {
	return &PrivateSubscription{c: c, q: q, id: id, answers: newAnswerSet(answers),
		events: make(chan Event, c.opts.EventBuffer), done: make(chan struct{})}
}

// ID is the LLQ ID the server gave.
func (s *PrivateSubscription) ID() uint64 { return s.id }

// Answers returns the current answer set.
func (s *PrivateSubscription) Answers() []dns.RR {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answers.list()
}

// Events delivers each applied event; see Options.EventBuffer.
func (s *PrivateSubscription) Events() <-chan Event { return s.events }

// Done is closed when the LLQ has ended; Err then says why.
func (s *PrivateSubscription) Done() <-chan struct{} { return s.done }

// Err is why the LLQ ended, nil while it lives.
func (s *PrivateSubscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close terminates the LLQ: a REFRESH with lease 0.
func (s *PrivateSubscription) Close(ctx context.Context) error {
	_, err := s.refresh(ctx, 0)
	return err
}

// Refresh renews the lease now and returns what the server granted.
func (s *PrivateSubscription) Refresh(ctx context.Context, lease time.Duration) (time.Duration, error) {
	if lease <= 0 {
		lease = s.c.opts.Lease
	}
	return s.refresh(ctx, lease)
}

func (s *PrivateSubscription) refresh(ctx context.Context, lease time.Duration) (time.Duration, error) {
	select {
	case <-s.done:
		return 0, ErrClosed
	default:
	}
	_, r, err := s.c.request(ctx, s.q, wire.NewOption(wire.OpRefresh, wire.NoError, s.id, uint32(lease/time.Second)))
	if err != nil {
		return 0, err
	}
	o, err := checkReply(r, wire.OpRefresh)
	if err != nil {
		return 0, err
	}
	if lease == 0 {
		s.c.mu.Lock()
		delete(s.c.subs, s.id)
		s.c.mu.Unlock()
		s.stop(ErrClosed)
		return 0, nil
	}
	got := time.Duration(o.LeaseLife) * time.Second
	s.granted(got)
	return got, nil
}

// granted arms the next refresh, at RefreshAt of the lease.
func (s *PrivateSubscription) granted(lease time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timer = time.AfterFunc(time.Duration(float64(lease)*s.c.opts.RefreshAt), func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := s.Refresh(ctx, 0); err != nil {
			var e *Error
			if errors.As(err, &e) || errors.Is(err, context.DeadlineExceeded) {
				s.c.mu.Lock()
				delete(s.c.subs, s.id)
				s.c.mu.Unlock()
				s.stop(err)
			}
		}
	})
}

// apply takes an event's adds and removes into the answer set and delivers
// it, the oldest undelivered event making room when the buffer is full.
func (s *PrivateSubscription) apply(m *dns.Msg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	added, removed := s.answers.apply(m.Answer)
	ev := Event{Time: time.Now(), Added: added, Removed: removed, Msg: m}
	for {
		select {
		case s.events <- ev:
			return
		default:
		}
		select {
		case <-s.events:
			s.dropped++
		default:
		}
	}
}

// stop ends the LLQ with err, once.
func (s *PrivateSubscription) stop(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	if s.timer != nil {
		s.timer.Stop()
	}
	close(s.done)
}
