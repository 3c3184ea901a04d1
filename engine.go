package llq

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Engine is everything llq keeps for one LLQ listener address: the listener,
// the LLQ table, the topics and the timers. It outlives plugin instances, so
// that a Corefile reload keeps every live LLQ (see registry.go).
type Engine struct {
	mu sync.Mutex
	// cfg is read on every message; an atomic pointer spares serve a trip
	// through mu for it. A reload swaps the whole config: code that uses
	// several fields together loads it once (see config).
	cfg      atomic.Pointer[config]
	t        table
	backends []*backend // longest zone first is not needed: zoneFor picks the longest match

	sched   *scheduler
	chal    *challenger
	limiter *setupLimiter
	ln      *listener
	changes *changeQueue
	watch   *watchers

	key  string // listen address it was created for; the registry's key
	refs int    // plugin instances using the engine; guarded by the registry lock
}

func newEngine(cfg *config) (*Engine, error) {
	e := &Engine{
		key:     cfg.listen,
		t:       newTable(cfg.clientBits),
		sched:   newScheduler(),
		chal:    newChallenger(),
		limiter: newSetupLimiter(),
	}
	e.cfg.Store(cfg)
	e.changes = newChangeQueue(e)
	e.watch = newWatchers(e)
	ln, err := listen(cfg.listen, e)
	if err != nil {
		e.sched.close()
		e.changes.close() // its worker started with it
		return nil, err
	}
	e.ln = ln
	e.watch.start()
	publishLimits(cfg)
	return e, nil
}

// close stops the listener and every timer and forgets every LLQ.
func (e *Engine) close() {
	e.watch.stop()
	e.ln.close()
	e.sched.close()
	e.changes.close()
	e.mu.Lock()
	n, topics := len(e.t.subs), len(e.t.topics)
	e.t = newTable(e.config().clientBits)
	e.mu.Unlock()
	// Gauges are shared by every engine in the process: subtract ours.
	liveLLQs.Sub(float64(n))
	topicsGauge.Sub(float64(topics))
}

// reconfigure applies a reloaded Corefile's settings. Live LLQs keep their
// leases until their next refresh.
func (e *Engine) reconfigure(cfg *config) {
	e.cfg.Store(cfg)
	e.mu.Lock()
	e.t.rekey(cfg.clientBits)
	e.mu.Unlock()
	publishLimits(cfg)
	e.watch.armPoll()
}

func (e *Engine) config() *config { return e.cfg.Load() }

// Addr is the UDP address the LLQ listener is bound to.
func (e *Engine) Addr() net.Addr { return e.ln.udp.LocalAddr() }

