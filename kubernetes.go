package llq

import (
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/coredns/coredns/core/dnsserver"
	external "github.com/coredns/coredns/plugin/k8s_external"
	"github.com/coredns/coredns/plugin/kubernetes"
	"github.com/coredns/coredns/plugin/kubernetes/object"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/miekg/dns"
	api "k8s.io/api/core/v1"
)

// The kubernetes plugin keeps services, endpoint slices, pods and
// namespaces in informer caches. It has no callback; two signals show that
// its caches moved, and llq's probe reads both on every zone scan. Any
// change marks every zone of the plugin (and of k8s_external, which answers
// from the same caches).
//
// The fine one is each informer's last synced resource version
// (cache.Controller.LastSyncResourceVersion): the reflector moves it on
// every watch event, a few microseconds before the informer's loop stores
// the object in the cache. The informers sit in unexported fields of the
// plugin's controller, read by reflection; should a CoreDNS release rename
// them, only the coarse signal remains. Because the version moves just
// before the cache does, a move is marked at once and once more kubeFollow
// later, when the cache has surely caught up.
//
// The coarse one is the Unix second the plugin's handlers store, one per
// mode (internal, external, multicluster), after the cache holds a change
// that alters its answers. A change in the same second as the one last
// seen leaves the value as it was, so every change seen is also followed by
// one more mark just after its second has passed (kubeSettle into the next
// second). With the versions readable that look is a safety net; without
// them it bounds a change's delay to about 1.1 s.

// kubeSettle is how far into the next second the second look comes, so
// that the second whose changes it must catch has surely ended.
const kubeSettle = 100 * time.Millisecond

// kubeFollow is how long after a resource version moved the look that
// catches a cache still being written comes.
const kubeFollow = 50 * time.Millisecond

// modifiedSource is what llq needs from the kubernetes plugin's APIConn.
type modifiedSource interface {
	HasSynced() bool
	Modified(kubernetes.ModifiedMode) int64
}

var kubeModes = [...]kubernetes.ModifiedMode{kubernetes.ModifiedInternal, kubernetes.ModifiedExternal, kubernetes.ModifiedMultiCluster}

// versionSource is the part of client-go's cache.Controller llq reads.
type versionSource interface {
	LastSyncResourceVersion() string
}

// kubeWatch follows one server block's kubernetes plugin. check runs on the
// scan, one call at a time.
//
// Nothing is marked before the plugin's caches have synced: llq starts
// before the plugin does (its OnStartup runs first, and the plugin's waits
// for the sync), and the initial listing moves both signals while the
// caches are still filling, which would re-resolve topics against half a
// cluster. The sync itself then counts as one change: after a reload, no
// topic has been compared with the new caches yet.
type kubeWatch struct {
	conn     modifiedSource
	informer []versionSource // may be empty
	synced   bool
	last     [len(kubeModes)]int64
	versions []string
	again    time.Time // when to mark once more for the coarse signal; zero when not due
	follow   time.Time // the same for the fine one
	now      func() time.Time
}

func newKubeWatch(conn modifiedSource, informers ...versionSource) *kubeWatch {
	return &kubeWatch{conn: conn, informer: informers, versions: make([]string, len(informers)), now: time.Now}
}

// check reports whether the plugin's answers may have changed since the
// last check.
func (w *kubeWatch) check() bool {
	if !w.synced && !w.conn.HasSynced() {
		return false
	}
	first := !w.synced
	w.synced = true
	changed := first
	for i, m := range kubeModes {
		v := w.conn.Modified(m)
		if v == w.last[i] && !first {
			continue
		}
		w.last[i] = v
		changed = true
		if at := time.Unix(v+1, 0).Add(kubeSettle); v > 0 && at.After(w.again) {
			w.again = at
		}
	}
	moved := false
	for i, src := range w.informer {
		if v := src.LastSyncResourceVersion(); v != w.versions[i] {
			w.versions[i] = v
			moved = true
		}
	}
	now := w.now()
	if moved {
		w.follow = now.Add(kubeFollow)
		changed = true
	}
	if changed {
		return true
	}
	again, follow := due(&w.again, now), due(&w.follow, now)
	return again || follow
}

