package llq

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// The LLQ transport's table in the state file (state.go). At start the file
// is read and checked whole, and its LLQs go into the empty table before the
// listener serves, so that a refresh of a restored LLQ never meets
// NO-SUCH-LLQ. They wait there in provisional topics, keyed by question
// alone, that hold what their subscribers were last told and hear no news
// (a block's backend answers only topics of its block). As backends register
// (Engine.register), each LLQ is admitted again as a setup would be, through
// the CoreDNS server (joining.resolve): it joins the topic of its block and
// client, or is dropped when the port would now refuse its client; and it is
// sent the difference between what it was last told and what is true now.
// One whose backend cannot answer yet (a forward upstream still down, a
// plugin not started) keeps waiting, and is tried again (see readmission).
//
// What the file may cause. A restored LLQ is sent events at the address and
// port the file names, so a forged entry could aim llq's events at a victim.
// Two rules stop that:
//   - The file is authenticated (HMAC-SHA256) with a key kept beside it,
//     readable by llq alone. A file that does not verify is ignored whole;
//     only llq writes a file that does, and llq writes only LLQs whose
//     client answered the challenge from that address (or set up over
//     TCP), as a live table holds.
//   - Whatever the file says, a restored LLQ is bound as a live one is: its
//     lease is cut to MAX of `lease` from the restart, it counts against
//     max-llqs and max-llqs-per-client, it is told only about its own
//     question, and a client that acknowledges nothing is dropped after
//     ATTEMPTS transmissions of `retransmit`, as any silent client is. So
//     even an address that changed hands while llq was down gets no more
//     than a live LLQ whose client vanished would send it.

// stateFiles are the state files kept by running engines: two engines
// writing one file would each overwrite the other's LLQs.
var stateFiles = struct {
	sync.Mutex
	m map[string]*llqTransport
}{m: make(map[string]*llqTransport)}

// openState starts keeping l's table in cfg's state file, first restoring
// what the file holds. Call before the listener serves; it returns the
// events to send once it does.
func (l *llqTransport) openState(cfg *config, now time.Time) ([]*event, error) {
	if cfg.statePath == "" {
		return nil, nil
	}
	path, err := filepath.Abs(cfg.statePath)
	if err != nil {
		return nil, err
	}
	stateFiles.Lock()
	defer stateFiles.Unlock()
	if _, taken := stateFiles.m[path]; taken {
		return nil, fmt.Errorf("state file %s is kept by another llq listener", path)
	}
	key, fresh, err := stateKey(path)
	if err != nil {
		return nil, fmt.Errorf("state key: %v", err)
	}
	removeTemps(path)
	removeTemps(path + ".key")
	var evs []*event
	snap, err := readState(path, key)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		log.Infof("state file %s does not exist yet: starting with no LLQs", path)
	case err != nil && fresh:
		log.Warningf("state file %s: its key %s.key is new, so it cannot be trusted: starting with no LLQs", path, path)
	case err != nil:
		log.Warningf("state file %s ignored, starting with no LLQs: %v", path, err)
	default:
		evs = l.restore(snap, now)
	}
	stateFiles.m[path] = l
	l.state = newStateKeeper(l, path, key, cfg.stateEvery, l.e.metrics)
	return evs, nil
}

// reconfigureState follows a reload: another file, another interval, or
// none. A reload writes the file.
func (l *llqTransport) reconfigureState(cfg *config) {
	var path string
	if cfg.statePath != "" {
		path, _ = filepath.Abs(cfg.statePath)
	}
	if l.state != nil && l.state.path == path {
		l.state.setInterval(cfg.stateEvery)
		l.state.now()
		return
	}
	l.closeState()
	if path != "" {
		// The table is live: nothing to restore, and the new file is
		// overwritten at once.
		if _, err := l.openStateFresh(path, cfg.stateEvery); err != nil {
			log.Errorf("state file %s: %v", path, err)
		}
	}
}

