package llq

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	external "github.com/coredns/coredns/plugin/k8s_external"
	"github.com/coredns/coredns/plugin/kubernetes"
	"github.com/coredns/coredns/plugin/kubernetes/object"
	api "k8s.io/api/core/v1"
)

// fakeModified stands in for the kubernetes plugin's APIConn: one Unix
// second per mode, as the plugin's informer handlers store them, and
// whether its caches have synced.
type fakeModified struct {
	mod      [len(kubeModes)]atomic.Int64
	unsynced atomic.Bool
}

func (f *fakeModified) Modified(m kubernetes.ModifiedMode) int64 { return f.mod[m].Load() }

func (f *fakeModified) HasSynced() bool { return !f.unsynced.Load() }

// TestKubeWatchSameSecond: a change is reported when the modification time
// moves, and once more just after its second has passed, so that a second
// change within the same second (which leaves the time as it was) is not
// lost.
func TestKubeWatchSameSecond(t *testing.T) {
	src := new(fakeModified)
	const T = 1_700_000_000
	src.mod[kubernetes.ModifiedInternal].Store(T - 5)
	w := newKubeWatch(src)
	var now time.Time
	w.now = func() time.Time { return now }
	at := func(s int64, ms int) bool {
		now = time.Unix(s, int64(ms)*int64(time.Millisecond))
		return w.check().all
	}
	at(T-5, 500) // the sync (see TestKubeWatchSync)
	at(T-4, 500)

	if at(T, 0) {
		t.Fatal("reported a change with none")
	}
	src.mod[kubernetes.ModifiedInternal].Store(T)
	if !at(T, 200) {
		t.Fatal("missed a change of the modification time")
	}
	// A second change in second T leaves the time at T: nothing to see
	// until T is over.
	for _, ms := range []int{300, 900, 1000, 1050} {
		if at(T, ms) {
			t.Fatalf("reported a change at T+%d ms", ms)
		}
	}
	if !at(T+1, int(kubeSettle/time.Millisecond)) {
		t.Fatal("no second look after the change's second ended")
	}
	if at(T+1, 200) || at(T+5, 0) {
		t.Fatal("the second look repeats")
	}

	// Changes in consecutive seconds move the second look along; so does a
	// change of another mode.
	src.mod[kubernetes.ModifiedInternal].Store(T + 6)
	if !at(T+6, 100) {
		t.Fatal("missed a change")
	}
	src.mod[kubernetes.ModifiedExternal].Store(T + 7)
	if !at(T+7, 50) {
		t.Fatal("missed a change of the external services")
	}
	if at(T+7, 150) {
		t.Fatal("second look for T+6 came while T+7 is still running")
	}
	if !at(T+8, 100) {
		t.Fatal("no second look after T+7")
	}
	if at(T+9, 0) {
		t.Fatal("the second look repeats")
	}
}

// TestKubeWatchSync: nothing is reported while the caches fill, however the
// modification time moves; the sync is one change, with its second look.
func TestKubeWatchSync(t *testing.T) {
	src := new(fakeModified)
	src.unsynced.Store(true)
	const T = 1_700_000_000
	w := newKubeWatch(src)
	var now time.Time
	w.now = func() time.Time { return now }
	at := func(s int64, ms int) bool {
		now = time.Unix(s, int64(ms)*int64(time.Millisecond))
		return w.check().all
	}
	for i := range 5 {
		src.mod[kubernetes.ModifiedInternal].Store(T + int64(i))
		if at(T+int64(i), 500) {
			t.Fatalf("reported a change at T+%d before the sync", i)
		}
	}
	src.unsynced.Store(false)
	if !at(T+4, 600) {
		t.Fatal("the sync is not a change")
	}
	if at(T+4, 700) {
		t.Fatal("reported a change with none")
	}
	if !at(T+5, 100) {
		t.Fatal("no second look after the sync's second")
	}
	src.unsynced.Store(true) // HasSynced is not asked again
	src.mod[kubernetes.ModifiedInternal].Store(T + 6)
	if !at(T+6, 0) {
		t.Fatal("missed a change after the sync")
	}
}

// fakeInformer stands in for one of the plugin's informers.
type fakeInformer struct{ rv atomic.Value }

func (f *fakeInformer) LastSyncResourceVersion() string {
	v, _ := f.rv.Load().(string)
	return v
}

