package client

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Subscribe sets up an LLQ for q with the UDP four-way handshake (RFC 8764
// 5.2): Setup Request, Setup Challenge, Challenge Response, ACK+Answers.
// Each request is retransmitted on the RFC schedule; ctx bounds the whole
// handshake. A refusal is returned as an *Error, silence as a *NoReplyError.
func (c *Client) Subscribe(ctx context.Context, q dns.Question) (*Subscription, error) {
	q.Name = dns.Fqdn(q.Name)
	if q.Qclass == 0 {
		q.Qclass = dns.ClassINET
	}
	if err := c.admit(q); err != nil {
		return nil, err
	}
	want := c.opts.Lease

	setup := c.request(q, wire.OpSetup, 0, leaseSeconds(want))
	r, err := c.exchange(ctx, setup, "SETUP request")
	if err != nil {
		return nil, err
	}
	llq, err := checkReply(r, wire.OpSetup)
	if err != nil {
		return nil, err
	}
	if llq.Id == 0 {
		return nil, fmt.Errorf("%w: setup challenge carries LLQ ID 0", ErrProtocol)
	}

	// Known from here on, so that events racing the ACK+Answers are kept
	// for it rather than dropped unacknowledged.
	s := newSubscription(c, q, llq.Id, want)
	c.mu.Lock()
	if other, dup := c.subs[s.id]; dup {
		c.mu.Unlock()
		if sameQuestion(other.q, q) {
			return nil, fmt.Errorf("%w: %s", ErrDuplicate, questionString(q))
		}
		return nil, fmt.Errorf("%w: server handed out LLQ ID %#x twice", ErrProtocol, s.id)
	}
	c.subs[s.id] = s
	c.mu.Unlock()

	ack, granted, err := c.challengeResponse(ctx, s, llq.LeaseLife)
	if err != nil {
		s.end(err)
		return nil, err
	}
	early, ok := s.establish(ack.Answer, time.Duration(granted)*time.Second)
	if !ok {
		return nil, s.Err() // the socket failed under the handshake
	}
	if c.opts.OnEvent != nil {
		for _, ev := range early {
			c.opts.OnEvent(s, ev)
		}
	}

	// Close may have listed the live subscriptions before this one went
	// live; it would then leave it for the lease to expire.
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if closing {
		s.Close()
		return nil, ErrClosed
	}
	return s, nil
}

// admit refuses a Subscribe that cannot work: on a closing client, or for a
// question this client already watches. Servers key LLQs by client address,
// port and question (ours derives the ID from them), so a second setup from
// the same socket would only reach the first LLQ again.
func (c *Client) admit(q dns.Question) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return ErrClosed
	}
	for _, s := range c.subs {
		if sameQuestion(s.q, q) {
			return fmt.Errorf("%w: %s", ErrDuplicate, questionString(q))
		}
	}
	return nil
}

func sameQuestion(a, b dns.Question) bool {
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

func questionString(q dns.Question) string {
	return q.Name + " " + dns.ClassToString[q.Qclass] + " " + dns.TypeToString[q.Qtype]
}

// challengeResponse sends the Challenge Response echoing the challenge's ID
// and lease, and returns the ACK+Answers and the lease it grants. A fresh DNS
// ID keeps a late duplicate challenge from being taken for the ACK.
func (c *Client) challengeResponse(ctx context.Context, s *Subscription, lease uint32) (*dns.Msg, uint32, error) {
	m := c.request(s.q, wire.OpSetup, s.id, lease)
	r, err := c.exchange(ctx, m, "challenge response")
	if err != nil {
		return nil, 0, err
	}
	// The answers did not fit: a truncated reply may have lost its OPT too,
	// so do not judge it; ask again over TCP.
	if r.Truncated {
		if r, err = c.challengeResponseTCP(ctx, s, lease); err != nil {
			return nil, 0, fmt.Errorf("llq: ACK+Answers was truncated, and over TCP: %w", err)
		}
	}
	llq, err := checkReply(r, wire.OpSetup)
	if err != nil {
		return nil, 0, err
	}
	if llq.Id != s.id {
		return nil, 0, fmt.Errorf("%w: ACK+Answers is for LLQ %#x, not %#x", ErrProtocol, llq.Id, s.id)
	}
	if llq.LeaseLife != 0 {
		lease = llq.LeaseLife
	}
	return r, lease, nil
}

// challengeResponseTCP repeats the Challenge Response over TCP to the same
// server address and port, for an ACK+Answers too large for UDP.
func (c *Client) challengeResponseTCP(ctx context.Context, s *Subscription, lease uint32) (*dns.Msg, error) {
	local := c.LocalAddr()
	m := c.request(s.q, wire.OpSetup, s.id, lease)
	m.Id = dns.Id()
	if c.opts.TCPEventPort {
		wire.Options(m)[0].Error = local.Port()
	}

	// Leave from the same address as the UDP socket, since servers (dnsextd
	// for one) know the LLQ by client address.
	d := &net.Dialer{}
	if !local.Addr().IsUnspecified() {
		d.LocalAddr = &net.TCPAddr{IP: local.Addr().AsSlice(), Zone: local.Addr().Zone()}
	}
	// The same budget a UDP exchange gets for all its retransmissions.
	tc := &dns.Client{Net: "tcp", Dialer: d, Timeout: 7 * c.opts.RetryInterval}
	r, _, err := tc.ExchangeContext(ctx, m, c.server.String())
	return r, err
}
