package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/miekg/dns"
)

// DNS Push (RFC 8765) over a DSO session (RFC 8490) on TLS: the second
// protocol of this package. A PushClient is one session to one server; its
// subscriptions live as long as the session. Losing the session loses them
// all, each ending with the session's error: Watch sets everything up again,
// honouring a Retry Delay.

// Push defaults.
const (
	// DefaultPushKeepalive is the keepalive interval the client asks for:
	// Apple's, an hour. The server's answer applies.
	DefaultPushKeepalive = time.Hour
	// DefaultPushInactivity is the inactivity timeout the client asks for.
	DefaultPushInactivity = dso.DefaultTimeout
	// DefaultPushPort is where DNS Push is served when no SRV says
	// otherwise: DNS over TLS's port.
	DefaultPushPort = 853
)

// minKeepaliveInterval is the smallest keepalive interval a server may
// grant (RFC 8490 section 7.1.1); a variable so tests need not wait for it.
var minKeepaliveInterval = dso.MinKeepaliveInterval

// PushOptions configures a PushClient. The zero value uses TLS with the
// system's roots and checks the server name given in ServerName, or the
// server's address when that is empty.
type PushOptions struct {
	// TLS is the TLS configuration; it is cloned. Nil means system roots
	// (or CAFile's) and ServerName.
	TLS *tls.Config
	// CAFile, when set, is a PEM file of the CA certificates to trust
	// instead of the system's roots.
	CAFile string
	// ServerName is the name the certificate must carry (the SRV target
	// when discovered); empty means the server's IP address.
	ServerName string

	// Keepalive and Inactivity are what the client asks for in its first
	// Keepalive request; the server's answer applies. Defaults 1h and 15s.
	Keepalive, Inactivity time.Duration

	// EventBuffer is the capacity of each subscription's Events channel;
	// see Options.EventBuffer. Default 256.
	EventBuffer int

	// OnMessage, when set, sees every DSO message sent or received (without
	// the length prefix), before it is acted on. b is only valid during the
	// call. It runs on the reader goroutine for received messages and must
	// not block.
	OnMessage func(dir Direction, b []byte)
}

func (o *PushOptions) setDefaults() {
	if o.Keepalive <= 0 {
		o.Keepalive = DefaultPushKeepalive
	}
	if o.Inactivity <= 0 {
		o.Inactivity = DefaultPushInactivity
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = DefaultEventBuffer
	}
}

