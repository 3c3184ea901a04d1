package llq

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// Engine is everything llq keeps for one LLQ listener address: the topics
// (one per distinct question), the backends that answer them, the change
// queue and the timers, and the transports that carry changes to
// subscribers. It outlives plugin instances, so that a Corefile reload keeps
// every live subscription (see registry.go).
//
// The engine knows questions, answers and changes, never packets: each
// transport (llq_*.go: LLQ over UDP and TCP) admits its own subscribers,
// joins them to topics through the engine (so that every transport answers
// with the same policy and the same answers), and turns each change into
// its own messages.
type Engine struct {
	mu sync.Mutex
	// cfg is read on every message; an atomic pointer spares serve a trip
	// through mu for it. A reload swaps the whole config: code that uses
	// several fields together loads it once (see config).
	cfg    atomic.Pointer[config]
	topics map[topicKey]*topic
	// questions counts the topics per question (several blocks or views,
	// client addresses), so that a challenge response can tell cheaply
	// whether its question has a topic already (see topicsExist).
	questions map[questionKey]int
	backends  []*backend // longest zone first is not needed: zoneFor picks the longest match

	sched   *scheduler
	changes *changeQueue
	watch   *watchers
	llq     *llqTransport
	push    *pushTransport // nil without a tls line

	key     string           // listen address it was created for; the registry's key
	metrics *listenerMetrics // its series, labelled with its listener
	refs    int              // plugin instances using the engine; guarded by the registry lock
}

func newEngine(cfg *config) (*Engine, error) {
	e := &Engine{
		key:       cfg.listen,
		topics:    make(map[topicKey]*topic),
		questions: make(map[questionKey]int),
		sched:     newScheduler(),
	}
	e.cfg.Store(cfg)
	ln, err := bind(cfg.listen)
	if err != nil {
		e.sched.close()
		return nil, err
	}
	e.metrics = newListenerMetrics(listenerLabel(cfg.listen, ln.udp.LocalAddr()))
	e.changes = newChangeQueue(e)
	e.watch = newWatchers(e)
	l, err := newLLQTransport(e, ln)
	if err != nil {
		ln.close()
		e.sched.close()
		e.changes.close() // its worker started with it
		e.metrics.forget()
		return nil, err
	}
	e.llq = l
	if cfg.tlsCert != "" {
		if e.push, err = newPushTransport(e, cfg); err != nil {
			l.ln.close()
			e.sched.close()
			e.changes.close()
			e.metrics.forget()
			return nil, err
		}
	}
	e.watch.start()
	e.metrics.publishLimits(cfg)
	return e, nil
}

// close stops the transports and every timer and forgets every
// subscription.
func (e *Engine) close() {
	e.watch.stop()
	if p := e.pushTransport(); p != nil {
		p.close()
	}
	e.llq.ln.close()
	e.sched.close()
	e.changes.close()
	e.llq.closeState() // a clean shutdown writes the table
	e.mu.Lock()
	e.llq.forget()
	e.topics = make(map[topicKey]*topic)
	e.questions = make(map[questionKey]int)
	e.mu.Unlock()
	e.metrics.forget()
}

// reconfigure applies a reloaded Corefile's settings. Live LLQs keep their
// leases until their next refresh.
//
// The TLS listener picks up a new certificate; a tls line added starts it,
// one removed stops it, ending its sessions with a Retry Delay.
func (e *Engine) reconfigure(cfg *config) {
	e.cfg.Store(cfg)
	e.mu.Lock()
	e.llq.rekey(cfg.clientBits)
	e.mu.Unlock()
	e.metrics.publishLimits(cfg)
	e.watch.armPoll()
	e.llq.reconfigureState(cfg)
	p := e.pushTransport()
	switch {
	case p != nil && cfg.tlsCert == "":
		e.setPush(nil)
		p.close()
	case p != nil:
		if err := p.reconfigure(cfg); err != nil {
			log.Errorf("TLS listener keeps its certificate: %v", err)
		}
	case cfg.tlsCert != "":
		p, err := newPushTransport(e, cfg)
		if err != nil {
			log.Errorf("no TLS listener: %v", err)
			return
		}
		e.setPush(p)
	}
}

