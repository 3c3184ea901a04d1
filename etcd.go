package llq

import (
	"context"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin/etcd"
	"github.com/coredns/coredns/plugin/pkg/fall"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The etcd plugin has no watch of its own: every query is a Get on the
// SkyDNS path of the name, with WithPrefix. llq watches the plugin's whole
// path prefix with the plugin's own client instead, and turns every put or
// delete into a change that reaches only the topics the key can affect
// (see etcdAffects). The watch resumes from the last revision it saw after
// an error or a reconnect, so no change is lost while etcd is away; after a
// compaction (changes are gone for good) it marks the plugin's zones
// wholesale.

// Back-off between attempts to set the watch up again.
const (
	etcdMinBackoff = 100 * time.Millisecond
	etcdMaxBackoff = 10 * time.Second
)

// etcdWatch is the watch on one server block's etcd plugin.
type etcdWatch struct {
	e      *Engine
	client *clientv3.Client
	prefix string   // "/skydns/": keys below it are records
	zones  []string // the plugin's zones, lower-cased
	fall   fall.F   // names the plugin passes on are not covered
	cancel context.CancelFunc
	done   chan struct{}
}

// etcdProbe returns a probe for the etcd plugin of a server block, whose
// watch runs until the probe is stopped, or nothing without etcd.
func etcdProbe(conf *dnsserver.Config, owner *LLQ, e *Engine) []zoneProbe {
	p, ok := conf.Handler("etcd").(*etcd.Etcd)
	if !ok || p.Client == nil {
		return nil
	}
	w := &etcdWatch{
		e:      e,
		client: p.Client,
		prefix: etcdPrefix(p.PathPrefix),
		fall:   p.Fall,
		done:   make(chan struct{}),
	}
	for _, z := range p.Zones {
		w.zones = append(w.zones, strings.ToLower(z))
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go w.run(ctx)
	return []zoneProbe{{owner: owner, trigger: "etcd", covers: w.covers, stop: w.stop}}
}

// etcdPrefix is the directory under which the plugin keeps its records, as
// msg.Path builds keys: path.Join("/"+prefix+"/", labels...).
func etcdPrefix(pathPrefix string) string {
	p := path.Join("/" + pathPrefix + "/")
	if p == "/" {
		return p
	}
	return p + "/"
}

func (w *etcdWatch) stop() {
	w.cancel()
	<-w.done
}

// covers reports whether the watch sees every change to name's answers:
// names in the plugin's zones that it does not pass on to the next plugin.
func (w *etcdWatch) covers(name string) bool {
	if w.fall.Through(name) {
		return false
	}
	for _, z := range w.zones {
		if subDomain(z, name) {
			return true
		}
	}
	return false
}

// run keeps the watch up until ctx ends or the plugin closes its client
// (on shutdown or reload).
func (w *etcdWatch) run(ctx context.Context) {
	defer close(w.done)
	var last int64 // revision of the last change seen; 0 before the first watch
	wait := etcdMinBackoff
	for {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCreatedNotify()}
		if last > 0 {
			opts = append(opts, clientv3.WithRev(last+1))
		}
		progressed := w.consume(w.client.Watch(wctx, w.prefix, opts...), &last)
		cancel()
		if progressed {
			wait = etcdMinBackoff
		}
		select {
		case <-ctx.Done():
			return
		case <-w.client.Ctx().Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, etcdMaxBackoff)
	}
}

// consume reads one watch channel until it closes and reports whether the
// watch got as far as being created. last is the revision to resume after.
func (w *etcdWatch) consume(ch clientv3.WatchChan, last *int64) (progressed bool) {
	for resp := range ch {
		if resp.CompactRevision != 0 {
			// Revisions up to CompactRevision are gone: what changed
			// meanwhile cannot be known, so everything may have.
			log.Warningf("etcd watch on %s: revision %d compacted; re-resolving zones %v", w.prefix, resp.CompactRevision, w.zones)
			*last = resp.CompactRevision - 1
			w.markAll()
			return true
		}
		if err := resp.Err(); err != nil {
			log.Warningf("etcd watch on %s: %v; resuming after revision %d", w.prefix, err, *last)
			return progressed
		}
		if resp.Created {
			progressed = true
			if *last == 0 {
				// A watch from now: anything before it (a reload, the gap
				// before startup) is unknown, so mark once.
				*last = resp.Header.GetRevision()
				w.markAll()
			}
			continue
		}
		if resp.IsProgressNotify() {
			*last = max(*last, resp.Header.GetRevision())
			continue
		}
		// A resumed watch can deliver again what was seen (clientv3 resumes
		// a watch begun at the current revision at that revision, not the
		// next): skip it. Events of one revision (a transaction) arrive
		// together, so the bound is the revision before this response.
		seen := *last
		for _, ev := range resp.Events {
			if ev.Kv == nil || ev.Kv.ModRevision <= seen {
				continue
			}
			*last = max(*last, ev.Kv.ModRevision)
			if ch, ok := w.change(string(ev.Kv.Key)); ok {
				w.e.changes.mark(ch)
			}
		}
	}
	return progressed
}

func (w *etcdWatch) markAll() {
	for _, z := range w.zones {
		w.e.changes.mark(change{trigger: "etcd", zone: z})
	}
}

// change maps a key to the change it makes, or false for a key that cannot
// touch the plugin's answers.
func (w *etcdWatch) change(key string) (change, bool) {
	name, ok := etcdName(key, w.prefix)
	if !ok {
		return change{}, false
	}
	zone := ""
	for _, z := range w.zones {
		if subDomain(z, name) && len(z) > len(zone) {
			zone = z
		}
	}
	if zone == "" {
		return change{}, false
	}
	return change{trigger: "etcd", zone: zone, affects: etcdAffects(name)}, true
}

// etcdName turns a key into the DNS name it holds records for, in the SkyDNS
// layout: /skydns/org/example/www -> www.example.org. A key with a "*" label
// is a pattern; it stands for its part right of the last "*" (everything
// below that may match it). Deeper keys (/skydns/org/example/www/x1, a
// record id) are names too: x1.www.example.org.
func etcdName(key, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return "", false
	}
	labels := slices.DeleteFunc(strings.Split(rest, "/"), func(l string) bool { return l == "" })
	if i := slices.Index(labels, "*"); i >= 0 {
		labels = labels[:i]
	}
	slices.Reverse(labels)
	if len(labels) == 0 {
		return ".", true
	}
	return strings.ToLower(strings.Join(labels, ".") + "."), true
}

