package llq

import (
	"strings"
	"time"

	"github.com/miekg/dns"
)

// retryDelay is how long a topic whose re-resolution failed n times in a
// row waits before it is asked again: a second, doubling with each failure,
// at most the poll period (or a minute without polling).
func retryDelay(n int, poll time.Duration) time.Duration {
	ceiling := poll
	if ceiling <= 0 {
		ceiling = time.Minute
	}
	return min(backoff(time.Second, min(n-1, 16)), max(ceiling, time.Second))
}

// retryTopic queues the re-resolution of a topic whose last one failed.
func (e *Engine) retryTopic(t *topic) {
	name := t.key.name
	e.changes.mark(change{trigger: "retry", zone: name, affects: func(n string) bool { return n == name }})
}

// change is what a trigger reports: something at or below zone may differ
// now. Triggers never say what changed; the resolver finds out by asking the
// chain, so subscribers always see what an ordinary query would.
type change struct {
	trigger string // names the trigger in metrics
	zone    string
	// uncovered limits the change to topics that no native trigger watches:
	// the poll fallback must not re-resolve what file reloads already report.
	uncovered bool
	// affects, when set, narrows the change to the topics (lower-cased
	// names) in zone it returns true for: an etcd key touches a few names,
	// not its zone. nil means every topic in zone.
	affects func(name string) bool
}

// reaches reports whether ch may have changed t's answers. Besides t's own
// name, the targets of CNAMEs in its answers count: the backend follows
// those, so a change to a target changes t. Call with e.mu held.
func (ch change) reaches(t *topic) bool {
	if ch.affects == nil || ch.affects(t.key.name) {
		return true
	}
	for _, rr := range t.answers {
		if c, ok := rr.(*dns.CNAME); ok && ch.affects(strings.ToLower(c.Target)) {
			return true
		}
	}
	return false
}

// changeQueue debounces changes and re-resolves the affected topics on one
// worker goroutine, so that work scales with what changed and a burst of
// signals costs one pass.
type changeQueue struct {
	e       *Engine
	pending []change
	passes  int // change passes begun, so that establish can tell it missed one; guarded by e.mu
	first   time.Time
	flush   *timer
	kick    chan struct{}
	quit    chan struct{}
	done    chan struct{}
}

// maxDelayFactor caps the debounce under a steady stream of signals.
const maxDelayFactor = 10

func newChangeQueue(e *Engine) *changeQueue {
	c := &changeQueue{e: e, kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	c.flush = newTimer(func() {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	})
	go c.run()
	return c
}

// mark queues ch and (re)starts the quiet period.
func (c *changeQueue) mark(ch change) {
	triggerChanges.WithLabelValues(ch.trigger).Inc()
	e := c.e
	e.mu.Lock()
	now := time.Now()
	if len(c.pending) == 0 {
		c.first = now
	}
	c.pending = append(c.pending, ch)
	debounce := e.config().debounce
	at := now.Add(debounce)
	if limit := c.first.Add(debounce * maxDelayFactor); at.After(limit) {
		at = limit
	}
	e.mu.Unlock()
	e.sched.schedule(c.flush, at)
}

func (c *changeQueue) close() {
	close(c.quit)
	<-c.done
}

func (c *changeQueue) run() {
	defer close(c.done)
	for {
		select {
		case <-c.quit:
			return
		case <-c.kick:
			c.process()
		}
	}
}

type work struct {
	t       *topic
	trigger string
	b       *backend
}

// process re-resolves every topic the pending changes touch.
func (c *changeQueue) process() {
	e := c.e
	e.mu.Lock()
	pending := c.pending
	c.pending = nil
	c.passes++
	var todo []work
	for _, t := range e.t.topics {
		for _, ch := range pending {
			if !subDomain(ch.zone, t.key.name) || !ch.reaches(t) {
				continue
			}
			if ch.uncovered && e.watch.covers(t.key.name) {
				continue
			}
			b, _ := e.backendFor(t.key.name)
			todo = append(todo, work{t, ch.trigger, b})
			break
		}
	}
	e.mu.Unlock()

	for _, w := range todo {
		c.update(w)
	}
}

// update re-resolves one topic and tells its subscribers what changed.
func (c *changeQueue) update(w work) {
	e := c.e
	if w.b == nil {
		return
	}
	rrs, ok := resolve(w.b.handler, w.t.question, w.t.client)
	resolutions.WithLabelValues(w.trigger).Inc()
	now := time.Now()
	e.mu.Lock()
	if e.t.topics[w.t.key] != w.t { // its last subscriber left meanwhile
		e.mu.Unlock()
		return
	}
	if !ok {
		// No news: the last answers stand, and the topic is asked again
		// later, sooner than the poll would, later after each failure.
		resolveFailures.Inc()
		w.t.failures++
		e.sched.schedule(&w.t.retry, now.Add(retryDelay(w.t.failures, e.config().poll)))
		e.mu.Unlock()
		return
	}
	w.t.failures = 0
	next := newAnswerSet(rrs)
	added, removed := w.t.answers.diff(next)
	if len(added) == 0 && len(removed) == 0 {
		e.mu.Unlock()
		return
	}
	old := w.t.answers
	w.t.setAnswers(next)
	ds := e.publish(w.t, added, removed, old, now)
	e.mu.Unlock()
	e.send(ds, "event")
}