func (e *Engine) pushTransport() *pushTransport {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.push
}

func (e *Engine) setPush(p *pushTransport) {
	e.mu.Lock()
	e.push = p
	e.mu.Unlock()
}

func (e *Engine) config() *config { return e.cfg.Load() }

// Addr is the UDP address the LLQ listener is bound to.
func (e *Engine) Addr() net.Addr { return e.llq.ln.udp.LocalAddr() }

func (e *Engine) register(b *backend) {
	e.mu.Lock()
	e.backends = append(e.backends, b)
	// LLQs restored from the state file wait in provisional topics: admit
	// them as a setup would be, now that their backend is here.
	waiting := e.llq.takeRestored(b)
	e.mu.Unlock()
	if len(waiting) > 0 {
		go e.llq.readmit(newReadmission(e.llq, waiting))
	}
}

func (e *Engine) unregister(owner *LLQ) {
	e.mu.Lock()
	kept := e.backends[:0]
	for _, b := range e.backends {
		if b.owner != owner {
			kept = append(kept, b)
		}
	}
	e.backends = kept
	e.mu.Unlock()
}

// backendFor returns the backend serving name (the longest matching zone)
// and that zone, or nil when llq serves no zone containing name. The newest
// registration wins a tie, so that after a reload the new instance answers.
// Call with e.mu held.
func (e *Engine) backendFor(name string) (*backend, string) {
	var best *backend
	zone := ""
	for _, b := range e.backends {
		for _, z := range b.zones {
			if subDomain(z, name) && (best == nil || len(z) >= len(zone)) {
				best, zone = b, z
			}
		}
	}
	return best, zone
}

