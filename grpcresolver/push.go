package grpcresolver

import (
	"context"
	"net/netip"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
)

// pushSource is a connection to a zone's push server, through which the
// resolver subscribes to the questions it watches. LLQ is the only protocol
// llq's client speaks today; DNS Push slots in as a second implementation,
// tried first when the zone advertises it.
type pushSource interface {
	// subscribe sets up a subscription to q. changed is called, from any
	// goroutine and never blocking, after every change to its answers
	// and once when it ends.
	subscribe(ctx context.Context, q dns.Question, changed func()) (pushFeed, error)
	// String names the protocol and server, for logs.
	String() string
	// close ends every subscription and the connection. It may take the
	// protocol's retransmission schedule against a dead server, so the
	// resolver runs it in the background.
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

// dialPush discovers the push server for name through the DNS server and
// connects to it.
func dialPush(ctx context.Context, server, name string, opts client.Options) (pushSource, error) {
	addr, _, err := client.Discover(ctx, server, name)
	if err != nil {
		return nil, err
	}
	return dialLLQ(addr, opts)
}

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
