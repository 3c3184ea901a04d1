package llq

import (
	"slices"
	"strings"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	external "github.com/coredns/coredns/plugin/k8s_external"
	"github.com/coredns/coredns/plugin/kubernetes"
	"github.com/coredns/coredns/plugin/kubernetes/object"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/miekg/dns"
	api "k8s.io/api/core/v1"
)

// The kubernetes plugin keeps services, endpoint slices, pods and
// namespaces in informer caches. On every change that alters its answers,
// its informer handlers store the Unix second of the change in an atomic,
// one per mode (internal, external, multicluster), after the cache holds the
// new object. It has no callback, so llq's probe reads those three atomics
// on every zone scan, and any change marks every zone of the plugin (and of
// k8s_external, which answers from the same caches).
//
// The resolution is one second. A change in the same second as the one
// last seen leaves the value as it was, so it would go unnoticed. To close
// that gap, every change seen is followed by one more mark just after its
// second has passed (kubeSettle into the next second): by then every change
// of that second is in the caches, and the re-resolution finds it. The
// cost is one more re-resolution of the zones' topics per burst of changes;
// a change late in the same second as an earlier one reaches subscribers up
// to about 1.1 s after it happened instead of within a scan.

// kubeSettle is how far into the next second the second look comes, so
// that the second whose changes it must catch has surely ended.
const kubeSettle = 100 * time.Millisecond

// modifiedSource is what llq needs from the kubernetes plugin's APIConn.
type modifiedSource interface {
	HasSynced() bool
	Modified(kubernetes.ModifiedMode) int64
}

var kubeModes = [...]kubernetes.ModifiedMode{kubernetes.ModifiedInternal, kubernetes.ModifiedExternal, kubernetes.ModifiedMultiCluster}

// kubeWatch follows one server block's kubernetes plugin. check runs on the
// scan, one call at a time.
//
// Nothing is marked before the plugin's caches have synced: llq starts
// before the plugin does (its OnStartup runs first, and the plugin's waits
// for the sync), and the initial listing moves the modification times
// while the caches are still filling, which would re-resolve topics
// against half a cluster. The sync itself then counts as one change: after
// a reload, no topic has been compared with the new caches yet.
type kubeWatch struct {
	conn   modifiedSource
	synced bool
	last   [len(kubeModes)]int64
	again  time.Time // when to mark once more; zero when not due
	now    func() time.Time
}

func newKubeWatch(conn modifiedSource) *kubeWatch {
	return &kubeWatch{conn: conn, now: time.Now}
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
	if changed {
		return true
	}
	if !w.again.IsZero() && !w.now().Before(w.again) {
		w.again = time.Time{}
		return true
	}
	return false
}

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
	w := newKubeWatch(k.APIConn)
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
