package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

type state int

const (
	handshaking state = iota // challenge received, waiting for ACK+Answers
	live
	ended
)

// Subscription is one established LLQ.
type Subscription struct {
	feed
	c  *Client
	q  dns.Question
	id uint64

	// Guarded by feed.mu.
	lease   time.Duration // last granted
	expires time.Time     // when the last granted lease runs out
	want    time.Duration // last requested; asked for again by automatic refreshes
	early   []Event       // events that overtook the ACK+Answers, not yet applied
	timer   *time.Timer   // next automatic refresh
	recent  recentPackets // event packets applied lately, to skip late copies
}

func newSubscription(c *Client, q dns.Question, id uint64, want time.Duration) *Subscription {
	return &Subscription{feed: newFeed(c.opts.EventBuffer), c: c, q: q, id: id, want: want}
}

// ID returns the server-assigned LLQ ID.
func (s *Subscription) ID() uint64 { return s.id }

// Question returns the question the subscription watches.
func (s *Subscription) Question() dns.Question { return s.q }

// Lease returns the lease the server granted last.
func (s *Subscription) Lease() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease
}

func (s *Subscription) live() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == live
}

// Refresh asks the server to extend the lease to lease from now and returns
// what it granted; the automatic refresh is rescheduled from that. A
// NO-SUCH-LLQ answer ends the subscription. Use Close, not a zero lease, to
// terminate.
func (s *Subscription) Refresh(ctx context.Context, lease time.Duration) (time.Duration, error) {
	if lease <= 0 {
		return 0, errors.New("llq: refresh needs a positive lease; Close terminates")
	}
	s.mu.Lock()
	st, err := s.state, s.err
	s.mu.Unlock()
	if st == ended {
		return 0, err
	}
	return s.refresh(ctx, lease)
}

func (s *Subscription) refresh(ctx context.Context, lease time.Duration) (time.Duration, error) {
	m := s.c.request(s.q, wire.OpRefresh, s.id, leaseSeconds(lease))
	r, err := s.c.exchange(ctx, m, "REFRESH")
	if err != nil {
		return 0, err
	}
	llq, err := checkReply(r, wire.OpRefresh)
	if err != nil {
		if e := (*Error)(nil); errors.As(err, &e) && e.Code == wire.NoSuchLLQ {
			s.end(err)
		}
		return 0, err
	}
	if llq.Id != s.id {
		return 0, fmt.Errorf("%w: REFRESH reply is for LLQ %#x, not %#x", ErrProtocol, llq.Id, s.id)
	}
	if llq.LeaseLife == 0 {
		// The server has dropped the LLQ as if we had terminated it.
		err := fmt.Errorf("%w: server granted lease 0 to a REFRESH", ErrProtocol)
		s.end(err)
		return 0, err
	}
	granted := time.Duration(llq.LeaseLife) * time.Second
	s.mu.Lock()
	if s.state == live {
		s.lease, s.want = granted, lease
		s.expires = time.Now().Add(granted)
		s.timer.Reset(s.refreshIn(granted))
	}
	s.mu.Unlock()
	return granted, nil
}

// autoRefresh runs from the lease timer. Losing the refresh loses the
// subscription: it is ended so that the owner sees Events close and can
// decide whether to Subscribe again.
func (s *Subscription) autoRefresh() {
	s.mu.Lock()
	st, want := s.state, s.want
	s.mu.Unlock()
	if st != live {
		return
	}
	_, err := s.refresh(s.ctx, want)
	if err == nil {
		return
	}
	// Silence is no verdict while the lease lasts: on a lossy path all
	// three transmissions of one refresh can be lost, and the LLQ still
	// stands on the server. Try again while the lease has not run out; a
	// request that comes too late draws NO-SUCH-LLQ, which ends it.
	var nr *NoReplyError
	s.mu.Lock()
	left := time.Until(s.expires)
	if errors.As(err, &nr) && s.state == live && left > 0 {
		s.timer.Reset(0)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.end(fmt.Errorf("llq: refresh of LLQ %#x failed, subscription lost: %w", s.id, err))
}

// refreshIn is when to refresh a lease just granted: after RefreshAt of it,
// or earlier for a short lease, so that a refresh whose every transmission
// is lost leaves time to start another round at least one retry interval
// before the lease ends. At RefreshAt 0.8 a lease under forty intervals
// (80 s at the default 2 s) would otherwise get a single round, and at 5 %
// loss each way one round in a thousand is lost whole. It never refreshes
// before half the lease, where Apple's client refreshes.
func (s *Subscription) refreshIn(lease time.Duration) time.Duration {
	r := s.c.opts.RetryInterval
	round := time.Duration(1<<maxAttempts-1) * r // waits of r, 2r, 4r
	at := time.Duration(float64(lease) * s.c.opts.RefreshAt)
	return min(at, max(lease-round-r, lease/2))
}

// Close terminates the LLQ: it stops the subscription locally (Events is
// closed, Err becomes ErrClosed), then sends a REFRESH with lease 0 and
// waits for the reply, retransmitting like a setup. A NO-SUCH-LLQ reply
// counts as success. Closing an ended subscription does nothing.
func (s *Subscription) Close() error {
	if !s.end(ErrClosed) {
		return nil
	}
	m := s.c.request(s.q, wire.OpRefresh, s.id, 0)
	r, err := s.c.exchange(context.Background(), m, "terminate")
	if err != nil {
		return err
	}
	if _, err := checkReply(r, wire.OpRefresh); err != nil {
		if e := (*Error)(nil); errors.As(err, &e) && e.Code == wire.NoSuchLLQ {
			return nil
		}
		return err
	}
	return nil
}

// establish installs the ACK+Answers and starts the lease timer. Events that
// arrived before it are applied now, in order, on top of the initial set,
// and returned. ok is false when the subscription ended meanwhile.
func (s *Subscription) establish(answers []dns.RR, lease time.Duration) (early []Event, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != handshaking {
		return nil, false
	}
	s.state = live
	s.lease = lease
	s.expires = time.Now().Add(lease)
	s.answers = newAnswerSet(answers)
	s.timer = time.AfterFunc(s.refreshIn(lease), s.autoRefresh)
	early, s.early = s.early, nil
	for i := range early {
		early[i] = s.applyLocked(early[i])
	}
	return early, true
}

// end stops the subscription with err and reports whether this call did it.
func (s *Subscription) end(err error) bool {
	// Unrouted before Events closes, so that whoever sees it closed finds
	// the subscription gone from the client too. Not under s.mu: Close
	// takes the client's lock and then the subscription's.
	s.c.removeSub(s)
	return s.finish(err, func() {
		if s.timer != nil {
			s.timer.Stop()
		}
		s.early = nil
	})
}
