package llq

import (
	"strings"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

// TestMisconfigurations: a Corefile that parses but would not work as
// written is refused, with the file and line of the llq directive and in
// the Corefile's terms; one that is fine takes the listen address it
// should.
func TestMisconfigurations(t *testing.T) {
	for _, tc := range []struct {
		keys   []string // the server block's keys
		binds  []string // bind's addresses
		input  string
		err    string // in the error; "" = no error
		listen string // the listen address taken, when no error
	}{
		{keys: []string{"example.org:53"}, input: "llq", listen: ":5352"},
		{keys: []string{"example.org:53"}, input: "llq sub.example.org", listen: ":5352"},
		{keys: []string{"example.org:53", "example.net:53"}, input: "llq example.net", listen: ":5352"},
		{keys: []string{".:53"}, input: "llq example.com", listen: ":5352"},
		{keys: []string{"example.org:53"}, input: "llq example.com",
			err: "Testfile:1: zone example.com. is not in this server block's zones (example.org.)"},
		{keys: []string{"example.org:53"}, input: "llq example.org org",
			err: "zone org. is not in this server block's zones"},

		// bind: followed when listen gives no host.
		{keys: []string{"example.org:53"}, binds: []string{"127.0.0.1"}, input: "llq", listen: "127.0.0.1:5352"},
		{keys: []string{"example.org:53"}, binds: []string{"::1"}, input: "llq {\n listen :5353\n}", listen: "[::1]:5353"},
		{keys: []string{"example.org:53"}, binds: []string{"127.0.0.1"}, input: "llq {\n listen 127.0.0.2:5353\n}", listen: "127.0.0.2:5353"},
		{keys: []string{"example.org:53"}, binds: []string{"127.0.0.1", "::1"}, input: "llq",
			err: `Testfile:1: this server block binds 2 addresses (127.0.0.1 ::1) and the LLQ listener takes one: set it with "listen ADDRESS:5352"`},
		{keys: []string{"example.org:53"}, binds: []string{"127.0.0.1", "::1"}, input: "llq {\n listen [::1]:5352\n}", listen: "[::1]:5352"},

		// listen is checked where it is written.
		{input: "llq {\n listen 5352\n}", err: `Testfile:2 - Error during parsing: listen: want HOST:PORT or :PORT`},
		{input: "llq {\n listen :53x2\n}", err: `listen: port "53x2" of ":53x2" is not a number from 0 to 65535`},
		{input: "llq {\n listen :65536\n}", err: "not a number from 0 to 65535"},
		{input: "llq {\n listen localhost:5352\n}", err: `"localhost" is not an IP address`},

		// Numbers and durations in the Corefile's terms, not Go's.
		{input: "llq {\n max-llqs 10O00\n}", err: `Testfile:2 - Error during parsing: max-llqs: want a whole number, 0 for no limit, got "10O00"`},
		{input: "llq {\n poll 30x\n}", err: `poll: want a duration such as 500ms, 30s or 2h, or a number of seconds, got "30x"`},
		{input: "llq {\n setup-rate lots\n}", err: `setup-rate: want a number of setups per second`},
		{input: "llq {\n retransmit 2s three\n}", err: `retransmit: want a whole number`},
	} {
		c := caddy.NewTestController("dns", tc.input)
		c.ServerBlockKeys = tc.keys
		if tc.binds != nil {
			dnsserver.GetConfig(c).ListenHosts = tc.binds
		}
		err := setup(c)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%v %q: %v", tc.keys, tc.input, err)
		case tc.err != "" && err == nil:
			t.Errorf("%v %q: no error, want %q", tc.keys, tc.input, tc.err)
		case err != nil && (!strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "strconv")):
			t.Errorf("%v %q: error\n\t%v\nwant\n\t%s", tc.keys, tc.input, err, tc.err)
		case err == nil:
			h := dnsserver.GetConfig(c).Plugin[0](nil).(*LLQ)
			if h.cfg.listen != tc.listen {
				t.Errorf("%v %q: listens on %s, want %s", tc.keys, tc.input, h.cfg.listen, tc.listen)
			}
		}
	}
}

// TestClaimListen: server blocks of one Corefile may share a listen
// address only with the same options.
func TestClaimListen(t *testing.T) {
	claims := make(map[string]listenClaim)
	cfg := func(tweak func(*config)) *config {
		c := defaultConfig()
		if tweak != nil {
			tweak(c)
		}
		return c
	}
	if err := claimListen(claims, cfg(nil), "Corefile:2", nil); err != nil {
		t.Fatal(err)
	}
	if err := claimListen(claims, cfg(nil), "Corefile:9", nil); err != nil {
		t.Fatalf("same options refused: %v", err)
	}
	// The same options written differently are the same options.
	same := cfg(func(c *config) { c.poll = 30e9 })
	if err := claimListen(claims, same, "Corefile:12", []string{"poll 30s"}); err != nil {
		t.Fatalf("same options refused: %v", err)
	}
	other := cfg(func(c *config) { c.minLease, c.maxLease = 1e9, 60e9 })
	err := claimListen(claims, other, "Corefile:20", []string{"lease 1 60"})
	want := "the LLQ listener :5352 is also the listener of the server block at Corefile:2, with other options (there: no options; here: lease 1 60)"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want %q", err, want)
	}
	// Another address is another listener; an ephemeral port is never
	// shared.
	other.listen = "127.0.0.1:5352"
	if err := claimListen(claims, other, "Corefile:20", nil); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		eph := cfg(func(c *config) { c.listen = "127.0.0.1:0"; c.poll = 0 })
		if err := claimListen(claims, eph, "Corefile:30", nil); err != nil {
			t.Fatal(err)
		}
	}
}