// subDomain is dns.IsSubDomain(parent, child) without its garbage:
// dns.Split allocates for both names on every call, and backendFor and the
// change pass call it per zone and per topic. The fast path covers fully
// qualified names with no escapes and no empty labels, where labels are
// exactly the text between dots; anything else goes to dns.IsSubDomain.
// Like it, it ignores ASCII case only.
func subDomain(parent, child string) bool {
	if !plainFQDN(parent) || !plainFQDN(child) {
		return dns.IsSubDomain(parent, child)
	}
	if parent == "." {
		return true
	}
	off := len(child) - len(parent)
	if off < 0 || off > 0 && child[off-1] != '.' {
		return false
	}
	for i := range len(parent) {
		a, b := child[off+i], parent[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// plainFQDN reports whether s is "." or labels that each end in a dot,
// none empty and none with a backslash escape.
func plainFQDN(s string) bool {
	if s == "." {
		return true
	}
	if len(s) < 2 || s[0] == '.' || s[len(s)-1] != '.' {
		return false
	}
	for i := range len(s) {
		if s[i] == '\\' || s[i] == '.' && i > 0 && s[i-1] == '.' {
			return false
		}
	}
	return true
}

// Errors of subscribe, which each transport answers in its own words.
var (
	errNotServed  = errors.New("no served zone contains the name")
	errUnresolved = errors.New("the backend could not answer")
	// errRefused: CoreDNS's port would not have had a block of this
	// engine answer the client (acl refused it, another block or view
	// serves it), so neither does a subscription.
	errRefused = errors.New("refused to the client")
	// errBackendRefused: the block's backend answered REFUSED (a forward
	// upstream, say). A setup gets REFUSED, as a query would; but it is
	// the backend's answer, not the port's policy (see readmit).
	errBackendRefused = errors.New("the backend refused to answer")
)

// joining is a subscription on its way into its topic: what the engine
// looked up under its lock, then what the admission found outside it.
type joining struct {
	q       dns.Question
	key     topicKey // its block and client are known once resolved
	client  netip.AddrPort
	b       *backend
	zone    string
	answers []dns.RR // what the admission resolved
	passes  int
	resync  bool
}

// prepare starts a subscription to q on behalf of client: j.b is nil when
// llq serves no zone containing the name. Call with e.mu held. Every
// transport admits subscribers through prepare, resolve and join, so that a
// subscriber of any transport sees what an ordinary query would.
//
// all subscribes to every record at the name (see questionKey).
func (e *Engine) prepare(q dns.Question, client netip.AddrPort, all bool) joining {
	key := topicKey{questionKey: keyOf(q)}
	key.all = all
	j := joining{q: q, key: key, client: client, passes: e.changes.passes}
	j.b, j.zone = e.backendFor(j.key.name)
	return j
}

// resolve admits j: the question is asked as this client would ask it on
// CoreDNS's port. Through the CoreDNS server it must pass an llq of e,
// whose block then keys the topic (with the client's address where the
// block answers by it); otherwise the port would not have had llq's block
// answer it, and the subscription is refused. Call without e.mu: a backend
// such as etcd may take a while.
func (j *joining) resolve(e *Engine) error {
	if j.b == nil {
		return errNotServed
	}
	res := askTopic(j.b, j.key, j.q, j.client)
	if res.unready {
		return errUnresolved // the question was never asked: no verdict on the client
	}
	if j.b.viaServer {
		l := res.reached
		if l == nil || l.engine() != e {
			return errRefused
		}
		j.key.block = l.block
		if len(l.perClient) > 0 {
			j.key.client = j.client.Addr()
		}
	}
	if !res.ok {
		if res.rcode == dns.RcodeRefused {
			return errBackendRefused
		}
		return errUnresolved
	}
	j.answers = res.answers
	return nil
}

// join adds s, owned by tr, to j's topic, creating the topic if it is gone
// or new, and returns the topic's answers. Call with e.mu held, and settle
// once it is released.
func (e *Engine) join(s subscriber, tr transport, j *joining) []dns.RR {
	t := e.topics[j.key]
	if t == nil {
		// A change pass that ran while the answers were being resolved could
		// not see this topic: re-resolve it, or that change is lost to it.
		j.resync = e.changes.passes != j.passes
		t = &topic{key: j.key, question: j.q, zone: j.zone, answers: newAnswerSet(j.answers), client: j.client, e: e}
		t.retry.init(t)
		t.noteTargets()
		e.topics[j.key] = t
		e.questions[j.key.questionKey]++
		e.metrics.topics.Inc()
	}
	s.base().topic = t
	t.add(s, tr)
	return t.records()
}

// settle re-resolves j's topic when join found that a change may have
// passed it by. Call without e.mu.
func (e *Engine) settle(j *joining) {
	if j.resync {
		e.changes.mark(change{trigger: "setup", zone: j.key.name})
	}
}

// leave takes s, owned by tr, out of its topic, and drops the topic with
// its last subscriber. It reports whether s was still in. Call with e.mu
// held.
func (e *Engine) leave(s subscriber, tr transport) bool {
	b := s.base()
	if b.gone() {
		return false
	}
	t := b.topic
	b.topic = nil
	t.remove(s, tr)
	if len(t.subs) == 0 {
		delete(e.topics, t.key)
		if q := t.key.questionKey; e.questions[q] <= 1 {
			delete(e.questions, q)
		} else {
			e.questions[q]--
		}
		e.metrics.topics.Dec()
		e.sched.cancel(&t.retry)
	}
	return true
}

// Stats is a snapshot for tests and the command line.
type Stats struct {
	LLQs, Topics, Timers int
	Sessions, PushSubs   int // DNS Push
}

func (e *Engine) Stats() Stats {
	e.mu.Lock()
	st := Stats{LLQs: len(e.llq.subs), Topics: len(e.topics)}
	p := e.push
	if p != nil {
		st.PushSubs = p.subs
	}
	e.mu.Unlock()
	if p != nil {
		p.mu.Lock()
		st.Sessions = len(p.sessions)
		p.mu.Unlock()
	}
	st.Timers = e.sched.len()
	return st
}
