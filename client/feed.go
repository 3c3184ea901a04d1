package client

import (
	"context"
	"sync"

	"github.com/miekg/dns"
)

// feed is what a subscription gives its consumer, over LLQ (Subscription)
// or DNS Push (PushSubscription) alike: the answer set, an Event for each
// change, and why it ended.
type feed struct {
	events chan Event

	// ctx ends with the subscription, which aborts a request in flight on
	// its behalf (an LLQ's automatic refresh) instead of waiting for it.
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu      sync.Mutex // guards the fields below, and the subscription's own
	state   state
	answers answerSet
	err     error
	dropped uint64
}

func newFeed(buffer int) feed {
	ctx, cancel := context.WithCancelCause(context.Background())
	return feed{events: make(chan Event, buffer), ctx: ctx, cancel: cancel, answers: answerSet{}}
}

// Answers returns a copy of the current answer set: the initial answers
// with every change since applied.
func (f *feed) Answers() []dns.RR {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.answers.list()
}

// Events returns the channel that carries one Event per change message: an
// LLQ event packet, or a PUSH message that touched the subscription (Msg is
// nil then: a PUSH is no DNS message). It is closed when the subscription
// ends, by Close or because it was lost; Err then says which.
func (f *feed) Events() <-chan Event { return f.events }

// Dropped returns how many events were discarded because the Events channel
// was full. The answer set includes them anyway.
func (f *feed) Dropped() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dropped
}

// Done is closed when the subscription ends; Err then says why. It serves
// LLQ consumers that take events through Options.OnEvent rather than
// Events.
func (f *feed) Done() <-chan struct{} { return f.ctx.Done() }

// Err returns why the subscription ended, nil while it is live: ErrClosed
// after Close; for an LLQ, the failure that lost it (an *Error with Code
// wire.NoSuchLLQ means the server forgot it and Subscribe may be tried
// again); for DNS Push, a *PushError when the server refused it, or the
// session's error when the session was lost.
func (f *feed) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// deliverLocked queues ev without ever blocking the reader, which serves
// every subscription on the socket or session: when the consumer has
// fallen a whole buffer behind, the oldest queued event makes room and is
// counted in Dropped. Nothing is lost from the answer set, which Answers
// still reports exactly, so a consumer that sees Dropped grow can
// resynchronise from it.
func (f *feed) deliverLocked(ev Event) {
	for {
		select {
		case f.events <- ev:
			return
		default:
		}
		select {
		case <-f.events:
			f.dropped++
		default:
		}
	}
}

// finish ends the feed with err, running also (if not nil) under f.mu
// first, and reports whether this call ended it.
func (f *feed) finish(err error, also func()) bool {
	f.mu.Lock()
	if f.state == ended {
		f.mu.Unlock()
		return false
	}
	f.state = ended
	f.err = err
	if also != nil {
		also()
	}
	close(f.events)
	f.mu.Unlock()
	f.cancel(err)
	return true
}
