package grpcresolver

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/miekg/dns"
	"google.golang.org/grpc/resolver"
)

// setupTimeout bounds discovery plus the subscriptions' setup, so that a
// server that answers discovery but never the handshake sends the resolver
// back to polling.
const setupTimeout = 30 * time.Second

// llqResolver resolves one target. Its run goroutine does all the work and
// is the only one to call the ClientConn.
type llqResolver struct {
	cc     resolver.ClientConn
	target target
	server string // DNS server for discovery and polling, host:port
	opts   Options

	ctx    context.Context
	cancel context.CancelFunc
	now    chan struct{} // ResolveNow, merged
	done   chan struct{} // closed when run has returned

	// Owned by run.
	published bool
	last      []string // the addresses gRPC has
	refused   error    // what gRPC said to them
}

// ResolveNow asks run for a fresh look; it never blocks.
func (r *llqResolver) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

// Close stops the resolver. Its subscriptions are terminated in the
// background, which against a dead server takes the RFC 8764
// retransmission schedule.
func (r *llqResolver) Close() {
	r.cancel()
	<-r.done
}

// run alternates between push and polling for the resolver's lifetime,
// with the back-off documented in the package comment. A poll comes first,
// at the start and after every loss, so that gRPC has addresses while
// push is being set up, which against an unresponsive server takes the
// protocol's retransmissions.
func (r *llqResolver) run() {
	defer close(r.done)
	retry, pollRetry := r.opts.PushRetryMin, r.opts.PushRetryMin
	var nextPush, nextPoll time.Time // zero: at once
	for {
		if !time.Now().Before(nextPoll) {
			err := r.poll()
			if r.ctx.Err() != nil {
				return
			}
			if err != nil {
				r.cc.ReportError(err)
			}
			// A failed poll, or a state gRPC could not use (no address),
			// is worth another look sooner: gRPC leaves retrying to a
			// resolver that does not watch.
			if err != nil || r.refused != nil {
				nextPoll = time.Now().Add(min(jitter(pollRetry), r.opts.PollInterval))
				pollRetry = min(2*pollRetry, r.opts.PollInterval)
			} else {
				nextPoll = time.Now().Add(r.opts.PollInterval)
				pollRetry = r.opts.PushRetryMin
			}
		}
		if !time.Now().Before(nextPush) {
			start := time.Now()
			established, err := r.push()
			if r.ctx.Err() != nil {
				return
			}
			if established {
				nextPoll = time.Now() // what the last poll saw is old news
			}
			switch {
			case established && time.Since(start) >= r.opts.PushRetryMin:
				// A loss after a good while: poll and try again at once.
				logger.Infof("%s: %v; setting push up again", r.target.name, err)
				retry, nextPush = r.opts.PushRetryMin, time.Now()
				continue
			case established:
				logger.Infof("%s: %v", r.target.name, err)
			default:
				logger.Infof("%s: no push: %v", r.target.name, err)
			}
			wait := jitter(retry)
			logger.Infof("%s: polling %s every %s; trying push again in %s", r.target.name, r.server, r.opts.PollInterval, wait)
			nextPush = time.Now().Add(wait)
			retry = min(2*retry, r.opts.PushRetryMax)
		}
		t := time.NewTimer(time.Until(earliest(nextPush, nextPoll)))
		select {
		case <-r.ctx.Done():
			t.Stop()
			return
		case <-r.now:
			// Not sooner than MinResolveNowInterval after the last poll.
			nextPoll = earliest(nextPoll, nextPoll.Add(MinResolveNowInterval-r.opts.PollInterval))
		case <-t.C:
		}
		t.Stop()
	}
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// jitter spreads retries of many clients that lost the same server: up to
// a fifth less than d.
func jitter(d time.Duration) time.Duration {
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// push discovers the push server, subscribes to every question the target
// needs and hands gRPC each change until a subscription is lost or the
// resolver closes. established says whether the setup succeeded; err is
// why push ended.
func (r *llqResolver) push() (established bool, err error) {
	setup, cancel := context.WithTimeout(r.ctx, setupTimeout)
	defer cancel()
	src, err := dialPush(setup, r.server, r.target.name, r.opts)
	if err != nil {
		return false, err
	}
	defer func() { go src.close() }()

	kick := make(chan struct{}, 1)
	changed := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	feeds := map[dns.Question]pushFeed{}
	if err := r.sync(setup, src, feeds, changed); err != nil {
		return false, err
	}
	cancel()
	logger.Infof("%s: answers pushed by %s", r.target.name, src)

	var lastCheck time.Time
	for {
		for q, f := range feeds {
			if err := f.err(); err != nil {
				return true, fmt.Errorf("subscription to %s %s at %s lost: %w", q.Name, dns.TypeToString[q.Qtype], src, err)
			}
		}
		// A new SRV target is subscribed before the state goes out, so
		// that its addresses come with it.
		if err := r.sync(r.ctx, src, feeds, changed); err != nil {
			return true, fmt.Errorf("subscribing at %s: %w", src, err)
		}
		r.publish(collect(feeds))

		select {
		case <-kick:
		case <-r.now:
			if time.Since(lastCheck) < MinResolveNowInterval {
				continue
			}
			lastCheck = time.Now()
			for q, f := range feeds {
				if err := f.check(r.ctx); err != nil {
					return true, fmt.Errorf("refreshing %s %s at %s: %w", q.Name, dns.TypeToString[q.Qtype], src, err)
				}
			}
		case <-r.ctx.Done():
			return true, r.ctx.Err()
		}
	}
}

// sync makes feeds hold a subscription for exactly the questions the
// target needs now. Subscribing to SRV targets can call for no further
// questions, so one pass after the SRV answers are in settles it.
func (r *llqResolver) sync(ctx context.Context, src pushSource, feeds map[dns.Question]pushFeed, changed func()) error {
	for {
		want := r.target.questions(collect(feeds))
		added := false
		for _, q := range want {
			if feeds[q] != nil {
				continue
			}
			f, err := src.subscribe(ctx, q, changed)
			if err != nil {
				return err
			}
			feeds[q] = f
			added = true
		}
		for q, f := range feeds {
			if !slices.Contains(want, q) {
				delete(feeds, q)
				go f.close()
			}
		}
		if !added {
			return nil
		}
	}
}

func collect(feeds map[dns.Question]pushFeed) answers {
	a := make(answers, len(feeds))
	for q, f := range feeds {
		a[q] = f.answers()
	}
	return a
}

// poll queries every question the target needs, and those the answers
// call for (an SRV record's target), and hands gRPC the result. A failed
// query leaves gRPC with the last good state.
func (r *llqResolver) poll() error {
	a := answers{}
	for {
		asked := false
		for _, q := range r.target.questions(a) {
			if _, ok := a[q]; ok {
				continue
			}
			rrs, err := query(r.ctx, r.server, q)
			if err != nil {
				return err
			}
			a[q] = rrs
			asked = true
		}
		if !asked {
			break
		}
	}
	r.publish(a)
	return nil
}

// publish hands gRPC the state the answers make, when it differs from the
// last one.
func (r *llqResolver) publish(a answers) {
	st := r.target.state(a)
	addrs := addrsOf(st)
	if r.published && slices.Equal(addrs, r.last) {
		return
	}
	r.published, r.last = true, addrs
	// An error here is the balancer finding no address it can use. While
	// pushing, the next change brings the next state, so there is nothing
	// to retry (resolver.ClientConn says a watching resolver may ignore
	// it); run polls sooner.
	r.refused = r.cc.UpdateState(st)
	if r.refused != nil {
		logger.Infof("%s: %d addresses: %v", r.target.name, len(addrs), r.refused)
	}
}
