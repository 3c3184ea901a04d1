package test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
)

// Native change signals of backends other than file and etcd: hosts and
// auto. Every server here polls once an hour, so an event within seconds
// can only come from the native trigger.

// nativeLLQ is the llq block of these tests: a fixed listener and no
// polling to speak of.
func nativeLLQ(addr netip.AddrPort) string {
	return fmt.Sprintf(`llq {
        listen %s
        lease 2 60
        retransmit 200ms 3
        poll 1h
    }`, addr)
}

// startCorefile starts CoreDNS on corefile, whose llq listens on addr.
func startCorefile(t *testing.T, corefile string, addr netip.AddrPort) *server {
	t.Helper()
	s := &server{t: t, llq: addr}
	s.start(corefile)
	return s
}

func fixedLLQ(t *testing.T) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
}

// replaceFile replaces path's content the way an editor that renames
// does. The new file is written elsewhere first, so that auto never sees
// it under another name.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestHostsTrigger: an edit of the hosts file reaches subscribers within
// the plugin's reload interval, not the poll's.
func TestHostsTrigger(t *testing.T) {
	hostsFile := filepath.Join(t.TempDir(), "hosts")
	replaceFile(t, hostsFile, "192.0.2.10 www.example.org\n")
	addr := fixedLLQ(t)
	s := startCorefile(t, fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1
    %s
    cache 30
    hosts %s example.org {
        reload 100ms
    }
}
`, nativeLLQ(addr), hostsFile), addr)
	c := dial(t, s.llq, client.Options{})
	sub := subscribe(t, c, "www.example.org.", dns.TypeA)
	converge(t, sub, rrSetOf(t, "www 3600 IN A 192.0.2.10"))
	changes := counter(t, "trigger_changes_total", "trigger", "hosts")
	polled := counter(t, "resolutions_total", "trigger", "poll")

	replaceFile(t, hostsFile, "192.0.2.10 www.example.org\n192.0.2.11 www.example.org\n")
	converge(t, sub, rrSetOf(t, "www IN A 192.0.2.10", "www IN A 192.0.2.11"))
	replaceFile(t, hostsFile, "192.0.2.11 www.example.org\n")
	converge(t, sub, rrSetOf(t, "www IN A 192.0.2.11"))

	var added, removed []dns.RR
	for _, ev := range drain(sub) {
		added = append(added, ev.Added...)
		removed = append(removed, ev.Removed...)
	}
	if len(added) != 1 || len(removed) != 1 {
		t.Errorf("events added %v removed %v, want one of each", added, removed)
	}
	if changes() < 2 {
		t.Errorf("trigger_changes_total{hosts} grew by %v, want 2", changes())
	}
	if n := polled(); n != 0 {
		t.Errorf("the poll re-resolved %v topics", n)
	}
}

// TestAutoZoneAppears: a zone file appearing in auto's directory is an
// event for a subscribed name in the new zone; its removal takes the
// records away again.
func TestAutoZoneAppears(t *testing.T) {
	dir := t.TempDir()
	replaceFile(t, filepath.Join(dir, "db.example.net"), `$ORIGIN example.net.
@ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300
@ 3600 IN NS ns1
ns1 3600 IN A 192.0.2.53
`)
	addr := fixedLLQ(t)
	s := startCorefile(t, fmt.Sprintf(`example.net:0 {
    bind 127.0.0.1
    %s
    cache 30
    auto {
        directory %s
        reload 100ms
    }
}
`, nativeLLQ(addr), dir), addr)
	c := dial(t, s.llq, client.Options{})
	// Answered by the parent zone for now: NXDOMAIN, no answers.
	sub := subscribe(t, c, "www.sub.example.net.", dns.TypeA)
	if got := sub.Answers(); len(got) != 0 {
		t.Fatalf("answers before the zone exists: %v", got)
	}
	changes := counter(t, "trigger_changes_total", "trigger", "auto")
	polled := counter(t, "resolutions_total", "trigger", "poll")

	child := filepath.Join(dir, "db.sub.example.net")
	replaceFile(t, child, `$ORIGIN sub.example.net.
@ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300
@ 3600 IN NS ns1
ns1 3600 IN A 192.0.2.53
www 3600 IN A 192.0.2.20
`)
	want := []string{"www.sub.example.net.\t0\tIN\tA\t192.0.2.20"}
	converge(t, sub, want)
	if err := os.Remove(child); err != nil {
		t.Fatal(err)
	}
	converge(t, sub, nil)

	var added, removed []dns.RR
	for _, ev := range drain(sub) {
		added = append(added, ev.Added...)
		removed = append(removed, ev.Removed...)
	}
	if len(added) != 1 || len(removed) != 1 {
		t.Errorf("events added %v removed %v, want one of each", added, removed)
	}
	if changes() < 2 {
		t.Errorf("trigger_changes_total{auto} grew by %v, want at least 2", changes())
	}
	if n := polled(); n != 0 {
		t.Errorf("the poll re-resolved %v topics", n)
	}
}