func (l *llqTransport) openStateFresh(path string, every time.Duration) (*stateKeeper, error) {
	stateFiles.Lock()
	defer stateFiles.Unlock()
	if _, taken := stateFiles.m[path]; taken {
		return nil, fmt.Errorf("kept by another llq listener")
	}
	key, _, err := stateKey(path)
	if err != nil {
		return nil, err
	}
	stateFiles.m[path] = l
	l.state = newStateKeeper(l, path, key, every, l.e.metrics)
	l.state.now()
	return l.state, nil
}

// closeState writes the table a last time and stops keeping it. Call before
// the table is forgotten, without e.mu.
func (l *llqTransport) closeState() {
	k := l.state
	if k == nil {
		return
	}
	k.stop()
	stateFiles.Lock()
	if stateFiles.m[k.path] == l {
		delete(stateFiles.m, k.path)
	}
	stateFiles.Unlock()
	l.state = nil
}

// stateSnapshot implements stateSource.
func (l *llqTransport) stateSnapshot(now time.Time) (*snapshot, uint64) {
	e := l.e
	e.mu.Lock()
	defer e.mu.Unlock()
	snap := &snapshot{saved: now, topics: make([]savedTopic, 0, len(e.topics))}
	for _, t := range e.topics {
		llqs := make([]savedLLQ, 0, len(t.subs))
		for _, x := range t.subs {
			s, mine := x.(*llqSub)
			if !mine || s.private { // it ends with its session
				continue
			}
			llqs = append(llqs, savedLLQ{
				id: s.id, client: s.client, remaining: s.remaining(now), udpSize: s.udpSize, proven: s.proven,
				unsettled: unsettled(s),
			})
		}
		if len(llqs) > 0 {
			// records() is cached and never modified, and the records
			// themselves are immutable: encoding may read them unlocked.
			snap.topics = append(snap.topics, savedTopic{q: t.question, answers: t.records(), llqs: llqs})
		}
	}
	return snap, l.gen
}

// restoredBlock begins the block of a provisional topic (see restore).
const restoredBlock = "\x00restored "

// provisional reports whether k is a provisional topic's: its LLQs wait
// for readmission, and no change pass asks for its answers, which no
// block would give.
func (k topicKey) provisional() bool { return strings.HasPrefix(k.block, restoredBlock) }

// unsettled returns the records of s's events that its client has not
// acknowledged, and those of the news held for its unproven port, which it
// was never told. Call with e.mu held.
func unsettled(s *llqSub) []dns.RR {
	var out []dns.RR
	if s.held != nil {
		out = append(out, s.held.rrs...)
	}
	for _, tr := range s.pending {
		ev := tr.ev
		if ev.answered || ev.live != tr.id {
			continue // settled, or listed again under a later transmission
		}
		out = append(out, ev.rrs...)
	}
	return out
}

// restore puts snap's LLQs into the empty table. LLQs whose lease ran out
// while llq was down are dropped; the rest keep their IDs, addresses and
// leases. It returns a restatement for each LLQ with unsettled records, to
// send once the listener serves.
func (l *llqTransport) restore(snap *snapshot, now time.Time) []*event {
	e := l.e
	cfg := e.config()
	var evs []*event
	var restored, expired, refused int
	e.mu.Lock()
	defer e.mu.Unlock()
	for ti, st := range snap.topics {
		var j *joining
		for _, sl := range st.llqs {
			expires := snap.saved.Add(time.Duration(sl.remaining) * time.Second)
			if !expires.After(now) {
				expired++
				continue
			}
			if latest := now.Add(cfg.maxLease); expires.After(latest) {
				expires = latest
			}
			if _, dup := l.subs[sl.id]; dup || l.admit(sl.client.Addr()) != nil {
				refused++
				continue
			}
			if j == nil {
				// The provisional topic holds the answers its subscribers
				// were told; readmit finds what changed.
				jj := e.prepare(st.q, sl.client, false)
				jj.answers = st.answers
				// One provisional topic per saved topic: topics of several
				// blocks or clients may share the question. No block is
				// named so, and a block's backend gives no news to a topic
				// of another block.
				jj.key.block = fmt.Sprintf("%s%d", restoredBlock, ti)
				j = &jj
			}
			// A port that had not proven itself before the restart has not
			// now, and may have had its one unsolicited packet.
			s := &llqSub{id: sl.id, l: l, client: sl.client, udpSize: sl.udpSize, proven: sl.proven, unsolicited: !sl.proven}
			s.expiry.init(s)
			e.join(s, l, j)
			l.subs[s.id] = s
			l.perClient[l.bits.key(s.client.Addr())]++
			s.expires = expires
			e.sched.schedule(&s.expiry, expires)
			l.restored = append(l.restored, s)
			l.e.metrics.liveLLQs.Inc()
			restored++
			if len(sl.unsettled) > 0 {
				evs = append(evs, l.unsettledEvents(s, sl.unsettled)...)
			}
		}
	}
	l.gen++
	l.e.metrics.stateRestored.WithLabelValues("restored").Add(float64(restored))
	l.e.metrics.stateRestored.WithLabelValues("expired").Add(float64(expired))
	l.e.metrics.stateRestored.WithLabelValues("refused").Add(float64(refused))
	log.Infof("restored %d LLQs on %d topics from the state file (%d expired meanwhile, %d over the limits)",
		restored, len(e.topics), expired, refused)
	return evs
}