// tlsConfig builds the TLS configuration for server.
func (o *PushOptions) tlsConfig(server netip.AddrPort) (*tls.Config, error) {
	var cfg *tls.Config
	if o.TLS != nil {
		cfg = o.TLS.Clone()
	} else {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("llq: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("llq: CA file %s holds no PEM certificate", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	if cfg.ServerName == "" {
		cfg.ServerName = o.ServerName
	}
	if cfg.ServerName == "" {
		cfg.ServerName = server.Addr().String()
	}
	return cfg, nil
}

// PushClient is one DSO session with a DNS Push server over TLS. One reader
// goroutine serves every subscription on it.
type PushClient struct {
	conn   net.Conn
	server netip.AddrPort
	opts   PushOptions
	done   chan struct{} // closed when the reader has exited

	wmu sync.Mutex // one message per Write, built in b
	b   dso.Builder

	mu        sync.Mutex
	pending   map[uint16]*pushRequest      // requests awaiting their response, by MESSAGE ID
	subs      map[uint16]*PushSubscription // by SUBSCRIBE MESSAGE ID, from SUBSCRIBE until its end
	nextID    uint16
	keepalive dso.Keepalive // values in force: the server's
	kaTimer   *time.Timer   // sends keepalive traffic when the client was silent for an interval
	kaWaiting bool          // a keepalive request is unanswered
	idleTimer *time.Timer   // closes the session when idle past the inactivity timeout
	hadSubs   bool
	err       error // why the session ended; nil while it runs
}

// pushRequest is a DSO request awaiting its response.
type pushRequest struct {
	typ  uint16
	sub  *PushSubscription // for SUBSCRIBE
	done chan pushResponse // buffered 1; nil when nobody waits
}

type pushResponse struct {
	rcode int
	retry *uint32 // Retry Delay additional TLV, ms
	err   error   // the session ended first
}

// DialPush opens a TLS connection to a DNS Push server and establishes the
// DSO session with a Keepalive request (RFC 8490 section 5.1): it returns
// once the server answered NOERROR, with the keepalive values it granted in
// force. A server that does not do DSO answers with an rcode: a *PushError
// with NoDSO true.
func DialPush(ctx context.Context, server netip.AddrPort, opts PushOptions) (*PushClient, error) {
	if !server.IsValid() {
		return nil, fmt.Errorf("llq: invalid server address %q", server)
	}
	opts.setDefaults()
	cfg, err := opts.tlsConfig(server)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", server.String())
	if err != nil {
		return nil, fmt.Errorf("llq: %w", err)
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("llq: TLS with %s: %w", server, err)
	}
	c := newPushClient(conn, server, opts)
	want := dso.Keepalive{Inactivity: dso.Millis(opts.Inactivity), Interval: dso.Millis(opts.Keepalive)}
	r, err := c.request(ctx, dso.TypeKeepalive, nil, func(b *dso.Builder) error { b.Keepalive(want); return nil })
	if err != nil {
		c.abort(err)
		<-c.done
		return nil, err
	}
	if r.rcode != dns.RcodeSuccess {
		err := &PushError{Op: "Keepalive", Rcode: r.rcode, Retry: retryOf(r.retry)}
		c.abort(err)
		<-c.done
		return nil, err
	}
	return c, nil
}

// newPushClient starts a session's reader on conn; the session is not
// established until a request has drawn a NOERROR response.
func newPushClient(conn net.Conn, server netip.AddrPort, opts PushOptions) *PushClient {
	c := &PushClient{
		conn:      conn,
		server:    server,
		opts:      opts,
		done:      make(chan struct{}),
		pending:   make(map[uint16]*pushRequest),
		subs:      make(map[uint16]*PushSubscription),
		keepalive: dso.Keepalive{Inactivity: uint32(dso.DefaultTimeout / time.Millisecond), Interval: uint32(dso.DefaultTimeout / time.Millisecond)},
	}
	go c.read()
	return c
}

// Server returns the address of the session's server.
func (c *PushClient) Server() netip.AddrPort { return c.server }

// Keepalive returns the keepalive values in force, as the server granted
// them, in milliseconds (dso.Infinite for none).
func (c *PushClient) Keepalive() dso.Keepalive {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keepalive
}

// Done is closed when the session has ended; Err then says why.
func (c *PushClient) Done() <-chan struct{} { return c.done }

// Err returns why the session ended: ErrClosed after Close, a
// *RetryDelayError when the server asked the client to go away, or the
// failure that lost it. It is nil while the session runs.
func (c *PushClient) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the session: every subscription ends with ErrClosed, and the
// connection is closed (TLS close_notify, then FIN), which is how a client
// ends a DSO session.
func (c *PushClient) Close() error {
	c.abort(ErrClosed)
	<-c.done
	return nil
}

// abort ends the session with err (the first cause wins) and closes the
// connection, which stops the reader.
func (c *PushClient) abort(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.kaTimer != nil {
		c.kaTimer.Stop()
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	pending, subs := c.pending, c.subs
	c.pending, c.subs = map[uint16]*pushRequest{}, map[uint16]*PushSubscription{}
	c.mu.Unlock()

	c.conn.Close()
	for _, r := range pending {
		if r.done != nil {
			r.done <- pushResponse{err: err}
		}
	}
	for _, s := range subs {
		s.end(err)
	}
}

// send writes one message built by build, holding the write lock so that
// messages never interleave, and restarts the keepalive timer: any message
// the client sends is keepalive traffic.
func (c *PushClient) send(id uint16, build func(*dso.Builder) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.b.Start(id, false, 0)
	if err := build(&c.b); err != nil {
		return err
	}
	if c.opts.OnMessage != nil {
		c.opts.OnMessage(Sent, c.b.Message())
	}
	if _, err := c.conn.Write(c.b.Frame()); err != nil {
		err = fmt.Errorf("llq: writing to %s: %w", c.server, err)
		go c.abort(err)
		return err
	}
	c.mu.Lock()
	c.armKeepaliveLocked()
	c.mu.Unlock()
	return nil
}

// request sends a DSO request of type typ (built by build) under a fresh
// MESSAGE ID and waits for its response. sub, for a SUBSCRIBE, is entered
// under that ID before the request leaves, so that the reader can put it
// live on the response before any PUSH that follows it.
func (c *PushClient) request(ctx context.Context, typ uint16, sub *PushSubscription, build func(*dso.Builder) error) (pushResponse, error) {
	req := &pushRequest{typ: typ, sub: sub, done: make(chan pushResponse, 1)}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return pushResponse{}, err
	}
	id := c.newIDLocked()
	c.pending[id] = req
	if sub != nil {
		sub.id = id
		c.subs[id] = sub
		c.stopIdleLocked()
	}
	c.mu.Unlock()

	if err := c.send(id, build); err != nil {
		c.forget(id, sub, err)
		return pushResponse{}, err
	}
	// RFC 8490 section 5.1: 30 s without a response means the server
	// does not do DSO.
	t := time.NewTimer(dso.ResponseTimeout)
	defer t.Stop()
	select {
	case r := <-req.done:
		return r, r.err
	case <-ctx.Done():
		c.abandon(id, sub)
		return pushResponse{}, ctx.Err()
	case <-t.C:
		err := fmt.Errorf("llq: no response from %s to %s in %s: %w", c.server, dso.TypeName(typ), dso.ResponseTimeout, ErrProtocol)
		c.abort(err)
		return pushResponse{}, err
	}
}

// abandon stops waiting for a request's response. The response still
// comes and the reader drops it; a SUBSCRIBE is cancelled with UNSUBSCRIBE,
// which RFC 8765 section 6.4 allows before its response.
func (c *PushClient) abandon(id uint16, sub *PushSubscription) {
	c.mu.Lock()
	if r := c.pending[id]; r != nil {
		r.done = nil
		r.sub = nil
	}
	c.mu.Unlock()
	if sub != nil && sub.stop(context.Canceled) {
		c.unsubscribe(sub)
		c.subscriptionEnded(sub)
	}
}

func (c *PushClient) forget(id uint16, sub *PushSubscription, err error) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
	if sub != nil {
		sub.end(err)
	}
}

