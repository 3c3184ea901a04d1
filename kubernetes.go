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
// namespaces in informer caches. It has no callback; llq looks at those
// caches on the zone scan and re-resolves only the topics whose names the
// objects that changed answer for (kubeNames).
//
// When to look. Each informer's last synced resource version
// (cache.Controller.LastSyncResourceVersion) moves on every watch event,
// bookmarks included, a few microseconds before the informer's loop stores
// the object in its cache. The informers sit in unexported fields of the
// plugin's controller, read by reflection. Because the version moves just
// before the cache does, a move is looked at once and once more kubeFollow
// later, when the cache has surely caught up.
//
// What changed. Beside each informer the controller keeps its cache (the
// lister), read by reflection too. llq remembers the resource version of
// every object it last saw there; a look lists the cache of the informer
// that moved and compares, so a bookmark, a relist that changed nothing or
// an object no subscriber asks about re-resolves nothing. A look costs a
// pass over that informer's objects, at most once per scan.
//
// The coarse signal is the Unix second the plugin's handlers store, one per
// mode (internal, external, multicluster), after the cache holds a change
// that alters its answers. A change in the same second as the one last
// seen leaves the value as it was, so every change seen is also followed by
// one more look just after its second has passed (kubeSettle into the next
// second). With the informers readable it is a safety net that finds
// nothing new; without them (should a CoreDNS release rename the fields),
// it marks every zone of the plugin, and of k8s_external, which answers
// from the same caches, and bounds a change's delay to about 1.1 s. An
// informer whose cache llq cannot read or whose objects it does not know
// (multicluster imports) marks every zone when it moves.

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

// kubeStore is the part of client-go's cache.Store llq reads.
type kubeStore interface {
	List() []any
}

// kubeObject is what every object of the plugin's caches (object.Service,
// object.Endpoints, object.Pod, object.Namespace) has.
type kubeObject interface {
	GetNamespace() string
	GetName() string
	GetResourceVersion() string
}

type objectKey struct{ namespace, name string }

type seenObject struct {
	obj  kubeObject
	pass uint32
}

// kubeInformer is one informer of the plugin: its version, and its cache
// when llq can read and name the objects in it.
type kubeInformer struct {
	kind    string // the controller's field prefix: svc, ep, pod, ns, ...
	src     versionSource
	cache   kubeStore // nil: a move marks every zone
	version string
	follow  time.Time
	seen    map[objectKey]seenObject
	pass    uint32
}

// diff appends to out every object that changed in the cache since the
// last diff: both states of an updated object, the last state of a deleted
// one.
func (inf *kubeInformer) diff(out []kubeObject) []kubeObject {
	if inf.seen == nil {
		inf.seen = make(map[objectKey]seenObject)
	}
	inf.pass++
	for _, x := range inf.cache.List() {
		obj, ok := x.(kubeObject)
		if !ok {
			continue
		}
		k := objectKey{obj.GetNamespace(), obj.GetName()}
		old, ok := inf.seen[k]
		switch {
		case !ok:
			out = append(out, obj)
		case old.obj.GetResourceVersion() != obj.GetResourceVersion():
			out = append(out, old.obj, obj)
		}
		inf.seen[k] = seenObject{obj, inf.pass}
	}
	for k, s := range inf.seen {
		if s.pass != inf.pass {
			out = append(out, s.obj)
			delete(inf.seen, k)
		}
	}
	return out
}

// kubeDelta is what one look found: everything may have changed, or these
// objects did.
type kubeDelta struct {
	all     bool
	objects []kubeObject
}

func (d kubeDelta) empty() bool { return !d.all && len(d.objects) == 0 }

// kubeWatch follows one server block's kubernetes plugin. check runs on the
// scan, one call at a time.
//
// Nothing is marked before the plugin's caches have synced: llq starts
// before the plugin does (its OnStartup runs first, and the plugin's waits
// for the sync), and the initial listing moves both signals while the
// caches are still filling, which would re-resolve topics against half a
// cluster. The sync itself then counts as a change of everything: after a
// reload, no topic has been compared with the new caches yet.
type kubeWatch struct {
	conn     modifiedSource
	informer []*kubeInformer // may be empty
	synced   bool
	last     [len(kubeModes)]int64
	again    time.Time // when to look once more for the coarse signal; zero when not due
	now      func() time.Time
}