// unsettledEvents are events about the records s may not have heard the
// truth of, each fitting s's UDP size; restating them tells the truth as it
// is then. An unproven port gets no restatement: the records are held for it
// until it proves itself (see prove). Call with e.mu held.
func (l *llqTransport) unsettledEvents(s *llqSub, rrs []dns.RR) []*event {
	set := newAnswerSet(rrs) // one per record identity
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	recs := make([]dns.RR, len(keys))
	adds := make([]bool, len(keys)) // restate decides; split only measures
	for i, k := range keys {
		recs[i] = set[k]
	}
	var evs []*event
	for _, st := range split(s.topic.question, keys, recs, adds, s.udpSize) {
		if !s.proven {
			s.hold(st)
			continue
		}
		evs = append(evs, newEvent(s, st))
	}
	return evs
}

// takeRestored returns the restored LLQs that b answers for, to readmit.
// Call with e.mu held.
func (l *llqTransport) takeRestored(b *backend) []*llqSub {
	var mine []*llqSub
	keep := l.restored[:0]
	for _, s := range l.restored {
		switch {
		case s.gone():
		case l.e.backendOf(s) == b:
			mine = append(mine, s)
		default:
			keep = append(keep, s)
		}
	}
	clear(l.restored[len(keep):])
	l.restored = keep
	return mine
}

// backendOf is the backend that answers s's question now.
func (e *Engine) backendOf(s *llqSub) *backend {
	b, _ := e.backendFor(s.topic.key.name)
	return b
}

// readmission is a batch of restored LLQs on their way back into the
// topics of their blocks. Those whose backend gave no answer (SERVFAIL, a
// timeout, plugins not started yet) stay in their provisional topics and
// are tried again later, later after each round that admits none, as a
// topic's failed re-resolution is: a failed lookup is no verdict on the
// client, and never a removal. Only the port's refusal (acl, another block
// or view) or the end of the lease removes a restored LLQ.
type readmission struct {
	l        *llqTransport
	subs     []*llqSub
	failures int   // rounds in a row that admitted none
	retry    timer // the next round, after a failure
}

func newReadmission(l *llqTransport, subs []*llqSub) *readmission {
	r := &readmission{l: l, subs: subs}
	r.retry.init(r)
	return r
}

// fire runs the next round; the scheduler's goroutine must not wait for
// lookups.
func (r *readmission) fire() { go r.l.readmit(r) }

// readmitGiveUp is how many failed lookups in a row end a round: the
// backend is down, and asking for the rest would only wait out their
// timeouts one by one. What is left waits for the next round, the failed
// ones last, so that a name whose lookup always fails holds up no other.
const readmitGiveUp = 8

// readmitGroup is what an admission depends on: the question, and the
// client's address, which is what acl, view and the client-dependent
// plugins look at. LLQs that share it share one lookup.
type readmitGroup struct {
	q    questionKey
	addr netip.Addr
}

