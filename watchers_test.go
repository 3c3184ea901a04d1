package llq

import "testing"

// TestScanTwoCopiesOfAZone: two server blocks that load their own copy of
// one origin (two file plugins) are two zones to the scan: each is a change
// when it first appears and when its own tree is swapped, not on every scan
// because the other copy's tree differs.
func TestScanTwoCopiesOfAZone(t *testing.T) {
	env := newTestEnv(t, nil)
	a, b := parseZone(t, zoneData), parseZone(t, withRecords("www IN A 192.0.2.1"))
	marks := track(t, env.e.metrics.triggerChanges.WithLabelValues("file"))
	other := &LLQ{Zones: []string{testZone}, cfg: env.owner.cfg}
	env.e.watch.add(
		zoneProbe{owner: env.owner, trigger: "file", zones: staticZones(fileZones(a))},
		zoneProbe{owner: other, trigger: "file", zones: staticZones(fileZones(b))},
	)
	// The scans run on their own timer as well; whichever scan comes
	// first sees both copies appear.
	eventually(t, "both copies seen", func() bool { return marks.moved(t) == 2 }, 5e9)
	for range 5 {
		env.e.watch.scanZones()
	}
	if n := marks.moved(t); n != 2 {
		t.Fatalf("%v file changes from two unchanged copies of one origin, want 2", n)
	}
	swapZone(t, b, withRecords("www IN A 192.0.2.2"))
	env.e.watch.scanZones()
	env.e.watch.scanZones()
	if n := marks.moved(t); n != 3 {
		t.Fatalf("%v file changes after one copy's reload, want 3", n)
	}
}
