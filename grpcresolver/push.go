package grpcresolver

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
)

// pushSource is a connection to a zone's push server, through which the
// resolver subscribes to the questions it watches: a DNS Push session, or
// an LLQ client's socket.
type pushSource interface {
	// subscribe sets up a subscription to q, with its current answers in.
	// changed is called, from any goroutine and never blocking, after
	// every change to its answers and once when it ends.
	subscribe(ctx context.Context, q dns.Question, changed func()) (pushFeed, error)
	// String names the protocol and server, for logs.
	String() string
	// close ends every subscription and the connection. Against a dead
	// LLQ server it takes the retransmission schedule, so the resolver
	// runs it in the background.
	close()
}

// pushFeed is one subscription.
type pushFeed interface {
	answers() []dns.RR
	// err is nil while the subscription is live, then says why it ended.
	err() error
	// check proves the server still holds the subscription.
	check(ctx context.Context) error
	close()
}

// pushDialTimeout bounds the connection and TLS handshake to a DNS Push
// server, within setupTimeout.
const pushDialTimeout = 10 * time.Second

// dialPush discovers the zone's push server through the DNS server and
// connects to it: DNS Push when the zone advertises it and the server
// takes a session, else LLQ, as opts.Proto allows.
func dialPush(ctx context.Context, server, name string, opts Options) (pushSource, error) {
	var pushErr error
	if opts.Proto != client.ProtoLLQ {
		addr, target, _, err := client.DiscoverPush(ctx, server, name)
		if err == nil {
			// A push server that swallows packets must leave time for LLQ.
			dctx, cancel := context.WithTimeout(ctx, pushDialTimeout)
			src, err := dialDSO(dctx, addr, target, opts.Push)
			cancel()
			if err == nil {
				return src, nil
			}
			pushErr = err
		} else {
			pushErr = err
		}
		if opts.Proto == client.ProtoPush {
			return nil, pushErr
		}
		if !errors.Is(pushErr, client.ErrNoService) {
			logger.Infof("%s: DNS Push: %v; trying LLQ", name, pushErr)
		}
	}
	addr, _, err := client.Discover(ctx, server, name)
	if err != nil {
		return nil, err
	}
	return dialLLQ(addr, opts.Client)
}

// dsoSource subscribes over one DNS Push session (RFC 8765).
type dsoSource struct{ c *client.PushClient }

func dialDSO(ctx context.Context, addr netip.AddrPort, target string, opts client.PushOptions) (*dsoSource, error) {
	if opts.ServerName == "" && target != "" {
		opts.ServerName = strings.TrimSuffix(target, ".")
	}
	c, err := client.DialPush(ctx, addr, opts)
	if err != nil {
		return nil, err
	}
	return &dsoSource{c: c}, nil
}

func (s *dsoSource) String() string { return "DNS Push server " + s.c.Server().String() }

func (s *dsoSource) subscribe(ctx context.Context, q dns.Question, changed func()) (pushFeed, error) {
	sub, err := s.c.Subscribe(ctx, q)
	if err != nil {
		return nil, err
	}
	// The answers arrive in a PUSH after the SUBSCRIBE's response; a
	// Keepalive answered proves they are in (see PushClient.Ping).
	if err := s.c.Ping(ctx); err != nil {
		sub.Close()
		return nil, err
	}
	go func() {
		for range sub.Events() {
			changed()
		}
		changed()
	}()
	return &dsoFeed{sub: sub, c: s.c}, nil
}

func (s *dsoSource) close() { s.c.Close() }

type dsoFeed struct {
	sub *client.PushSubscription
	c   *client.PushClient
}

func (f *dsoFeed) answers() []dns.RR               { return f.sub.Answers() }
func (f *dsoFeed) err() error                      { return f.sub.Err() }
func (f *dsoFeed) close()                          { f.sub.Close() }
func (f *dsoFeed) check(ctx context.Context) error { return f.c.Ping(ctx) }

// llqSource subscribes over one LLQ client: one UDP socket for all of a
// resolver's questions.
type llqSource struct {
	c    *client.Client
	opts client.Options
}

func dialLLQ(addr netip.AddrPort, opts client.Options) (*llqSource, error) {
	c, err := client.Dial(addr, opts)
	if err != nil {
		return nil, err
	}
	return &llqSource{c: c, opts: opts}, nil
}

func (s *llqSource) String() string { return "LLQ server " + s.c.Server().String() }

func (s *llqSource) subscribe(ctx context.Context, q dns.Question, changed func()) (pushFeed, error) {
	sub, err := s.c.Subscribe(ctx, q)
	if err != nil {
		return nil, err
	}
	// The channel closes when the subscription ends, for whatever reason.
	go func() {
		for range sub.Events() {
			changed()
		}
		changed()
	}()
	return &llqFeed{sub: sub, lease: s.opts.Lease}, nil
}

func (s *llqSource) close() { s.c.Close() }

type llqFeed struct {
	sub   *client.Subscription
	lease time.Duration
}

func (f *llqFeed) answers() []dns.RR { return f.sub.Answers() }
func (f *llqFeed) err() error        { return f.sub.Err() }
func (f *llqFeed) close()            { f.sub.Close() }

func (f *llqFeed) check(ctx context.Context) error {
	lease := f.lease
	if lease <= 0 {
		lease = client.DefaultLease
	}
	_, err := f.sub.Refresh(ctx, lease)
	return err
}