// readmit admits r's LLQs as setups are admitted (see establish), moves
// each from its provisional topic to the topic of its block and client,
// and tells it what changed since it was last told. An LLQ the port would
// now refuse is dropped: its next refresh meets NO-SUCH-LLQ and it sets up
// again. One whose admission found no answer waits for the next round.
func (l *llqTransport) readmit(r *readmission) {
	e := l.e
	admissions := make(map[readmitGroup]*joining)
	verdicts := make(map[readmitGroup]error)
	var failed, rest []*llqSub
	admitted, inRow := 0, 0
	for i, s := range r.subs {
		if inRow >= readmitGiveUp {
			rest = r.subs[i:]
			break
		}
		e.mu.Lock()
		if s.gone() || l.subs[s.id] != s {
			e.mu.Unlock()
			continue
		}
		g := readmitGroup{s.topic.key.questionKey, s.client.Addr()}
		j, err := admissions[g], verdicts[g]
		if j == nil && err == nil {
			jj := e.prepare(s.topic.question, s.client, false)
			e.mu.Unlock()
			err = jj.resolve(e)
			if err == nil {
				j = &jj
				admissions[g] = j
				inRow = 0
			} else {
				verdicts[g] = err
				if err != errRefused {
					inRow++
				}
			}
			e.mu.Lock()
			if s.gone() || l.subs[s.id] != s {
				e.mu.Unlock()
				continue
			}
		}
		switch err {
		case nil:
		case errRefused:
			name := s.topic.question.Name
			l.drop(s)
			e.mu.Unlock()
			log.Infof("restored LLQ %x for %s dropped: %v", s.id, name, err)
			l.e.metrics.stateReadmitted.WithLabelValues("refused").Inc()
			continue
		default:
			e.mu.Unlock()
			failed = append(failed, s)
			l.e.metrics.stateReadmitted.WithLabelValues("unresolved").Inc()
			continue
		}
		evs := l.rejoin(s, j)
		e.mu.Unlock()
		admitted++
		l.e.metrics.stateReadmitted.WithLabelValues("admitted").Inc()
		l.restateRestored(evs, time.Now())
	}
	for _, j := range admissions {
		e.settle(j)
	}
	waiting := append(rest, failed...)
	if len(waiting) == 0 {
		return
	}
	if admitted > 0 {
		r.failures = 1
	} else {
		r.failures++
	}
	delay := retryDelay(r.failures, e.config().poll)
	log.Infof("%d restored LLQs wait for their backends to answer; next try in %s", len(waiting), delay)
	r.subs = waiting
	e.sched.schedule(&r.retry, time.Now().Add(delay))
}

// rejoin moves s from its provisional topic to j's and returns the events
// for what changed since it was last told. Call with e.mu held.
func (l *llqTransport) rejoin(s *llqSub, j *joining) []*event {
	e := l.e
	told := s.topic.answers
	e.leave(s, l)
	e.join(s, l, j)
	l.gen++
	var changed []dns.RR
	for k, rr := range told {
		if _, ok := s.topic.answers[k]; !ok {
			changed = append(changed, rr)
		}
	}
	for k, rr := range s.topic.answers {
		if _, ok := told[k]; !ok {
			changed = append(changed, rr)
		}
	}
	if len(changed) == 0 {
		return nil
	}
	return l.unsettledEvents(s, changed)
}

// restateRestored sends the restored events, now that the listener serves.
func (l *llqTransport) restateRestored(evs []*event, now time.Time) {
	if len(evs) == 0 {
		return
	}
	ds := make([]delivery, 0, len(evs))
	l.e.mu.Lock()
	for _, ev := range evs {
		if ev.sub.gone() {
			continue
		}
		d, err := l.restate(ev, now)
		if err != nil {
			log.Errorf("cannot pack event for %s: %v", ev.sub.topic.question.Name, err)
			continue
		}
		ds = append(ds, d)
	}
	l.e.mu.Unlock()
	l.send(ds, "event")
}