// TestKubeWatchResourceVersion: a watch event of an informer whose cache
// llq cannot read, seen as a moved resource version, marks everything at
// once, within the second of an earlier change, and once more kubeFollow
// later for a cache still being written; the coarse signal alone says
// nothing about such an informer.
func TestKubeWatchResourceVersion(t *testing.T) {
	src := new(fakeModified)
	eps, svcs := new(fakeInformer), new(fakeInformer)
	eps.rv.Store("100")
	const T = 1_700_000_000
	src.mod[kubernetes.ModifiedInternal].Store(T - 5)
	w := newKubeWatch(src, &kubeInformer{kind: "x", src: eps}, &kubeInformer{kind: "y", src: svcs})
	var now time.Time
	w.now = func() time.Time { return now }
	at := func(s int64, ms int) bool {
		now = time.Unix(s, int64(ms)*int64(time.Millisecond))
		return w.check().all
	}
	if !at(T-5, 500) {
		t.Fatal("the sync is not a change")
	}
	at(T-4, 500) // its follow-up and second looks
	if at(T-3, 0) {
		t.Fatal("reported a change with none")
	}

	src.mod[kubernetes.ModifiedInternal].Store(T)
	eps.rv.Store("101")
	if !at(T, 200) {
		t.Fatal("missed a change")
	}
	if at(T, 210) {
		t.Fatal("reported a change with none")
	}
	if !at(T, 200+int(kubeFollow/time.Millisecond)) {
		t.Fatal("no follow-up look")
	}
	// A second change in second T: the Unix second stays, the version moves.
	svcs.rv.Store("102")
	if !at(T, 300) {
		t.Fatal("missed a change within the second of another")
	}
	if at(T, 320) || !at(T, 360) || at(T, 500) {
		t.Fatal("follow-up look not once, kubeFollow after the change")
	}
	if at(T+1, int(kubeSettle/time.Millisecond)) || at(T+2, 0) {
		t.Fatal("the coarse second look marked everything for informers whose versions it saw")
	}
}

// fakeStore stands in for an informer's cache.
type fakeStore struct{ objs map[string]kubeObject }

func (f *fakeStore) List() []any {
	var out []any
	for _, o := range f.objs {
		out = append(out, o)
	}
	return out
}

func svcObject(name, version string, ips ...string) *object.Service {
	return &object.Service{Name: name, Namespace: "prod", Version: version, ClusterIPs: ips}
}

// TestKubeWatchObjects: with the cache readable, a look reports the objects
// that changed, added, updated (both states) or deleted, and nothing for a
// bookmark or a relist that changed no object.
func TestKubeWatchObjects(t *testing.T) {
	src := new(fakeModified)
	inf := new(fakeInformer)
	inf.rv.Store("10")
	store := &fakeStore{objs: map[string]kubeObject{
		"web": svcObject("web", "5", "10.0.0.1"),
		"db":  svcObject("db", "6", "10.0.0.2"),
	}}
	w := newKubeWatch(src, &kubeInformer{kind: "svc", src: inf, cache: store})
	now := time.Unix(1_700_000_000, 0)
	w.now = func() time.Time { return now }
	look := func() kubeDelta {
		now = now.Add(scanInterval)
		return w.check()
	}
	if d := look(); !d.all {
		t.Fatal("the sync is not a change of everything")
	}
	for range 10 { // the follow-up look, and quiet
		if d := look(); !d.empty() {
			t.Fatalf("reported %+v with no change", d)
		}
	}
	versions := func(d kubeDelta) []string {
		var out []string
		for _, o := range d.objects {
			out = append(out, o.GetName()+"@"+o.GetResourceVersion())
		}
		slices.Sort(out)
		return out
	}
	for _, step := range []struct {
		what   string
		change func()
		want   []string
	}{
		{"a bookmark", func() { inf.rv.Store("20") }, nil},
		{"an update", func() { store.objs["web"] = svcObject("web", "21", "10.0.0.3"); inf.rv.Store("21") }, []string{"web@21", "web@5"}},
		{"an add", func() { store.objs["mail"] = svcObject("mail", "22"); inf.rv.Store("22") }, []string{"mail@22"}},
		{"a delete", func() { delete(store.objs, "db"); inf.rv.Store("23") }, []string{"db@6"}},
		{"a relist with the same objects", func() {
			store.objs["mail"] = svcObject("mail", "22")
			inf.rv.Store("30")
		}, nil},
	} {
		step.change()
		if d := look(); d.all || !slices.Equal(versions(d), step.want) {
			t.Errorf("%s: reported %v (all: %v), want %v", step.what, versions(d), d.all, step.want)
		}
		// The follow-up look and the coarse signal's find nothing more.
		src.mod[kubernetes.ModifiedInternal].Store(now.Unix())
		for range 10 {
			if d := look(); !d.empty() {
				t.Errorf("%s: reported %v again", step.what, versions(d))
			}
		}
	}

	// A cache written after its version moved (the reflector moves the
	// version first) is caught by the follow-up look.
	inf.rv.Store("40")
	if d := look(); !d.empty() {
		t.Fatalf("reported %v before the cache changed", versions(d))
	}
	store.objs["web"] = svcObject("web", "40")
	var got []string
	for range 5 {
		got = append(got, versions(look())...)
	}
	if want := []string{"web@21", "web@40"}; !slices.Equal(got, want) {
		t.Errorf("follow-up look reported %v, want %v", got, want)
	}
}