// etcdAffects returns which topics a change to the key for name can touch.
// The plugin answers a question with a prefix Get on the question's path,
// so a key feeds the answers of its own name and of every ancestor (SRV
// and the like: _http._tcp.example.org is answered from the keys below
// it), and a question with a wildcard label ("*" or "any") from every key
// below the part right of its last wildcard. Names below the key are
// included as well: the plugin does not answer them from it today, but the
// rule costs little and is what a "*" key needs. Topics outside the
// change's zone are filtered out before; CNAME targets in a topic's answers
// are checked too (see change.reaches).
func etcdAffects(name string) func(topic string) bool {
	return func(topic string) bool {
		if base, ok := wildcardBase(topic); ok {
			return subDomain(base, name)
		}
		return subDomain(topic, name) || subDomain(name, topic)
	}
}

// wildcardBase returns the part of name right of its last wildcard label,
// as the etcd plugin's PathWithWildcard does, and whether there is one.
func wildcardBase(name string) (string, bool) {
	off := -1
	for i := 0; i < len(name); {
		j := strings.IndexByte(name[i:], '.')
		if j < 0 {
			break
		}
		if l := name[i : i+j]; l == "*" || l == "any" {
			off = i + j + 1
		}
		i += j + 1
	}
	if off < 0 {
		return "", false
	}
	if off >= len(name) {
		return ".", true
	}
	return name[off:], true
}
