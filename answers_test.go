package llq

import (
	"reflect"
	"testing"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

func key(t *testing.T, s string) string {
	t.Helper()
	k, _ := wire.RecordKey(mustRR(t, s), nil)
	return k
}

func TestRecordKey(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"www.example.org. 300 IN A 192.0.2.1", "www.example.org. 3600 IN A 192.0.2.1", true},
		{"www.example.org. 300 IN A 192.0.2.1", "WWW.Example.ORG. 300 IN A 192.0.2.1", true},
		{"www.example.org. 300 IN A 192.0.2.1", "wWw.eXample.org. 0 IN A 192.0.2.1", true},
		{"a.example.org. 1 IN TXT \"x\"", "A.EXAMPLE.ORG. 4294967295 IN TXT \"x\"", true},
		{"www.example.org. 300 IN A 192.0.2.1", "www.example.org. 300 IN A 192.0.2.2", false},
		{"www.example.org. 300 IN A 192.0.2.1", "ww.example.org. 300 IN A 192.0.2.1", false},
		{"www.example.org. 300 IN A 192.0.2.1", "www.example.org. 300 CH A 192.0.2.1", false},
		{"www.example.org. 300 IN TXT \"Hello\"", "www.example.org. 300 IN TXT \"hello\"", false}, // rdata keeps its case
		{"www.example.org. 300 IN AAAA ::1", "www.example.org. 300 IN A 0.0.0.1", false},
	} {
		if got := key(t, tc.a) == key(t, tc.b); got != tc.same {
			t.Errorf("RecordKey(%s) == RecordKey(%s): %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
}

func TestRecordKeyReusesBuffer(t *testing.T) {
	a := mustRR(t, "www.example.org. 300 IN A 192.0.2.1")
	b := mustRR(t, "WWW.example.org. 300 IN TXT \"a much longer record than the first one\"")
	ka, buf := wire.RecordKey(a, nil)
	kb, buf := wire.RecordKey(b, buf)
	ka2, _ := wire.RecordKey(a, buf)
	if ka != ka2 || ka == kb {
		t.Fatalf("keys depend on the scratch buffer")
	}
	// The key does not alias the buffer, and the record is left alone.
	if a.Header().Ttl != 300 || b.Header().Name != "WWW.example.org." {
		t.Fatalf("RecordKey modified its record: %v %v", a, b)
	}
}

func TestNewAnswerSet(t *testing.T) {
	set := newAnswerSet(append(rrs(t,
		"www.example.org. 300 IN A 192.0.2.1",
		"WWW.example.org. 60 IN A 192.0.2.1", // the same record
		"www.example.org. 300 IN A 192.0.2.2",
	), &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}))
	if len(set) != 2 {
		t.Fatalf("set of %d records, want 2: %v", len(set), set)
	}
	// records is deterministic.
	first := rrStrings(set.records())
	for i := 0; i < 10; i++ {
		if !reflect.DeepEqual(rrStrings(newAnswerSet(set.records()).records()), first) {
			t.Fatalf("records order varies")
		}
	}
}

func TestDiff(t *testing.T) {
	old := newAnswerSet(rrs(t,
		"www.example.org. 300 IN A 192.0.2.1",
		"www.example.org. 300 IN A 192.0.2.2",
		"www.example.org. 300 IN A 192.0.2.3",
	))
	next := newAnswerSet(rrs(t,
		"WWW.example.org. 60 IN A 192.0.2.1", // TTL and case only: no change
		"www.example.org. 300 IN A 192.0.2.4",
		"www.example.org. 300 IN A 192.0.2.5",
	))
	added, removed := old.diff(next)
	var a, r []dns.RR
	for _, k := range added {
		a = append(a, next[k])
	}
	for _, k := range removed {
		r = append(r, old[k])
	}
	sameRRs(t, a, "www.example.org. 300 IN A 192.0.2.4", "www.example.org. 300 IN A 192.0.2.5")
	sameRRs(t, r, "www.example.org. 300 IN A 192.0.2.2", "www.example.org. 300 IN A 192.0.2.3")
	for _, ks := range [][]string{added, removed} {
		for i := 1; i < len(ks); i++ {
			if ks[i-1] >= ks[i] {
				t.Fatalf("diff keys not sorted")
			}
		}
	}

	if a, r := old.diff(old); a != nil || r != nil {
		t.Fatalf("diff of a set with itself: %v %v", a, r)
	}
	if a, r := answerSet(nil).diff(next); len(a) != 3 || r != nil {
		t.Fatalf("diff from nothing: %d added %d removed", len(a), len(r))
	}
	if a, r := old.diff(answerSet{}); a != nil || len(r) != 3 {
		t.Fatalf("diff to nothing: %d added %d removed", len(a), len(r))
	}
}
