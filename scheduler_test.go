package llq

import (
	"sync"
	"testing"
	"time"
)

// recorder collects the order in which timers fire.
type recorder struct {
	mu    sync.Mutex
	fired []string
	done  chan string
}

func newRecorder() *recorder { return &recorder{done: make(chan string, 100)} }

func (r *recorder) timer(name string) *timer {
	return newTimer(func() {
		r.mu.Lock()
		r.fired = append(r.fired, name)
		r.mu.Unlock()
		r.done <- name
	})
}

// waitFor blocks until the timer called name fires and returns everything
// that fired so far.
func (r *recorder) waitFor(t *testing.T, name string) []string {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case n := <-r.done:
			if n == name {
				r.mu.Lock()
				defer r.mu.Unlock()
				return append([]string(nil), r.fired...)
			}
		case <-deadline:
			t.Fatalf("timer %s never fired", name)
		}
	}
}

func newTestScheduler(t *testing.T) *scheduler {
	s := newScheduler()
	t.Cleanup(s.close)
	return s
}

func TestSchedulerOrder(t *testing.T) {
	s := newTestScheduler(t)
	r := newRecorder()
	now := time.Now()
	// Scheduled out of order, in the past and the near future.
	s.schedule(r.timer("c"), now.Add(30*time.Millisecond))
	s.schedule(r.timer("a"), now.Add(-time.Second))
	s.schedule(r.timer("d"), now.Add(40*time.Millisecond))
	s.schedule(r.timer("b"), now.Add(10*time.Millisecond))
	got := r.waitFor(t, "d")
	if want := []string{"a", "b", "c", "d"}; !equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
	if n := s.len(); n != 0 {
		t.Fatalf("%d timers left", n)
	}
}

func TestSchedulerCancel(t *testing.T) {
	s := newTestScheduler(t)
	r := newRecorder()
	now := time.Now()
	gone := r.timer("gone")
	s.schedule(gone, now.Add(10*time.Millisecond))
	s.schedule(r.timer("barrier"), now.Add(30*time.Millisecond))
	s.cancel(gone)
	s.cancel(gone) // cancelling twice is harmless
	if gone.index != -1 || s.len() != 1 {
		t.Fatalf("cancelled timer still armed (index %d, %d timers)", gone.index, s.len())
	}
	// Timers fire in order from one goroutine: had "gone" fired, it would
	// have done so before the barrier.
	if got := r.waitFor(t, "barrier"); !equal(got, []string{"barrier"}) {
		t.Fatalf("fired %v", got)
	}
	// A cancelled timer can be armed again.
	s.schedule(gone, time.Now())
	r.waitFor(t, "gone")
	// Cancelling a timer that never was armed is a no-op.
	s.cancel(r.timer("never"))
}

func TestSchedulerReschedule(t *testing.T) {
	s := newTestScheduler(t)
	r := newRecorder()
	now := time.Now()

	// Later: a timer moved past the barrier does not fire before it.
	moved := r.timer("moved")
	s.schedule(moved, now.Add(10*time.Millisecond))
	s.schedule(moved, now.Add(time.Hour))
	if s.len() != 1 {
		t.Fatalf("rescheduling added a second entry: %d", s.len())
	}
	s.schedule(r.timer("barrier"), now.Add(30*time.Millisecond))
	if got := r.waitFor(t, "barrier"); !equal(got, []string{"barrier"}) {
		t.Fatalf("fired %v", got)
	}

	// Earlier: a timer an hour away moved to now fires; the runner, asleep
	// until the hour, must wake up for it.
	s.schedule(moved, time.Now())
	if got := r.waitFor(t, "moved"); !equal(got, []string{"barrier", "moved"}) {
		t.Fatalf("fired %v", got)
	}

	// A timer may re-arm itself from its own callback.
	var self *timer
	count := 0
	self = newTimer(func() {
		count++
		if count < 3 {
			s.schedule(self, time.Now())
			return
		}
		r.done <- "self"
	})
	s.schedule(self, time.Now())
	r.waitFor(t, "self")
	if count != 3 {
		t.Fatalf("self-rescheduling timer fired %d times", count)
	}
}

func TestSchedulerClose(t *testing.T) {
	s := newScheduler()
	r := newRecorder()
	s.schedule(r.timer("late"), time.Now().Add(time.Hour))
	s.close() // returns although a timer is pending
	// Scheduling after close neither panics nor blocks, and nothing runs
	// the timers any more: both stay in the heap.
	s.schedule(r.timer("after"), time.Now())
	if n := s.len(); n != 2 {
		t.Fatalf("%d timers in a closed scheduler, want 2", n)
	}
	select {
	case n := <-r.done:
		t.Fatalf("timer %s fired after close", n)
	default:
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