// newIDLocked returns a MESSAGE ID that no outstanding request and no
// subscription uses (RFC 8765 section 6.2: a SUBSCRIBE's ID names the
// subscription for as long as it lasts).
func (c *PushClient) newIDLocked() uint16 {
	for {
		c.nextID++
		id := c.nextID
		if id == 0 {
			continue
		}
		if _, used := c.pending[id]; used {
			continue
		}
		if _, used := c.subs[id]; used {
			continue
		}
		return id
	}
}

// armKeepaliveLocked (re)starts the keepalive timer for the interval in
// force: when the client has sent nothing for that long it sends a
// Keepalive request (RFC 8490 section 6.5).
func (c *PushClient) armKeepaliveLocked() {
	if c.err != nil {
		return
	}
	d, ok := dso.Duration(c.keepalive.Interval)
	if !ok {
		if c.kaTimer != nil {
			c.kaTimer.Stop()
		}
		return
	}
	if c.kaTimer == nil {
		c.kaTimer = time.AfterFunc(d, c.keepaliveDue)
		return
	}
	c.kaTimer.Reset(d)
}

// keepaliveDue runs when the client has been silent for a keepalive
// interval. A keepalive request still unanswered from the last interval
// means the server or the path is gone.
func (c *PushClient) keepaliveDue() {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if c.kaWaiting {
		c.mu.Unlock()
		c.abort(fmt.Errorf("llq: %s did not answer a Keepalive request within the keepalive interval: %w", c.server, ErrProtocol))
		return
	}
	c.kaWaiting = true
	id := c.newIDLocked()
	c.pending[id] = &pushRequest{typ: dso.TypeKeepalive}
	want := dso.Keepalive{Inactivity: dso.Millis(c.opts.Inactivity), Interval: dso.Millis(c.opts.Keepalive)}
	c.mu.Unlock()
	c.send(id, func(b *dso.Builder) error { b.Keepalive(want); return nil })
}

