package llq

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// CoreDNS serves every UDP query on a goroutine of its own, whose stack
// starts at 2 KiB and is copied to a new one each time it doubles. For an
// ordinary query through cache and file that happens twice, and copying a
// stack means walking every frame on it: measured with cachegrind, a
// quarter of the server's instructions per query. Any plugin placed
// before cache makes it worse, since the growth then comes deeper in the
// chain, with more and larger frames to walk.
//
// So llq hands the rest of the chain to a worker goroutine whose stack has
// already grown, and waits for it: two goroutine switches on the same P
// instead of a stack copy. The plugins below run exactly as before, with
// the same context, writer and message; a panic among them is re-raised on
// the query's own goroutine, where CoreDNS's server recovers from it, with
// the stack of where it happened (see belowPanic).
// When every worker is busy the query runs on its own goroutine and one
// more worker is started, up to maxWorkers; they never exit, and the
// runtime shrinks the stacks of idle ones at each GC. `handoff off` in the
// Corefile keeps every query on its own goroutine.

// maxWorkers bounds the worker goroutines: past that many queries in
// flight below llq (a forward waiting on its upstream, say), the extra
// ones run on their own goroutines.
const maxWorkers = 256

// handoff is one query on its way to a worker and its outcome on the way
// back.
type handoff struct {
	ctx   context.Context
	w     dns.ResponseWriter
	r     *dns.Msg
	l     *LLQ
	rcode int
	err   error
	pan   any
	done  chan struct{}
}

var (
	handoffs    = make(chan *handoff) // unbuffered: a send succeeds only if a worker waits
	workers     atomic.Int32
	handoffPool = sync.Pool{New: func() any { return &handoff{done: make(chan struct{}, 1)} }}
)

func worker() {
	for h := range handoffs {
		h.run()
	}
}

func (h *handoff) run() {
	defer func() {
		if v := recover(); v != nil {
			// The stack is still that of the panic here; once re-raised on
			// the query's goroutine it would show only handOn.
			h.pan = &belowPanic{value: v, stack: debug.Stack()}
		}
		h.done <- struct{}{}
	}()
	h.rcode, h.err = h.l.next(h.ctx, h.w, h.r)
}

// handOn passes r to the next plugin on an idle worker, or on this
// goroutine when there is none.
func (l *LLQ) handOn(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	h := handoffPool.Get().(*handoff)
	h.ctx, h.w, h.r, h.l = ctx, w, r, l
	select {
	case handoffs <- h:
	default:
		*h = handoff{done: h.done}
		handoffPool.Put(h)
		if workers.Add(1) <= maxWorkers {
			go worker()
		} else {
			workers.Add(-1)
		}
		return l.next(ctx, w, r)
	}
	<-h.done
	rcode, err, pan := h.rcode, h.err, h.pan
	*h = handoff{done: h.done}
	handoffPool.Put(h)
	if pan != nil {
		panic(pan)
	}
	return rcode, err
}

// belowPanic is a panic raised below llq on a worker, re-raised on the
// query's goroutine. CoreDNS logs the value it recovers (and, with its
// stacktrace option, a stack that now starts in handOn): the value says
// where the panic really happened.
type belowPanic struct {
	value any
	stack []byte
}

func (p *belowPanic) Error() string {
	return fmt.Sprintf("%v\n[panic below llq, on a handoff worker]\n%s", p.value, p.stack)
}

// Unwrap lets errors.Is and errors.As see a panic value that is an error.
func (p *belowPanic) Unwrap() error {
	err, _ := p.value.(error)
	return err
}
