package llq

import (
	"sync"
	"time"

	"github.com/coredns/coredns/plugin/file"
	"github.com/coredns/coredns/plugin/file/tree"
)

// A zoneProbe lists the zones a zone-file backend (file, auto, secondary)
// serves right now. Those plugins swap a zone's whole tree on every reload or
// transfer, so a changed tree pointer is a cheap and exact change signal.
type zoneProbe struct {
	owner   *LLQ
	trigger string
	zones   func(yield func(origin string, z *file.Zone))

	// A backend that is not a zone file (hosts, etcd, kubernetes) sets
	// these instead. changed runs on every scan and returns what changed
	// since the last one (a change without a trigger is the probe's);
	// covers says which names the probe watches, so that the
	// poll leaves them alone; stop ends what the probe runs on its own
	// (etcd's watch) when the probe is removed.
	changed func() []change
	covers  func(name string) bool
	stop    func()
}

// probedZone is a zone as one server block's plugin serves it: two blocks
// (views) may serve the same zone from different data.
type probedZone struct {
	owner  *LLQ
	origin string
}

// watchers runs the native triggers (zone probes) and the poll fallback for
// everything else, all from the engine's scheduler.
type watchers struct {
	e      *Engine
	mu     sync.Mutex
	probes []zoneProbe
	seen   map[probedZone]*tree.Tree // tree at the last scan

	scan   *timer
	poll   *timer
	closed bool
}

// scanInterval is how often zone trees are compared. A scan is a read lock
// and a pointer compare per zone, so it can be frequent: it bounds how long
// a reloaded zone goes unnoticed.
const scanInterval = 20 * time.Millisecond

func newWatchers(e *Engine) *watchers {
	w := &watchers{e: e, seen: make(map[probedZone]*tree.Tree)}
	w.scan = newTimer(w.scanZones)
	w.poll = newTimer(w.pollAll)
	return w
}

func (w *watchers) start() {
	w.e.sched.schedule(w.scan, time.Now().Add(scanInterval))
	w.armPoll()
}

// armPoll (re)starts the poll period, or stops polling when the config says
// never.
func (w *watchers) armPoll() {
	if p := w.e.config().poll; p > 0 {
		w.e.sched.schedule(w.poll, time.Now().Add(p))
	} else {
		w.e.sched.cancel(w.poll)
	}
}

func (w *watchers) stop() {
	w.mu.Lock()
	w.closed = true
	probes := w.probes
	w.probes = nil
	w.mu.Unlock()
	w.e.sched.cancel(w.scan)
	w.e.sched.cancel(w.poll)
	stopProbes(probes)
}

func (w *watchers) add(probes ...zoneProbe) {
	w.mu.Lock()
	w.probes = append(w.probes, probes...)
	w.mu.Unlock()
}

func (w *watchers) remove(owner *LLQ) {
	var gone []zoneProbe
	w.mu.Lock()
	kept := w.probes[:0]
	for _, p := range w.probes {
		if p.owner != owner {
			kept = append(kept, p)
		} else {
			gone = append(gone, p)
		}
	}
	w.probes = kept
	w.mu.Unlock()
	stopProbes(gone)
}

func stopProbes(probes []zoneProbe) {
	for _, p := range probes {
		if p.stop != nil {
			p.stop()
		}
	}
}

// covers reports whether a zone probe watches name, in which case the poll
// leaves it alone.
func (w *watchers) covers(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for z := range w.seen {
		if subDomain(z.origin, name) {
			return true
		}
	}
	for _, p := range w.probes {
		if p.covers != nil && p.covers(name) {
			return true
		}
	}
	return false
}

func (w *watchers) scanZones() {
	var changed []change
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	now := make(map[probedZone]*tree.Tree, len(w.seen))
	for _, p := range w.probes {
		if p.changed != nil {
			for _, ch := range p.changed() {
				if ch.trigger == "" {
					ch.trigger = p.trigger
				}
				changed = append(changed, ch)
			}
		}
		if p.zones == nil {
			continue
		}
		p.zones(func(origin string, z *file.Zone) {
			z.RLock()
			t := z.Tree
			z.RUnlock()
			k := probedZone{p.owner, origin}
			now[k] = t
			if old, ok := w.seen[k]; !ok || old != t {
				changed = append(changed, change{trigger: p.trigger, zone: origin})
			}
		})
	}
	for k := range w.seen {
		if _, ok := now[k]; !ok { // an auto zone whose file went away
			changed = append(changed, change{trigger: "auto", zone: k.origin})
		}
	}
	w.seen = now
	w.mu.Unlock()

	for _, ch := range changed {
		w.e.changes.mark(ch)
	}
	w.e.sched.schedule(w.scan, time.Now().Add(scanInterval))
}

func (w *watchers) pollAll() {
	w.mu.Lock()
	closed := w.closed
	w.mu.Unlock()
	if closed {
		return
	}
	w.e.changes.mark(change{trigger: "poll", zone: ".", uncovered: true})
	w.armPoll()
}

// zoneChanges is a change of each of zones, for a probe that cannot tell
// which of their names moved.
func zoneChanges(zones []string) []change {
	out := make([]change, len(zones))
	for i, z := range zones {
		out[i] = change{zone: z}
	}
	return out
}