// due reports whether the look planned for *at has come, and if so clears
// it.
func due(at *time.Time, now time.Time) bool {
	if at.IsZero() || now.Before(*at) {
		return false
	}
	*at = time.Time{}
	return true
}

// kubeInformers returns the informers of the plugin's controller, found by
// reflection, or nothing when they are not where CoreDNS v1.15 keeps them.
func kubeInformers(conn any) []versionSource {
	v := reflect.ValueOf(conn)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	v = v.Elem()
	var out []versionSource
	for i := range v.NumField() {
		f := v.Field(i)
		if !strings.HasSuffix(v.Type().Field(i).Name, "Controller") || f.Kind() != reflect.Interface || f.IsNil() {
			continue
		}
		// Unexported: reach the interface value through its address.
		x := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface()
		if src, ok := x.(versionSource); ok {
			out = append(out, src)
		}
	}
	return out
}

var kubeReflectOnce sync.Once

// kubeProbe returns a probe for the kubernetes plugin of a server block, or
// nothing without one. Call it from OnStartup: the plugin's APIConn exists
// from its setup on (its caches fill once its own OnStartup has run).
func kubeProbe(conf *dnsserver.Config, owner *LLQ) []zoneProbe {
	k, ok := conf.Handler("kubernetes").(*kubernetes.Kubernetes)
	if !ok || k.APIConn == nil {
		return nil
	}
	x, _ := conf.Handler("k8s_external").(*external.External)
	return []zoneProbe{newKubeProbe(owner, k, x)}
}

// newKubeProbe watches k, and x when not nil. It covers the names the two
// answer from their caches alone: not those they let fall through, and not
// ExternalName services, whose CNAME targets are resolved elsewhere.
func newKubeProbe(owner *LLQ, k *kubernetes.Kubernetes, x *external.External) zoneProbe {
	zones := lowerAll(k.Zones)
	var extZones []string
	var extFall fall.F
	if x != nil {
		extZones, extFall = lowerAll(x.Zones), x.Fall
	}
	marked := slices.Concat(zones, extZones)
	informers := kubeInformers(k.APIConn)
	if len(informers) == 0 {
		kubeReflectOnce.Do(func() {
			log.Warning("cannot read the kubernetes plugin's informers (CoreDNS changed them?); changes within a second of another wait for the next second")
		})
	}
	w := newKubeWatch(k.APIConn, informers...)
	changed := func() []string {
		if w.check() {
			return marked
		}
		return nil
	}
	covers := func(name string) bool {
		if z := longestZone(zones, name); z != "" {
			return !k.Fall.Through(name) && !externalName(k, z, name)
		}
		return longestZone(extZones, name) != "" && !extFall.Through(name)
	}
	return zoneProbe{owner: owner, trigger: "kubernetes", changed: changed, covers: covers}
}

// externalName reports whether name belongs to an ExternalName service: its
// answer follows a CNAME out of the cluster, which only the poll watches.
// Service names are SERVICE.NAMESPACE.svc.ZONE, with any labels before
// (ports, endpoints).
func externalName(k *kubernetes.Kubernetes, zone, name string) bool {
	labels := dns.SplitDomainName(strings.ToLower(name[:len(name)-len(zone)]))
	n := len(labels)
	if n < 3 || labels[n-1] != "svc" {
		return false
	}
	for _, svc := range k.APIConn.SvcIndex(object.ServiceKey(labels[n-3], labels[n-2])) {
		if svc.Type == api.ServiceTypeExternalName {
			return true
		}
	}
	return false
}

// longestZone returns the longest of zones that name is in, or "".
func longestZone(zones []string, name string) string {
	best := ""
	for _, z := range zones {
		if len(z) > len(best) && subDomain(z, name) {
			best = z
		}
	}
	return best
}

func lowerAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToLower(s)
	}
	return out
}
