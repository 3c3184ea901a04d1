package client

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/miekg/dns"
)

// PushSubscription is one DNS Push subscription on a PushClient's session.
// Its answer set starts empty: the server sends the current answers in a
// PUSH right after accepting the SUBSCRIBE, and they arrive as the first
// Event.
type PushSubscription struct {
	feed // its state is handshaking until the SUBSCRIBE response
	c    *PushClient
	q    dns.Question
	id   uint16 // the SUBSCRIBE's MESSAGE ID, which names the subscription
}

// Subscribe sends a SUBSCRIBE for q (RFC 8765 section 6.2) and waits for
// the server's response. A refusal is a *PushError (NOTAUTH for a name
// outside the server's zones, SERVFAIL with a Retry Delay when it is
// overloaded); the session stays up. TYPE and CLASS 255 mean every type and
// every class. A second subscription to the same question on one session
// would be fatal to it (RFC 8765 section 6.2.1), so it is refused here with
// ErrDuplicate.
func (c *PushClient) Subscribe(ctx context.Context, q dns.Question) (*PushSubscription, error) {
	q.Name = dns.Fqdn(q.Name)
	if q.Qclass == 0 {
		q.Qclass = dns.ClassINET
	}
	s := &PushSubscription{feed: newFeed(c.opts.EventBuffer), c: c, q: q}
	c.mu.Lock()
	for _, o := range c.subs {
		if sameQuestion(o.q, q) {
			c.mu.Unlock()
			return nil, fmt.Errorf("%w: %s", ErrDuplicate, questionString(q))
		}
	}
	c.hadSubs = true
	c.mu.Unlock()

	r, err := c.request(ctx, dso.TypeSubscribe, s, func(b *dso.Builder) error { return b.Subscribe(q) })
	if err != nil {
		s.end(err)
		return nil, err
	}
	if r.rcode != dns.RcodeSuccess {
		return nil, s.Err()
	}
	return s, nil
}

// ID returns the SUBSCRIBE's MESSAGE ID, which names the subscription.
func (s *PushSubscription) ID() uint16 { return s.id }

// Question returns the question the subscription watches.
func (s *PushSubscription) Question() dns.Question { return s.q }

// Close cancels the subscription with an UNSUBSCRIBE (RFC 8765 section
// 6.4), which has no response. Closing an ended subscription does nothing.
func (s *PushSubscription) Close() error {
	if !s.stop(ErrClosed) {
		return nil
	}
	// UNSUBSCRIBE first: the session may close as soon as it has no
	// subscription left (inactivity timeout 0).
	err := s.c.unsubscribe(s)
	s.c.subscriptionEnded(s)
	return err
}

func (c *PushClient) unsubscribe(s *PushSubscription) error {
	c.mu.Lock()
	gone := c.err != nil
	c.mu.Unlock()
	if gone {
		return nil // the session took the subscription with it
	}
	return c.send(0, func(b *dso.Builder) error { b.Unsubscribe(s.id); return nil })
}

// activate puts the subscription live on its NOERROR response.
func (s *PushSubscription) activate() {
	s.mu.Lock()
	if s.state == handshaking {
		s.state = live
	}
	s.mu.Unlock()
}

// end stops the subscription with err, tells the session, and reports
// whether this call did it.
func (s *PushSubscription) end(err error) bool {
	if !s.stop(err) {
		return false
	}
	s.c.subscriptionEnded(s)
	return true
}

// stop is end without telling the session.
func (s *PushSubscription) stop(err error) bool { return s.finish(err, nil) }

// push applies a PUSH message to every live subscription it matches. A
// record that matches none is ignored (an UNSUBSCRIBE may have crossed it,
// RFC 8765 section 6.3.1); a change matching two subscriptions, say type A
// and type ANY, applies to both.
func (c *PushClient) push(m dso.Message, p dso.TLV) error {
	rrs, err := dso.ParsePush(m, p, nil)
	if err != nil {
		return fmt.Errorf("llq: %s sent a bad PUSH: %w: %w", c.server, ErrProtocol, err)
	}
	if len(m.Raw) > dso.MaxPushLen {
		return fmt.Errorf("llq: %s sent a %d-byte PUSH, over %d: %w", c.server, len(m.Raw), dso.MaxPushLen, ErrProtocol)
	}
	if m.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("llq: %s sent a PUSH with rcode %s: %w", c.server, rcodeName(m.Rcode), ErrProtocol)
	}
	now := time.Now()
	c.mu.Lock()
	subs := make([]*PushSubscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	for _, s := range subs {
		s.apply(rrs, now)
	}
	return nil
}

// apply applies the records of a PUSH that concern s and delivers an Event
// when any did.
func (s *PushSubscription) apply(rrs []dns.RR, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != live {
		return
	}
	touched := false
	ev := Event{Time: now}
	for _, rr := range rrs {
		h := rr.Header()
		if !strings.EqualFold(h.Name, s.q.Name) {
			continue
		}
		switch dso.OpOf(rr) {
		case dso.OpAdd:
			if !s.matches(h.Rrtype, h.Class) {
				continue
			}
			touched = true
			if s.answers.add(rr) {
				ev.Added = append(ev.Added, dns.Copy(rr))
			}
		case dso.OpRemove:
			if !s.matches(h.Rrtype, h.Class) {
				continue
			}
			touched = true
			if old := s.answers.remove(rr); old != nil {
				ev.Removed = append(ev.Removed, old)
			}
		case dso.OpRemoveCollective:
			// CLASS 255 removes every class, TYPE then ignored; TYPE 255
			// removes every type of the class.
			for k, held := range s.answers {
				hh := held.Header()
				if (h.Class == dns.ClassANY || hh.Class == h.Class) &&
					(h.Class == dns.ClassANY || h.Rrtype == dns.TypeANY || hh.Rrtype == h.Rrtype) {
					delete(s.answers, k)
					ev.Removed = append(ev.Removed, held)
				}
			}
			touched = touched || s.matches(h.Rrtype, h.Class) || h.Class == dns.ClassANY || h.Rrtype == dns.TypeANY
		}
	}
	if touched {
		s.deliverLocked(ev)
	}
}

// matches reports whether a record of rrtype and class belongs to the
// subscription's question, where 255 in the question means all.
func (s *PushSubscription) matches(rrtype, class uint16) bool {
	return (s.q.Qtype == dns.TypeANY || s.q.Qtype == rrtype) && (s.q.Qclass == dns.ClassANY || s.q.Qclass == class)
}
