package llq

import (
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin/hosts"
)

// The hosts plugin re-reads its file on a ticker and, when the file's mtime
// or size changed, swaps in a new map under its Hostsfile's RWMutex. It has
// no callback, and the map pointer is unexported; llq reads the pointer by
// reflection, under that (exported) read lock, on every zone scan: a
// changed pointer marks the plugin's zones. Should a CoreDNS release rename
// the field, the probe is not set up and the poll covers hosts, as before.

var hostsReflectOnce sync.Once

// hostsProbe returns a probe for the hosts plugin of a server block, or
// nothing without hosts or when its map cannot be read.
func hostsProbe(conf *dnsserver.Config, owner *LLQ) []zoneProbe {
	h, ok := conf.Handler("hosts").(hosts.Hosts)
	if !ok || h.Hostsfile == nil {
		return nil
	}
	current, ok := hostsMap(h.Hostsfile)
	if !ok {
		hostsReflectOnce.Do(func() {
			log.Warning("cannot read the hosts plugin's map (CoreDNS changed it?); hosts zones are polled")
		})
		return nil
	}
	var origins []string
	for _, o := range h.Origins {
		origins = append(origins, strings.ToLower(o))
	}
	// PTR questions for any address are answered from the file too, not
	// only those in Origins; their topics are marked, but left to the poll
	// as well, since names the file lacks go on to the next plugin.
	marked := zoneChanges(slices.Concat(origins, []string{"in-addr.arpa.", "ip6.arpa."}))

	var last uintptr
	seen := false
	changed := func() []change {
		p := current()
		if seen && p == last {
			return nil
		}
		seen, last = true, p
		return marked
	}
	covers := func(name string) bool {
		if h.Fall.Through(name) {
			return false
		}
		for _, o := range origins {
			if subDomain(o, name) {
				return true
			}
		}
		return false
	}
	return []zoneProbe{{owner: owner, trigger: "hosts", changed: changed, covers: covers}}
}

// hostsMap returns a function that reads the identity of hf's current map,
// or false when the field is not there as expected.
func hostsMap(hf *hosts.Hostsfile) (func() uintptr, bool) {
	f := reflect.ValueOf(hf).Elem().FieldByName("hmap")
	if !f.IsValid() || f.Kind() != reflect.Pointer {
		return nil, false
	}
	return func() uintptr {
		hf.RLock()
		defer hf.RUnlock()
		return f.Pointer()
	}, true
}
