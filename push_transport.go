package llq

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	ctls "github.com/coredns/coredns/plugin/pkg/tls"
	"github.com/llqdns/llq/dso"
	"github.com/miekg/dns"
)

// pushTransport is DNS Push Notifications (RFC 8765) over DSO sessions
// (RFC 8490) on llq's TLS listener: a peer of the LLQ transport over the
// same engine. A subscription lives as long as its session; there is no
// lease and no acknowledgement, TCP delivers or the session ends.
type pushTransport struct {
	e    *Engine
	conf atomic.Pointer[tls.Config] // swapped on reload: new handshakes get the new certificate
	ln   net.Listener
	stop chan struct{}  // closed by close
	wg   sync.WaitGroup // the accept loop and every session's goroutines

	mu        sync.Mutex // guards the fields below
	sessions  map[*session]struct{}
	perClient map[netip.Addr]int
	closed    bool

	subs int // subscriptions in all sessions; guarded by e.mu
}

// loadTLS builds the listener's TLS configuration the way CoreDNS's tls
// plugin does: TLS 1.2 and later, the CA (if any) for client certificates.
// The certificate is served whatever name, if any, the client sends in SNI:
// Apple's client sends none.
func loadTLS(cfg *config) (*tls.Config, error) {
	args := []string{cfg.tlsCert, cfg.tlsKey}
	if cfg.tlsCA != "" {
		args = append(args, cfg.tlsCA)
	}
	c, err := ctls.NewTLSConfigFromArgs(args...)
	if err != nil {
		return nil, err
	}
	c.ClientCAs = c.RootCAs
	c.ClientAuth = tls.NoClientCert
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	return c, nil
}

func newPushTransport(e *Engine, cfg *config) (*pushTransport, error) {
	conf, err := loadTLS(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.tlsListen)
	if err != nil {
		return nil, err
	}
	p := &pushTransport{e: e, ln: ln, stop: make(chan struct{}), sessions: make(map[*session]struct{}), perClient: make(map[netip.Addr]int)}
	p.conf.Store(conf)
	p.wg.Add(1)
	holdSpare() // before serving, see acceptLoop
	go p.accept()
	return p, nil
}

// Addr is the TCP address the TLS listener is bound to.
func (p *pushTransport) Addr() net.Addr { return p.ln.Addr() }

// reconfigure picks up a reloaded certificate; live sessions keep theirs.
func (p *pushTransport) reconfigure(cfg *config) error {
	conf, err := loadTLS(cfg)
	if err != nil {
		return err
	}
	p.conf.Store(conf)
	return nil
}

func (p *pushTransport) accept() {
	defer p.wg.Done()
	acceptLoop(p.ln, p.stop, p.e.metrics, p.admit)
}

// admit starts a session on a connection accepted.
func (p *pushTransport) admit(c net.Conn) {
	addr := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	cfg := p.e.config()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return
	}
	// Past a session limit the client still gets a session, which
	// answers its first request SERVFAIL with a Retry Delay and ends:
	// that tells it to come back later, where a closed connection
	// would have it retry at once.
	full := ""
	switch {
	case cfg.maxSessions > 0 && len(p.sessions) >= cfg.maxSessions:
		full = "max-sessions"
	case cfg.maxSessionsPerClient > 0 && p.perClient[addr.Addr()] >= cfg.maxSessionsPerClient:
		full = "max-sessions-per-client"
	}
	s := newSession(p, c, addr)
	if full != "" {
		p.e.metrics.limitRejections.WithLabelValues(full).Inc()
		s.refuse = true
	}
	p.sessions[s] = struct{}{}
	p.perClient[addr.Addr()]++
	p.e.metrics.sessions.Inc()
	p.wg.Add(1)
	p.mu.Unlock()
	go s.serve(cfg.handshakeTimeout)
}

// forget takes an ended session out of the counts.
func (p *pushTransport) forget(s *session) {
	p.mu.Lock()
	delete(p.sessions, s)
	a := s.addr.Addr()
	if p.perClient[a] <= 1 {
		delete(p.perClient, a)
	} else {
		p.perClient[a]--
	}
	p.mu.Unlock()
	p.e.metrics.sessions.Dec()
}

// close stops the listener and ends every session with a Retry Delay
// NOERROR (RFC 8490 section 7.2: the server is going away), giving the
// clients RetryCloseGrace to close before it aborts what is left.
func (p *pushTransport) close() {
	p.ln.Close()
	p.mu.Lock()
	if !p.closed {
		close(p.stop)
	}
	p.closed = true
	live := make([]*session, 0, len(p.sessions))
	for s := range p.sessions {
		live = append(live, s)
	}
	p.mu.Unlock()
	ms := dso.Millis(p.e.config().retryDelay)
	for _, s := range live {
		s.retry(dns.RcodeSuccess, ms, "shutdown")
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(dso.RetryCloseGrace):
		for _, s := range live {
			s.conn.Close()
		}
		<-done
	}
}

// unserved ends, with a Retry Delay REFUSED, every session holding a
// subscription to a name no served zone contains any more: a reloaded
// Corefile dropped its zone (RFC 8490 section 7.2.1).
func (p *pushTransport) unserved() {
	ms := dso.Millis(p.e.config().retryDelay)
	var gone []*session
	p.e.mu.Lock()
	p.mu.Lock()
	for s := range p.sessions {
		for _, sub := range s.subs {
			if b, _ := p.e.backendFor(sub.topic.key.name); b == nil {
				gone = append(gone, s)
				break
			}
		}
	}
	p.mu.Unlock()
	p.e.mu.Unlock()
	for _, s := range gone {
		s.retry(dns.RcodeRefused, ms, "zone-gone")
	}
}

// pushSub is one DNS Push subscription: a SUBSCRIBE's question on a
// session, until UNSUBSCRIBE or the session's end.
type pushSub struct {
	subscription
	sess *session
	id   uint16 // the SUBSCRIBE's MESSAGE ID
}

// changed implements transport: it queues on each session with a
// subscription to t the records that changed, once per session even when
// several of its subscriptions see the change, and wakes their writers
// once the engine lock is released.
func (p *pushTransport) changed(t *topic, added, removed []string, old answerSet, now time.Time) func() {
	var woken []*session
	for _, x := range t.subs {
		sub, mine := x.(*pushSub)
		if !mine {
			continue
		}
		s := sub.sess
		n := 0
		for _, k := range added {
			if s.state(k, +1) {
				s.queueRecord(t.answers[k], true)
				n++
			}
		}
		for _, k := range removed {
			if s.state(k, -1) {
				s.queueRecord(old[k], false)
				n++
			}
		}
		if n > 0 {
			woken = append(woken, s)
		}
	}
	if len(woken) == 0 {
		return nil
	}
	return func() {
		for _, s := range woken {
			s.kick()
		}
	}
}

// handshake runs the TLS handshake within timeout.
func handshake(c *tls.Conn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.HandshakeContext(ctx)
}
