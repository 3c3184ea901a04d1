package llq

import (
	"sync"
	"time"
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

// reaches reports whether ch may have changed t's answers: t's own name, or
// the target of a CNAME in its answers (the backend followed it, so a
// change to the target changes t, in whatever zone the target is). A poll
// skips only what native triggers watch entirely: t's name and every
// target. Call with e.mu held.
func (ch change) reaches(e *Engine, t *topic) bool {
	if ch.hits(e, t.key.name) {
		return true
	}
	for _, target := range t.targets {
		if ch.hits(e, target) {
			return true
		}
	}
	return false
}

// hits reports whether ch concerns name.
func (ch change) hits(e *Engine, name string) bool {
	if !subDomain(ch.zone, name) {
		return false
	}
	if ch.uncovered && e.watch.covers(name) {
		return false
	}
	return ch.affects == nil || ch.affects(name)
}

// changeQueue debounces changes and re-resolves the affected topics, so
// that work scales with what changed and a burst of signals costs one pass.
// A pass only finds the topics; each backend re-resolves its own, up to
// resolve-parallel (default 8) at a time, so that a slow backend (a forward waiting on
// its upstream) delays neither the other backends nor the next pass.
type changeQueue struct {
	e       *Engine
	pending []change
	passes  int // change passes begun, so that establish can tell it missed one; guarded by e.mu
	first   time.Time
	flush   *timer
	kick    chan struct{}
	quit    chan struct{}
	done    chan struct{}
	queues  map[*backend]*resolveQueue // guarded by e.mu
	running sync.WaitGroup             // resolving goroutines
}

// resolveQueue is one backend's topics waiting to be re-resolved.
type resolveQueue struct {
	todo   []work
	active int // goroutines working through todo
}

// scanChunk is how many topics a pass matches per hold of the engine lock,
// which every ack and setup needs meanwhile.
const scanChunk = 1024

// maxDelayFactor caps the debounce under a steady stream of signals.
const maxDelayFactor = 10

func newChangeQueue(e *Engine) *changeQueue {
	c := &changeQueue{e: e, kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		queues: make(map[*backend]*resolveQueue)}
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
	c.e.metrics.triggerChanges.WithLabelValues(ch.trigger).Inc()
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
	c.running.Wait()
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

// process finds every topic the pending changes touch and queues it with
// its backend.
func (c *changeQueue) process() {
	e := c.e
	e.mu.Lock()
	pending := c.pending
	c.pending = nil
	c.passes++
	topics := make([]*topic, 0, len(e.topics))
	for _, t := range e.topics {
		topics = append(topics, t)
	}
	e.mu.Unlock()

	for len(topics) > 0 {
		chunk := topics[:min(len(topics), scanChunk)]
		topics = topics[len(chunk):]
		e.mu.Lock()
		for _, t := range chunk {
			if e.topics[t.key] != t || t.key.provisional() { // its last subscriber left meanwhile; or see readmit
				continue
			}
			for _, ch := range pending {
				if !ch.reaches(e, t) {
					continue
				}
				if b, _ := e.backendFor(t.key.name); b != nil {
					c.queue(work{t, ch.trigger, b})
				}
				break
			}
		}
		e.mu.Unlock()
	}
}

// queue hands w to its backend's queue, unless its topic is queued or being
// resolved already; then the topic is resolved once more when that ends,
// since the answer under way may predate the change. Call with e.mu held.
func (c *changeQueue) queue(w work) {
	t := w.t
	if t.resolving {
		t.again = true
		return
	}
	t.resolving = true
	q := c.queues[w.b]
	if q == nil {
		q = &resolveQueue{}
		c.queues[w.b] = q
	}
	q.todo = append(q.todo, w)
	// Enough to keep one slow question from holding up the rest of its
	// zone, few enough not to flood an upstream.
	if q.active < max(1, c.e.config().resolveWorkers) {
		q.active++
		c.running.Add(1)
		go c.resolveAll(w.b, q)
	}
}

// resolveAll works through q until it is empty.
func (c *changeQueue) resolveAll(b *backend, q *resolveQueue) {
	defer c.running.Done()
	e := c.e
	e.mu.Lock()
	for len(q.todo) > 0 {
		select {
		case <-c.quit:
			q.todo = nil
			continue
		default:
		}
		w := q.todo[0]
		q.todo[0] = work{}
		q.todo = q.todo[1:]
		e.mu.Unlock()
		c.update(w)
		e.mu.Lock()
		w.t.resolving = false
		if w.t.again {
			w.t.again = false
			if e.topics[w.t.key] == w.t {
				c.queue(w)
			}
		}
	}
	q.active--
	if q.active == 0 {
		delete(c.queues, b)
	}
	e.mu.Unlock()
}

// update re-resolves one topic and tells its subscribers what changed.
func (c *changeQueue) update(w work) {
	e := c.e
	if w.b == nil {
		return
	}
	res := askTopic(w.b, w.t.key, w.t.question, w.t.client)
	rrs, ok := res.answers, res.ok
	if w.b.viaServer && (res.reached == nil || res.reached.block != w.t.key.block) {
		// The topic's block no longer answers its client (a reload
		// changed the views or the acl): no news rather than another
		// block's answer.
		ok = false
	}
	c.e.metrics.resolutions.WithLabelValues(w.trigger).Inc()
	now := time.Now()
	e.mu.Lock()
	if e.topics[w.t.key] != w.t { // its last subscriber left meanwhile
		e.mu.Unlock()
		return
	}
	if !ok {
		// No news: the last answers stand, and the topic is asked again
		// later, sooner than the poll would, later after each failure.
		c.e.metrics.resolveFailures.Inc()
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
	// Here the engine's part ends: each transport with subscribers to the
	// topic frames the change its own way, and writes once the lock is
	// released.
	flush := make([]func(), 0, len(w.t.owners))
	for _, o := range w.t.owners {
		if o.n == 0 {
			continue
		}
		if f := o.tr.changed(w.t, added, removed, old, now); f != nil {
			flush = append(flush, f)
		}
	}
	e.mu.Unlock()
	for _, f := range flush {
		f()
	}
}
