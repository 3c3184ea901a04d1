package llq

import (
	"testing"
	"time"

	"github.com/miekg/dns"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestEtcdPrefix(t *testing.T) {
	for in, want := range map[string]string{"skydns": "/skydns/", "/skydns": "/skydns/", "/skydns/": "/skydns/", "a/b": "/a/b/", "": "/"} {
		if got := etcdPrefix(in); got != want {
			t.Errorf("etcdPrefix(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEtcdName(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"/skydns/org/example/www", "www.example.org."},
		{"/skydns/org/example/www/x1", "x1.www.example.org."},
		{"/skydns/org/example/_tcp/_http/x1", "x1._http._tcp.example.org."},
		{"/skydns/org/Example/WWW", "www.example.org."},
		{"/skydns/org/example/*/x1", "example.org."},
		{"/skydns/org/example/a/*", "a.example.org."},
		{"/skydns/", "."},
		{"/other/org/example/www", ""},
		{"/skydnsx/org/example", ""},
	} {
		got, ok := etcdName(tc.key, "/skydns/")
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("etcdName(%q) = %q, %v; want %q", tc.key, got, ok, tc.want)
		}
	}
}

func TestWildcardBase(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"www.example.org.", ""},
		{"*.example.org.", "example.org."},
		{"a.*.example.org.", "example.org."},
		{"any.b.*.c.example.org.", "c.example.org."},
		{"*.", "."},
		{"many.example.org.", ""},
	} {
		got, ok := wildcardBase(tc.name)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("wildcardBase(%q) = %q, %v; want %q", tc.name, got, ok, tc.want)
		}
	}
}

func TestEtcdAffects(t *testing.T) {
	www := etcdAffects("www.example.org.")
	srv := etcdAffects("x1._http._tcp.example.org.")
	for _, tc := range []struct {
		f     func(string) bool
		topic string
		want  bool
	}{
		{www, "www.example.org.", true},
		{www, "WWW.example.org.", true},
		{www, "example.org.", true},         // the apex aggregates every key
		{www, "a.www.example.org.", true},   // below the key
		{www, "*.example.org.", true},       // a wildcard question above it
		{www, "*.www.example.org.", true},   // fetched by its Get (then filtered out): conservative
		{www, "www2.example.org.", false},   // a sibling
		{www, "mail.example.org.", false},   // a sibling
		{www, "*.mail.example.org.", false}, // another branch's wildcard
		{srv, "_http._tcp.example.org.", true},
		{srv, "_tcp.example.org.", true},
		{srv, "_https._tcp.example.org.", false},
		{srv, "*._tcp.example.org.", true},
		{srv, "any._tcp.example.org.", true},
	} {
		if got := tc.f(tc.topic); got != tc.want {
			t.Errorf("affects(%q) = %v, want %v", tc.topic, got, tc.want)
		}
	}
}

// A CNAME in a topic's answers makes its target's changes the topic's.
func TestChangeReachesCNAMETarget(t *testing.T) {
	env := newTestEnv(t, nil)
	tp := &topic{key: topicKey{questionKey: questionKey{name: "alias.example.org.", qtype: dns.TypeA, qclass: dns.ClassINET}}}
	tp.setAnswers(newAnswerSet(rrs(t,
		"alias.example.org. 60 IN CNAME www.example.org.",
		"www.example.org. 60 IN A 192.0.2.1")))
	if !(change{trigger: "etcd", zone: testZone, affects: etcdAffects("www.example.org.")}).reaches(env.e, tp) {
		t.Error("a change of the CNAME target does not reach the alias")
	}
	if (change{trigger: "etcd", zone: testZone, affects: etcdAffects("mail.example.org.")}).reaches(env.e, tp) {
		t.Error("an unrelated change reaches the alias")
	}
	if !(change{trigger: "file", zone: testZone}).reaches(env.e, tp) {
		t.Error("a zone-wide change does not reach the alias")
	}
}

// A change from a key re-resolves the topics it can affect and no other.
func TestEtcdChangeScope(t *testing.T) {
	env := newTestEnv(t, nil)
	c := newUDPClient(t)
	for _, name := range []string{"www.example.org.", "example.org.", "mail.example.org.", "ns1.example.org.", "x.www.example.org."} {
		env.establish(t, c.addr, 1232, question(name, dns.TypeA), 3600)
	}
	w := &etcdWatch{e: env.e, prefix: "/skydns/", zones: []string{testZone}}
	resolved := track(t, env.e.metrics.resolutions.WithLabelValues("etcd"))
	ch, ok := w.change("/skydns/org/example/www/x1")
	if !ok {
		t.Fatal("no change for a key in the zone")
	}
	env.e.changes.mark(ch)
	// x1.www, www, the apex; x.www is a sibling of x1.www.
	eventually(t, "the re-resolutions", func() bool { return resolved.moved(t) == 2 }, wait)
	time.Sleep(50 * time.Millisecond)
	if n := resolved.moved(t); n != 2 {
		t.Errorf("re-resolved %v topics, want 2 (www and the apex)", n)
	}
	if _, ok := w.change("/skydns/net/example/www"); ok {
		t.Error("a change for a key outside the zones")
	}
}

// The watch loop: creation marks the zones once and records the revision,
// events mark their keys and advance it, a compaction marks the zones and
// resumes from the compacted revision.
func TestEtcdConsume(t *testing.T) {
	env := newTestEnv(t, nil)
	w := &etcdWatch{e: env.e, prefix: "/skydns/", zones: []string{testZone}}
	changes := track(t, env.e.metrics.triggerChanges.WithLabelValues("etcd"))

	ch := make(chan clientv3.WatchResponse, 4)
	ch <- clientv3.WatchResponse{Header: &pb.ResponseHeader{Revision: 10}, Created: true}
	ch <- clientv3.WatchResponse{Header: &pb.ResponseHeader{Revision: 12}, Events: []*clientv3.Event{
		{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte("/skydns/org/example/old"), ModRevision: 10}}, // seen: skipped
		{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte("/skydns/org/example/www"), ModRevision: 11}},
		{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte("/skydns/org/example/mail"), ModRevision: 11}}, // same transaction
		{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("/elsewhere/x"), ModRevision: 12}},
	}}
	close(ch)
	var last int64
	if !w.consume(ch, &last) {
		t.Error("a created watch did not count as progress")
	}
	if last != 12 {
		t.Errorf("last revision %d, want 12", last)
	}
	if n := changes.moved(t); n != 3 { // the zone at creation, www, mail
		t.Errorf("trigger_changes{etcd} moved %v, want 3", n)
	}

	ch = make(chan clientv3.WatchResponse, 1)
	ch <- clientv3.WatchResponse{Header: &pb.ResponseHeader{Revision: 30}, CompactRevision: 20, Canceled: true}
	close(ch)
	w.consume(ch, &last)
	if last != 19 {
		t.Errorf("after compaction, last revision %d, want 19 (resume at 20)", last)
	}
	if n := changes.moved(t); n != 4 {
		t.Errorf("trigger_changes{etcd} moved %v, want 4", n)
	}

	// A resumed watch (last known) does not mark the zones on creation.
	ch = make(chan clientv3.WatchResponse, 1)
	ch <- clientv3.WatchResponse{Header: &pb.ResponseHeader{Revision: 30}, Created: true}
	close(ch)
	w.consume(ch, &last)
	if last != 19 || changes.moved(t) != 4 {
		t.Errorf("resumed watch: last %d, changes %v", last, changes.moved(t))
	}
}