// subscriptionEnded runs when a subscription ends: with none left the
// inactivity timer runs, and the session closes when it fires (RFC 8490
// section 6.2: a client closes an idle session, the server aborts one
// that lingers).
func (c *PushClient) subscriptionEnded(s *PushSubscription) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.subs[s.id] == s {
		delete(c.subs, s.id)
	}
	if len(c.subs) > 0 || !c.hadSubs || c.err != nil {
		return
	}
	d, ok := dso.Duration(c.keepalive.Inactivity)
	if !ok {
		return
	}
	c.stopIdleLocked()
	c.idleTimer = time.AfterFunc(d, func() {
		c.mu.Lock()
		idle := len(c.subs) == 0 && c.err == nil
		c.mu.Unlock()
		if idle {
			c.abort(ErrIdle)
		}
	})
}

func (c *PushClient) stopIdleLocked() {
	if c.idleTimer != nil {
		c.idleTimer.Stop()
		c.idleTimer = nil
	}
}

// read is the session's only reader.
func (c *PushClient) read() {
	defer close(c.done)
	buf := make([]byte, 0, 4096)
	for {
		msg, err := dso.ReadMessage(c.conn, buf, dso.MaxMessageLen)
		if err != nil {
			switch {
			case errors.Is(err, net.ErrClosed):
				err = ErrClosed
			case errors.Is(err, io.EOF):
				err = fmt.Errorf("llq: %s closed the DSO session: %w", c.server, ErrSessionLost)
			default:
				err = fmt.Errorf("llq: reading from %s: %w: %w", c.server, ErrSessionLost, err)
			}
			c.abort(err)
			return
		}
		if cap(msg) > cap(buf) {
			buf = msg[:0]
		}
		if c.opts.OnMessage != nil {
			c.opts.OnMessage(Received, msg)
		}
		if err := c.handle(msg); err != nil {
			c.abort(err)
			return
		}
	}
}

// handle acts on one message from the server. An error is fatal to the
// session: RFC 8490 and 8765 make every malformed message and every role
// violation a reason to abort.
func (c *PushClient) handle(raw []byte) error {
	m, err := dso.Parse(raw)
	if err != nil {
		return fmt.Errorf("llq: %s sent a bad DSO message: %w: %w", c.server, ErrProtocol, err)
	}
	if m.Response {
		return c.response(m)
	}
	p, _ := m.Primary()
	if !m.Unidirectional() {
		// A request from the server. The DNS Push TLVs and Keepalive are
		// the client's to send; anything else unknown gets DSOTYPENI
		// (RFC 8490 section 5.1.1).
		switch p.Type {
		case dso.TypeKeepalive, dso.TypeRetryDelay, dso.TypePadding,
			dso.TypeSubscribe, dso.TypePush, dso.TypeUnsubscribe, dso.TypeReconfirm:
			return fmt.Errorf("llq: %s sent a %s request: %w", c.server, dso.TypeName(p.Type), ErrProtocol)
		}
		id := m.ID
		go c.respond(id, dso.RcodeDSOTypeNI)
		return nil
	}
	switch p.Type {
	case dso.TypePush:
		return c.push(m, p)
	case dso.TypeKeepalive:
		k, err := dso.ParseKeepalive(p)
		if err != nil {
			return fmt.Errorf("llq: %s: %w: %w", c.server, ErrProtocol, err)
		}
		return c.setKeepalive(k)
	case dso.TypeRetryDelay:
		ms, err := dso.ParseRetryDelay(p)
		if err != nil {
			return fmt.Errorf("llq: %s: %w: %w", c.server, ErrProtocol, err)
		}
		d, ok := dso.Duration(ms)
		return &RetryDelayError{Server: c.server, Rcode: m.Rcode, Delay: d, Never: !ok}
	}
	return fmt.Errorf("llq: %s sent a unidirectional %s: %w", c.server, dso.TypeName(p.Type), ErrProtocol)
}

// respond answers a server's request with a header-only response.
func (c *PushClient) respond(id uint16, rcode int) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.b.Start(id, true, rcode)
	if c.opts.OnMessage != nil {
		c.opts.OnMessage(Sent, c.b.Message())
	}
	c.conn.Write(c.b.Frame())
}

// response matches a response to its request. One for no request of ours
// is fatal (RFC 8490 section 5.4.4).
func (c *PushClient) response(m dso.Message) error {
	c.mu.Lock()
	req := c.pending[m.ID]
	delete(c.pending, m.ID)
	c.mu.Unlock()
	if req == nil {
		return fmt.Errorf("llq: %s sent a response to no request (ID %d): %w", c.server, m.ID, ErrProtocol)
	}
	r, err := c.responseTo(req, m)
	if err != nil {
		// Fatal: the session ends, and the request, no longer pending,
		// learns it here.
		r = pushResponse{err: err}
	}
	if req.done != nil {
		req.done <- r
	}
	return err
}

