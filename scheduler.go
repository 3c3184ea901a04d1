package llq

import (
	"container/heap"
	"sync"
	"time"
)

// timer is one deadline in the scheduler. It lives inside the object it
// serves (a subscription's lease, an event's retransmission), so scheduling
// allocates nothing and a million LLQs cost a million heap slots, not a
// million goroutines.
type timer struct {
	at    time.Time
	index int   // position in the heap; -1 while not scheduled
	f     firer // what to run when due
}

// firer is what a timer runs. The objects with a timer per LLQ or per event
// (subscription, event) embed it by value and are its firer themselves: a
// separately allocated timer and a closure to call back were two of the
// three allocations per subscriber when a change fans out, and 80 of the
// 208 heap bytes of a live LLQ.
type firer interface{ fire() }

// fireFunc makes a plain function a firer. A func value is a single
// pointer, so the conversion to the interface allocates nothing.
type fireFunc func()

func (f fireFunc) fire() { f() }

func newTimer(fire func()) *timer {
	t := new(timer)
	t.init(fireFunc(fire))
	return t
}

// init readies a timer embedded by value. It must run before the timer is
// scheduled or cancelled: the zero index would claim the top of the heap.
func (t *timer) init(f firer) {
	t.index = -1
	t.f = f
}

type timerHeap []*timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *timerHeap) Push(x any) {
	t := x.(*timer)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.index = -1
	return t
}

// scheduler runs every timer of an engine from one goroutine. Callbacks run
// on that goroutine and must not block.
type scheduler struct {
	mu   sync.Mutex
	h    timerHeap
	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newScheduler() *scheduler {
	s := &scheduler{wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

// schedule (re)arms t to fire at at.
func (s *scheduler) schedule(t *timer, at time.Time) {
	s.mu.Lock()
	t.at = at
	if t.index >= 0 {
		heap.Fix(&s.h, t.index)
	} else {
		heap.Push(&s.h, t)
	}
	first := t.index == 0
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// cancel disarms t; it is a no-op for a timer that is not armed.
func (s *scheduler) cancel(t *timer) {
	s.mu.Lock()
	if t.index >= 0 {
		heap.Remove(&s.h, t.index)
	}
	s.mu.Unlock()
}

func (s *scheduler) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.h)
}

func (s *scheduler) close() {
	close(s.stop)
	<-s.done
}

func (s *scheduler) run() {
	defer close(s.done)
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	for {
		s.mu.Lock()
		now := time.Now()
		var due *timer
		wait := time.Hour
		if len(s.h) > 0 {
			if d := s.h[0].at.Sub(now); d <= 0 {
				due = heap.Pop(&s.h).(*timer)
			} else {
				wait = d
			}
		}
		s.mu.Unlock()
		if due != nil {
			due.f.fire()
			continue
		}
		idle.Reset(wait)
		select {
		case <-idle.C:
		case <-s.wake:
			if !idle.Stop() {
				select {
				case <-idle.C:
				default:
				}
			}
		case <-s.stop:
			return
		}
	}
}