// TestKubeInformers: the probe finds the informers of a real kubernetes
// plugin controller, the one InitKubeCache builds (no API server is needed
// until it runs).
func TestKubeInformers(t *testing.T) {
	k := kubernetes.New([]string{"cluster.local."})
	k.APIServerList = []string{"http://127.0.0.1:1"}
	if _, _, err := k.InitKubeCache(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := kubeInformers(k.APIConn)
	// Services and namespaces, with their caches; endpoint slices and pods
	// only when the plugin's setup asks for them, which kubernetes.New
	// alone does not.
	var kinds []string
	for _, inf := range got {
		kinds = append(kinds, inf.kind)
		if v := inf.src.LastSyncResourceVersion(); v != "" {
			t.Errorf("%s: resource version %q before any listing", inf.kind, v)
		}
		if inf.cache == nil {
			t.Errorf("%s: no cache", inf.kind)
		} else if n := len(inf.cache.List()); n != 0 {
			t.Errorf("%s: %d objects before any listing", inf.kind, n)
		}
	}
	slices.Sort(kinds)
	if want := []string{"ns", "svc"}; !slices.Equal(kinds, want) {
		t.Fatalf("found informers %v, want %v", kinds, want)
	}
	if got := kubeInformers(stubConn{fakeModified: new(fakeModified)}); len(got) != 0 {
		t.Errorf("found %d informers in a stub", len(got))
	}
}

// apiConn is the method set of the kubernetes plugin's (unexported)
// dnsController interface, so that a stub can stand in for APIConn.
type apiConn interface {
	ServiceList() []*object.Service
	EndpointsList() []*object.Endpoints
	ServiceImportList() []*object.ServiceImport
	SvcIndex(string) []*object.Service
	SvcIndexReverse(string) []*object.Service
	SvcExtIndexReverse(string) []*object.Service
	SvcImportIndex(string) []*object.ServiceImport
	PodIndex(string) []*object.Pod
	EpIndex(string) []*object.Endpoints
	EpIndexReverse(string) []*object.Endpoints
	McEpIndex(string) []*object.MultiClusterEndpoints
	GetNodeByName(context.Context, string) (*api.Node, error)
	GetNamespaceByName(string) (*object.Namespace, error)
	Run()
	HasSynced() bool
	Stop() error
	Modified(kubernetes.ModifiedMode) int64
}

// stubConn answers SvcIndex, HasSynced and Modified; anything else panics.
type stubConn struct {
	apiConn
	*fakeModified
	svcs map[string][]*object.Service
}

func (s stubConn) SvcIndex(key string) []*object.Service { return s.svcs[key] }

func (s stubConn) Modified(m kubernetes.ModifiedMode) int64 { return s.fakeModified.Modified(m) }

func (s stubConn) HasSynced() bool { return s.fakeModified.HasSynced() }

// TestKubeProbe: the probe marks the kubernetes and k8s_external zones on a
// change, and covers their names except those that fall through and
// ExternalName services.
func TestKubeProbe(t *testing.T) {
	src := new(fakeModified)
	k := kubernetes.New([]string{"Cluster.Local.", "in-addr.arpa."})
	k.Fall.SetZonesFromArgs([]string{"in-addr.arpa."})
	k.APIConn = stubConn{fakeModified: src, svcs: map[string][]*object.Service{
		"web.prod":  {{Name: "web", Namespace: "prod", Type: api.ServiceTypeClusterIP}},
		"mail.prod": {{Name: "mail", Namespace: "prod", Type: api.ServiceTypeExternalName, ExternalName: "mx.example.net."}},
	}}
	x := external.New()
	x.Zones = []string{"example.com."}
	p := newKubeProbe(nil, k, x, nil)

	all := []string{"cluster.local.", "in-addr.arpa.", "example.com."}
	zones := func() []string {
		var out []string
		for _, ch := range p.changed() {
			if ch.affects != nil {
				t.Fatalf("a narrowed change without informers: %+v", ch)
			}
			out = append(out, ch.zone)
		}
		return out
	}
	if z := zones(); !slices.Equal(z, all) { // the sync
		t.Fatalf("marked %v at the sync", z)
	}
	if z := zones(); z != nil {
		t.Fatalf("marked %v with no change", z)
	}
	src.mod[kubernetes.ModifiedInternal].Store(time.Now().Unix())
	if z := zones(); !slices.Equal(z, all) {
		t.Fatalf("marked %v", z)
	}

	for name, want := range map[string]bool{
		"web.prod.svc.cluster.local.":             true,
		"_http._tcp.web.prod.svc.Cluster.Local.":  true,
		"10-0-0-1.web.prod.svc.cluster.local.":    true,
		"other.prod.svc.cluster.local.":           true, // NXDOMAIN until a Service appears
		"mail.prod.svc.cluster.local.":            false,
		"_smtp._tcp.mail.prod.svc.cluster.local.": false,
		"1.0.0.10.in-addr.arpa.":                  false, // fallthrough
		"web.prod.example.com.":                   true,
		"example.org.":                            false,
	} {
		if got := p.covers(name); got != want {
			t.Errorf("covers(%s) = %v, want %v", name, got, want)
		}
	}
}

// TestKubeNames: each kind of object maps to the names whose answers it
// feeds, and to no other.
func TestKubeNames(t *testing.T) {
	namer := kubeNamer{zones: []string{"cluster.local."}, ext: []string{"example.com."}}
	for _, tc := range []struct {
		obj     kubeObject
		yes, no []string
	}{
		{
			obj: &object.Service{Name: "web", Namespace: "prod", ClusterIPs: []string{"10.0.0.1", "fd00::1"}, ExternalIPs: []string{"192.0.2.1"}},
			yes: []string{
				"web.prod.svc.cluster.local.", "_http._tcp.web.prod.svc.cluster.local.", "web-0.web.prod.svc.cluster.local.",
				"prod.svc.cluster.local.", "cluster.local.", "ns.dns.cluster.local.",
				"web.prod.example.com.", "example.com.",
				"1.0.0.10.in-addr.arpa.", "1.2.0.192.in-addr.arpa.",
				"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
			},
			no: []string{
				"db.prod.svc.cluster.local.", "web.dev.svc.cluster.local.", "eb.prod.svc.cluster.local.",
				"svc.cluster.local.", "web.prod.svc.other.", "2.0.0.10.in-addr.arpa.", "10-0-0-1.prod.pod.cluster.local.",
			},
		},
		{
			obj: &object.Endpoints{Name: "web-abcde", Namespace: "prod", Index: object.EndpointsKey("web", "prod"),
				Subsets: []object.EndpointSubset{{Addresses: []object.EndpointAddress{{IP: "10.1.0.1", Hostname: "web-0"}}}}},
			yes: []string{"web.prod.svc.cluster.local.", "web-0.web.prod.svc.cluster.local.", "_http._tcp.web.prod.svc.cluster.local.", "1.0.1.10.in-addr.arpa.", "web.prod.example.com."},
			no:  []string{"web-abcde.prod.svc.cluster.local.", "db.prod.svc.cluster.local.", "2.0.1.10.in-addr.arpa."},
		},
		{
			obj: &object.Pod{Name: "web-0", Namespace: "prod", PodIPs: []string{"10.1.0.1", "fd00::a"}},
			yes: []string{"10-1-0-1.prod.pod.cluster.local.", "fd00--a.prod.pod.cluster.local.", "fd00-0-0-0-0-0-0-a.prod.pod.cluster.local."},
			no:  []string{"10-1-0-2.prod.pod.cluster.local.", "10-1-0-1.dev.pod.cluster.local.", "web-0.prod.pod.cluster.local.", "web.prod.svc.cluster.local.", "1.0.1.10.in-addr.arpa.", "10-1-0-1.prod.pod.example.com."},
		},
		{
			obj: &object.Namespace{Name: "prod"},
			yes: []string{"prod.svc.cluster.local.", "web.prod.svc.cluster.local.", "10-1-0-1.prod.pod.cluster.local.", "web.prod.example.com."},
			no:  []string{"dev.svc.cluster.local.", "cluster.local.", "prod.cluster.local."},
		},
	} {
		names := namer.names([]kubeObject{tc.obj})
		for _, n := range tc.yes {
			if !names.affects(n) {
				t.Errorf("%T %s does not affect %s", tc.obj, tc.obj.GetName(), n)
			}
		}
		for _, n := range tc.no {
			if names.affects(n) {
				t.Errorf("%T %s affects %s", tc.obj, tc.obj.GetName(), n)
			}
		}
	}
}