func (e *Engine) register(b *backend) {
	e.mu.Lock()
	e.backends = append(e.backends, b)
	e.mu.Unlock()
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

// setupError tells protocol.go which LLQ error a setup or refresh earned.
type setupError struct {
	code  uint16
	lease uint32 // retry-after for SERV-FULL
	limit bool   // a configured limit refused it (setups_total{result="serv-full"})
	rcode int    // when not 0, the whole message gets this rcode (REFUSED) instead
}

// admit checks the count limits for a new LLQ from addr. Call with e.mu held.
func (e *Engine) admit(addr netip.Addr) *setupError {
	cfg := e.config()
	if cfg.maxLLQs > 0 && len(e.t.subs) >= cfg.maxLLQs {
		limitRejections.WithLabelValues("max-llqs").Inc()
		return &setupError{code: wire.ServFull, lease: uint32(cfg.fullRetryAfter / time.Second), limit: true}
	}
	if cfg.maxPerClient > 0 && e.t.perClient[e.t.bits.key(addr)] >= cfg.maxPerClient {
		limitRejections.WithLabelValues("max-llqs-per-client").Inc()
		return &setupError{code: wire.ServFull, lease: uint32(cfg.fullRetryAfter / time.Second), limit: true}
	}
	return nil
}

// establish creates the LLQ id for q on behalf of client, or returns the
// existing one when the client repeats itself, and returns the answers the
// ACK carries.
func (e *Engine) establish(id uint64, q dns.Question, client netip.AddrPort, proven bool, lease uint32, udpSize uint16, now time.Time) ([]dns.RR, uint32, *setupError) {
	key := keyOf(q)
	e.mu.Lock()
	if s, ok := e.t.subs[id]; ok {
		defer e.mu.Unlock()
		if s.client.Addr() != client.Addr() {
			// A 64-bit collision between two clients' challenges: make the
			// newcomer start over in a later epoch, which yields another ID.
			return nil, 0, &setupError{code: wire.ServFull, lease: 1}
		}
		if s.topic.key.questionKey != key {
			return nil, 0, &setupError{code: wire.NoSuchLLQ}
		}
		setups.WithLabelValues("duplicate").Inc()
		return s.topic.records(), s.remaining(now), nil
	}
	if err := e.admit(client.Addr()); err != nil {
		e.mu.Unlock()
		return nil, 0, err
	}
	cfg := e.config()
	b, zone := e.backendFor(key.name)
	passes := e.changes.passes
	e.mu.Unlock()

	if b == nil {
		return nil, 0, &setupError{code: wire.Static}
	}
	if ok, wait := e.limiter.allow(cfg.clientBits.key(client.Addr()), now, cfg.setupRate, cfg.setupBurst); !ok {
		limitRejections.WithLabelValues("setup-rate").Inc()
		return nil, 0, &setupError{code: wire.ServFull, lease: uint32(wait/time.Second) + 1, limit: true}
	}

	// Admission: the question is asked as this client would ask it on
	// CoreDNS's port (outside the lock: a backend such as etcd may take a
	// while). Through the CoreDNS server it must pass an llq of this
	// engine, whose block then keys the topic; otherwise the port would
	// not have had llq's block answer it (acl refused it, another block
	// serves the client), and the setup is refused.
	res := b.lookupFull(q, client)
	tkey := topicKey{questionKey: key}
	if b.viaServer {
		l := res.reached
		if l == nil || l.engine() != e {
			return nil, 0, &setupError{rcode: dns.RcodeRefused}
		}
		tkey.block = l.block
		if len(l.perClient) > 0 {
			tkey.client = client.Addr()
		}
	}
	if !res.ok {
		if res.rcode == dns.RcodeRefused {
			return nil, 0, &setupError{rcode: dns.RcodeRefused}
		}
		return nil, 0, &setupError{code: wire.UnknownErr}
	}

	resync := false
	defer func() { // runs after the unlock below
		if resync {
			e.changes.mark(change{trigger: "setup", zone: key.name})
		}
	}()
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.t.subs[id]; ok { // the same challenge response twice, concurrently
		return nil, 0, &setupError{code: wire.ServFull, lease: 1}
	}
	if err := e.admit(client.Addr()); err != nil {
		return nil, 0, err
	}
	t := e.t.topics[tkey]
	if t == nil {
		// A change pass that ran while the answers were being resolved could
		// not see this topic: re-resolve it, or that change is lost to it.
		resync = e.changes.passes != passes
		t = &topic{key: tkey, question: q, zone: zone, answers: newAnswerSet(res.answers), subs: make(map[uint64]*subscription, 1), client: client, e: e}
		t.retry.init(t)
		t.noteTargets()
		e.t.topics[tkey] = t
		e.t.questions[key]++
		topicsGauge.Inc()
	}
	s := &subscription{id: id, topic: t, e: e, client: client, udpSize: udpSize, proven: proven}
	s.expiry.init(s)
	e.t.add(s)
	e.grant(s, lease, now)
	liveLLQs.Inc()
	setups.WithLabelValues("established").Inc()
	return t.records(), lease, nil
}

// grant (re)starts s's lease. Call with e.mu held.
func (e *Engine) grant(s *subscription, lease uint32, now time.Time) {
	s.expires = now.Add(time.Duration(lease) * time.Second)
	e.sched.schedule(&s.expiry, s.expires)
}

// refresh renews or (lease 0) terminates LLQ id for client. A non-zero
// eventPort moves the client's events there.
func (e *Engine) refresh(id uint64, q dns.Question, client netip.AddrPort, eventPort uint16, viaUDP bool, lease uint32, now time.Time) (uint32, *setupError) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := e.t.subs[id]
	if !ok || s.client.Addr() != client.Addr() || s.topic.key.questionKey != keyOf(q) {
		return 0, &setupError{code: wire.NoSuchLLQ}
	}
	if lease == 0 {
		e.drop(s)
		terminations.Inc()
		return 0, nil
	}
	// Events follow the client to the port its latest refresh came from:
	// that is where its NAT mapping is now.
	if eventPort != 0 {
		to := netip.AddrPortFrom(client.Addr(), eventPort)
		if to != s.client && !viaUDP {
			s.proven, s.unsolicited = false, false // a new port named over TCP
		}
		e.t.move(s, to)
		if viaUDP {
			e.prove(s, now) // the refresh came from that port
		}
	}
	granted := e.config().clampLease(lease)
	e.grant(s, granted, now)
	refreshes.Inc()
	return granted, nil
}

// drop removes s and its timers. Call with e.mu held.
func (e *Engine) drop(s *subscription) {
	for _, tr := range s.pending {
		if tr.ev.live == tr.id {
			e.sched.cancel(&tr.ev.retry)
		}
	}
	if e.t.remove(s) {
		e.sched.cancel(&s.expiry)
		liveLLQs.Dec()
		if len(s.topic.subs) == 0 {
			topicsGauge.Dec()
			e.sched.cancel(&s.topic.retry)
		}
	}
}

func (e *Engine) expire(s *subscription) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.gone || time.Now().Before(s.expires) {
		return
	}
	e.drop(s)
	expirations.Inc()
}

// Stats is a snapshot for tests and the command line.
type Stats struct {
	LLQs, Topics, Timers int
}

func (e *Engine) Stats() Stats {
	e.mu.Lock()
	st := Stats{LLQs: len(e.t.subs), Topics: len(e.t.topics)}
	e.mu.Unlock()
	st.Timers = e.sched.len()
	return st
}