// responseTo reads the response m to req and acts on it.
func (c *PushClient) responseTo(req *pushRequest, m dso.Message) (pushResponse, error) {
	r := pushResponse{rcode: m.Rcode}
	for it := m.TLVs(); ; {
		t, ok := it.Next()
		if !ok {
			break
		}
		switch t.Type {
		case dso.TypePush, dso.TypeSubscribe, dso.TypeUnsubscribe, dso.TypeReconfirm:
			if t.Type != req.typ {
				return r, fmt.Errorf("llq: %s sent %s in a response: %w", c.server, dso.TypeName(t.Type), ErrProtocol)
			}
		case dso.TypeRetryDelay:
			ms, err := dso.ParseRetryDelay(t)
			if err != nil {
				return r, fmt.Errorf("llq: %s: %w: %w", c.server, ErrProtocol, err)
			}
			r.retry = &ms
		case dso.TypeKeepalive:
			if req.typ != dso.TypeKeepalive || m.Rcode != dns.RcodeSuccess {
				continue
			}
			k, err := dso.ParseKeepalive(t)
			if err != nil {
				return r, fmt.Errorf("llq: %s: %w: %w", c.server, ErrProtocol, err)
			}
			if err := c.setKeepalive(k); err != nil {
				return r, err
			}
			c.mu.Lock()
			c.kaWaiting = false
			c.mu.Unlock()
		}
	}
	switch req.typ {
	case dso.TypeKeepalive:
		if m.Rcode == dns.RcodeSuccess {
			if p, ok := m.Primary(); !ok || p.Type != dso.TypeKeepalive {
				return r, fmt.Errorf("llq: %s answered a Keepalive request without Keepalive values: %w", c.server, ErrProtocol)
			}
		}
		if m.Rcode == dso.RcodeDSOTypeNI {
			// Keepalive is mandatory to implement.
			return r, fmt.Errorf("llq: %s answered Keepalive with DSOTYPENI: %w", c.server, ErrProtocol)
		}
	case dso.TypeSubscribe:
		// A SUBSCRIBE abandoned before its response has no sub any more:
		// its UNSUBSCRIBE already left.
		if req.sub != nil {
			if m.Rcode == dns.RcodeSuccess {
				req.sub.activate()
			} else {
				req.sub.end(&PushError{Op: "SUBSCRIBE", Rcode: m.Rcode, Retry: retryOf(r.retry)})
			}
		}
	}
	return r, nil
}

// setKeepalive installs the server's keepalive values. An interval under
// ten seconds is fatal (RFC 8490 section 7.1.1).
func (c *PushClient) setKeepalive(k dso.Keepalive) error {
	if d, ok := dso.Duration(k.Interval); ok && d < minKeepaliveInterval {
		return fmt.Errorf("llq: %s set a keepalive interval of %s, under the %s minimum: %w", c.server, d, minKeepaliveInterval, ErrProtocol)
	}
	c.mu.Lock()
	c.keepalive = k
	c.armKeepaliveLocked()
	c.mu.Unlock()
	return nil
}

func retryOf(ms *uint32) time.Duration {
	if ms == nil {
		return 0
	}
	d, ok := dso.Duration(*ms)
	if !ok {
		return time.Duration(1<<63 - 1)
	}
	return d
}

// Ping sends a Keepalive request with the client's preferred values and
// waits for the response, whose values then apply. DSO responders act on
// requests in the order they arrive (RFC 8490 section 5.4), so a server that
// also writes in that order has sent the initial PUSH of every SUBSCRIBE
// made before a Ping by the time the Ping returns.
func (c *PushClient) Ping(ctx context.Context) error {
	want := dso.Keepalive{Inactivity: dso.Millis(c.opts.Inactivity), Interval: dso.Millis(c.opts.Keepalive)}
	r, err := c.request(ctx, dso.TypeKeepalive, nil, func(b *dso.Builder) error { b.Keepalive(want); return nil })
	if err != nil {
		return err
	}
	if r.rcode != dns.RcodeSuccess {
		return &PushError{Op: "Keepalive", Rcode: r.rcode, Retry: retryOf(r.retry)}
	}
	return nil
}