func newKubeWatch(conn modifiedSource, informers ...*kubeInformer) *kubeWatch {
	return &kubeWatch{conn: conn, informer: informers, now: time.Now}
}

// check reports what may have changed since the last check.
func (w *kubeWatch) check() kubeDelta {
	if !w.synced && !w.conn.HasSynced() {
		return kubeDelta{}
	}
	first := !w.synced
	w.synced = true
	coarse := first
	for i, m := range kubeModes {
		v := w.conn.Modified(m)
		if v == w.last[i] && !first {
			continue
		}
		w.last[i] = v
		coarse = true
		if at := time.Unix(v+1, 0).Add(kubeSettle); v > 0 && at.After(w.again) {
			w.again = at
		}
	}
	now := w.now()
	if !coarse {
		coarse = due(&w.again, now)
	}
	if len(w.informer) == 0 {
		return kubeDelta{all: coarse}
	}
	var d kubeDelta
	for _, inf := range w.informer {
		moved := false
		if v := inf.src.LastSyncResourceVersion(); v != inf.version {
			inf.version = v
			inf.follow = now.Add(kubeFollow)
			moved = true
		} else {
			moved = due(&inf.follow, now)
		}
		switch {
		case inf.cache != nil && (moved || coarse):
			d.objects = inf.diff(d.objects)
		case inf.cache == nil && moved:
			d.all = true // it may have changed anything
		}
	}
	if first {
		return kubeDelta{all: true}
	}
	return d
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
// reflection, or nothing when they are not where CoreDNS v1.15 keeps them:
// each FOOController field, with the cache in its FOOLister field when
// FOO is a kind llq can name (kubeKinds).
func kubeInformers(conn any) []*kubeInformer {
	v := reflect.ValueOf(conn)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	v = v.Elem()
	field := func(name string) any {
		f := v.FieldByName(name)
		if !f.IsValid() || f.Kind() != reflect.Interface || f.IsNil() {
			return nil
		}
		// Unexported: reach the interface value through its address.
		return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface()
	}
	var out []*kubeInformer
	for i := range v.NumField() {
		kind, ok := strings.CutSuffix(v.Type().Field(i).Name, "Controller")
		if !ok {
			continue
		}
		src, ok := field(kind + "Controller").(versionSource)
		if !ok {
			continue
		}
		inf := &kubeInformer{kind: kind, src: src}
		if slices.Contains(kubeKinds, kind) {
			inf.cache, _ = field(kind + "Lister").(kubeStore)
		}
		out = append(out, inf)
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
	return []zoneProbe{newKubeProbe(owner, k, x, kubeInformers(k.APIConn))}
}

// newKubeProbe watches k, and x when not nil, through the informers of k's
// controller. It covers the names the two answer from their caches alone:
// not those they let fall through, and not ExternalName services, whose
// CNAME targets are resolved elsewhere.
func newKubeProbe(owner *LLQ, k *kubernetes.Kubernetes, x *external.External, informers []*kubeInformer) zoneProbe {
	zones := lowerAll(k.Zones)
	var extZones []string
	var extFall fall.F
	if x != nil {
		extZones, extFall = lowerAll(x.Zones), x.Fall
	}
	all := zoneChanges(slices.Concat(zones, extZones))
	if len(informers) == 0 {
		kubeReflectOnce.Do(func() {
			log.Warning("cannot read the kubernetes plugin's informers (CoreDNS changed them?); every change re-resolves every cluster name, and changes within a second of another wait for the next second")
		})
	}
	namer := kubeNamer{ext: extZones}
	for _, z := range zones {
		if !subDomain("arpa.", z) {
			namer.zones = append(namer.zones, z)
		}
	}
	w := newKubeWatch(k.APIConn, informers...)
	changed := func() []change {
		d := w.check()
		switch {
		case d.all:
			return all
		case len(d.objects) == 0:
			return nil
		}
		return []change{{zone: ".", affects: namer.names(d.objects).affects}}
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
