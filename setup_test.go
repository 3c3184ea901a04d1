package llq

import (
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

func TestParse(t *testing.T) {
	def := defaultConfig()
	tests := []struct {
		input string
		err   string // substring of the expected error; "" = success
		check func(c *config) bool
		zones []string
	}{
		// Defaults.
		{input: `llq`, check: func(c *config) bool { return *c == *def }},
		{input: "llq {\n}", check: func(c *config) bool { return *c == *def }},
		{input: `llq example.org example.net.`, zones: []string{"example.org.", "example.net."}},

		{input: "llq {\n listen 127.0.0.1:5353\n}", check: func(c *config) bool { return c.listen == "127.0.0.1:5353" }},
		{input: "llq {\n listen [::1]:0\n}", check: func(c *config) bool { return c.listen == "[::1]:0" }},
		{input: "llq {\n listen\n}", err: "Wrong argument count"},
		{input: "llq {\n listen a b\n}", err: "Wrong argument count"},

		{input: "llq {\n lease 60 3600\n}", check: func(c *config) bool { return c.minLease == time.Minute && c.maxLease == time.Hour }},
		{input: "llq {\n lease 1s 1s\n}", check: func(c *config) bool { return c.minLease == time.Second && c.maxLease == time.Second }},
		{input: "llq {\n lease 15m 2h\n}", check: func(c *config) bool { return c.minLease == 15*time.Minute && c.maxLease == 2*time.Hour }},
		{input: "llq {\n lease 0 10\n}", err: "lease wants"},
		{input: "llq {\n lease 500ms 10\n}", err: "lease wants"},
		{input: "llq {\n lease 10 5\n}", err: "lease wants"},
		{input: "llq {\n lease -1s 1h\n}", err: "negative"},
		{input: "llq {\n lease a 1h\n}", err: "lease"},
		{input: "llq {\n lease 1m\n}", err: "Wrong argument count"},
		{input: "llq {\n lease 1m 2m 3m\n}", err: "Wrong argument count"},

		{input: "llq {\n max-llqs 10\n}", check: func(c *config) bool { return c.maxLLQs == 10 }},
		{input: "llq {\n max-llqs 0\n}", check: func(c *config) bool { return c.maxLLQs == 0 }},
		{input: "llq {\n max-llqs -1\n}", err: "negative"},
		{input: "llq {\n max-llqs ten\n}", err: "max-llqs"},
		{input: "llq {\n max-llqs\n}", err: "want one number"},
		{input: "llq {\n max-llqs 1 2\n}", err: "want one number"},

		{input: "llq {\n max-llqs-per-client 3\n}", check: func(c *config) bool { return c.maxPerClient == 3 && c.maxLLQs == def.maxLLQs }},
		{input: "llq {\n max-llqs-per-client 0\n}", check: func(c *config) bool { return c.maxPerClient == 0 }},
		{input: "llq {\n max-llqs-per-client -3\n}", err: "negative"},
		{input: "llq {\n max-llqs-per-client\n}", err: "want one number"},

		{input: "llq {\n setup-rate 5\n}", check: func(c *config) bool { return c.setupRate == 5 && c.setupBurst == 5 }},
		{input: "llq {\n setup-rate 0.5\n}", check: func(c *config) bool { return c.setupRate == 0.5 && c.setupBurst == 1 }},
		{input: "llq {\n setup-rate 5 50\n}", check: func(c *config) bool { return c.setupRate == 5 && c.setupBurst == 50 }},
		{input: "llq {\n setup-rate 0\n}", check: func(c *config) bool { return c.setupRate == 0 }},
		{input: "llq {\n setup-rate\n}", err: "Wrong argument count"},
		{input: "llq {\n setup-rate 1 2 3\n}", err: "Wrong argument count"},
		{input: "llq {\n setup-rate -1\n}", err: "negative"},
		{input: "llq {\n setup-rate fast\n}", err: "setup-rate"},
		{input: "llq {\n setup-rate 1 -2\n}", err: "negative"},
		{input: "llq {\n setup-rate 1 x\n}", err: "setup-rate"},
		{input: "llq {\n setup-rate NaN\n}", err: "setup-rate"},
		{input: "llq {\n setup-rate Inf\n}", err: "setup-rate"},
		{input: "llq {\n setup-rate 5 0\n}", err: "setup-rate"},

		{input: "llq {\n retransmit 1s 3\n}", check: func(c *config) bool { return c.retransmit == time.Second && c.attempts == 3 }},
		{input: "llq {\n retransmit 500ms 1\n}", check: func(c *config) bool { return c.retransmit == 500*time.Millisecond && c.attempts == 1 }},
		{input: "llq {\n retransmit 2 5\n}", check: func(c *config) bool { return c.retransmit == 2*time.Second && c.attempts == 5 }},
		{input: "llq {\n retransmit 0 3\n}", err: "INTERVAL > 0"},
		{input: "llq {\n retransmit 1s 0\n}", err: "ATTEMPTS >= 1"},
		{input: "llq {\n retransmit 1s -1\n}", err: "negative"},
		{input: "llq {\n retransmit soon 3\n}", err: "retransmit"},
		{input: "llq {\n retransmit 1s\n}", err: "Wrong argument count"},

		{input: "llq {\n poll 10s\n}", check: func(c *config) bool { return c.poll == 10*time.Second }},
		{input: "llq {\n poll 0\n}", check: func(c *config) bool { return c.poll == 0 }},
		{input: "llq {\n poll 90\n}", check: func(c *config) bool { return c.poll == 90*time.Second }},
		{input: "llq {\n poll -1s\n}", err: "negative"},
		{input: "llq {\n poll often\n}", err: "poll"},
		{input: "llq {\n poll\n}", err: "Wrong argument count"},
		{input: "llq {\n poll 1s 2s\n}", err: "Wrong argument count"},

		{input: "llq {\n debounce 50ms\n}", check: func(c *config) bool { return c.debounce == 50*time.Millisecond }},
		{input: "llq {\n debounce 0\n}", check: func(c *config) bool { return c.debounce == 0 }},
		{input: "llq {\n debounce -5ms\n}", err: "negative"},
		{input: "llq {\n debounce\n}", err: "Wrong argument count"},

		{input: "llq {\n srv-target llq.example.net\n}", check: func(c *config) bool { return c.srvTarget == "llq.example.net." }},
		{input: "llq {\n srv-target ns1.example.org.\n}", check: func(c *config) bool { return c.srvTarget == "ns1.example.org." }},
		{input: "llq {\n srv-target a..b\n}", err: "not a domain name"},
		{input: "llq {\n srv-target\n}", err: "Wrong argument count"},
		{input: "llq {\n srv-target a b\n}", err: "Wrong argument count"},

		{input: "llq {\n max-connections 50\n}", check: func(c *config) bool { return c.conns.max == 50 && c.conns.perClient == def.conns.perClient }},
		{input: "llq {\n max-connections 0\n}", check: func(c *config) bool { return c.conns.max == 0 }},
		{input: "llq {\n max-connections -1\n}", err: "negative"},
		{input: "llq {\n max-connections\n}", err: "want one number"},
		{input: "llq {\n max-connections-per-client 8\n}", check: func(c *config) bool { return c.conns.perClient == 8 && c.conns.max == def.conns.max }},
		{input: "llq {\n max-connections-per-client 0\n}", check: func(c *config) bool { return c.conns.perClient == 0 }},
		{input: "llq {\n max-connections-per-client many\n}", err: "max-connections-per-client"},

		{input: "llq {\n idle-timeout 10s\n}", check: func(c *config) bool { return c.conns.idle == 10*time.Second }},
		{input: "llq {\n idle-timeout 5\n}", check: func(c *config) bool { return c.conns.idle == 5*time.Second }},
		{input: "llq {\n idle-timeout 0\n}", err: "more than 0"},
		{input: "llq {\n idle-timeout -1s\n}", err: "negative"},
		{input: "llq {\n idle-timeout\n}", err: "Wrong argument count"},

		{input: "llq {\n max-read-buffers 1048576\n}", check: func(c *config) bool { return c.conns.buffers == 1<<20 }},
		{input: "llq {\n max-read-buffers 0\n}", check: func(c *config) bool { return c.conns.buffers == 0 }},
		{input: "llq {\n max-read-buffers 65535\n}", check: func(c *config) bool { return c.conns.buffers == 65535 }},
		{input: "llq {\n max-read-buffers 1000\n}", err: "one whole message"},
		{input: "llq {\n max-read-buffers -5\n}", err: "negative"},

		{input: "llq {\n client-prefix 56\n}", check: func(c *config) bool { return c.clientBits == clientBits{v4: 32, v6: 56} }},
		{input: "llq {\n client-prefix 128 24\n}", check: func(c *config) bool { return c.clientBits == clientBits{v4: 24, v6: 128} }},
		{input: "llq {\n client-prefix 129\n}", err: "from 0 to 128"},
		{input: "llq {\n client-prefix 64 33\n}", err: "from 0 to 32"},
		{input: "llq {\n client-prefix /64\n}", err: "prefix length"},
		{input: "llq {\n client-prefix\n}", err: "Wrong argument count"},
		{input: "llq {\n client-prefix 64 32 1\n}", err: "Wrong argument count"},

		{input: "llq {\n resolve-parallel 2\n}", check: func(c *config) bool { return c.resolveWorkers == 2 }},
		{input: "llq {\n resolve-parallel 0\n}", err: "at least 1"},
		{input: "llq {\n resolve-parallel\n}", err: "want one number"},
		{input: "llq {\n handoff off\n}", check: func(c *config) bool { return !c.handoff }},
		{input: "llq {\n handoff on\n}", check: func(c *config) bool { return c.handoff }},
		{input: "llq {\n handoff\n}", err: "want on or off"},
		{input: "llq {\n handoff no\n}", err: "want on or off"},
		{input: "llq {\n tls cert.pem key.pem\n}", check: func(c *config) bool {
			return c.tlsCert == "cert.pem" && c.tlsKey == "key.pem" && c.tlsCA == "" && c.tlsListen == ":853"
		}},
		{input: "llq {\n tls cert.pem key.pem ca.pem\n}", check: func(c *config) bool { return c.tlsCA == "ca.pem" }},
		{input: "llq {\n tls cert.pem\n}", err: "Wrong argument count"},
		{input: "llq {\n tls a b c d\n}", err: "Wrong argument count"},
		{input: "llq {\n tls-listen 127.0.0.1:8853\n}", check: func(c *config) bool { return c.tlsListen == "127.0.0.1:8853" }},
		{input: "llq {\n tls-listen\n}", err: "Wrong argument count"},
		{input: "llq {\n tls-listen a b\n}", err: "Wrong argument count"},
		{input: "llq {\n tls-listen :8853\n}", check: func(c *config) bool { return c.tlsListen == ":8853" }},
		{input: "llq {\n tls-listen [::1]:853\n}", check: func(c *config) bool { return c.tlsListen == "[::1]:853" }},
		{input: "llq {\n tls-listen push.example.org:853\n}", err: "Testfile:2 - Error during parsing: tls-listen: \"push.example.org\" is not an IP address"},
		{input: "llq {\n tls-listen 127.0.0.1\n}", err: "tls-listen: want HOST:PORT or :PORT"},
		{input: "llq {\n tls-listen 127.0.0.1:8530000\n}", err: "is not a number from 0 to 65535"},
		{input: "llq {\n tls-listen :dot\n}", err: "is not a number from 0 to 65535"},

		{input: "llq {\n push-keepalive 30s 2h\n}", check: func(c *config) bool { return c.pushInactivity == 30*time.Second && c.pushKeepalive == 2*time.Hour }},
		{input: "llq {\n push-keepalive 0 10\n}", check: func(c *config) bool { return c.pushInactivity == 0 && c.pushKeepalive == 10*time.Second }},
		{input: "llq {\n push-keepalive 1m 9s\n}", err: "below 10s"},
		{input: "llq {\n push-keepalive 1m\n}", err: "Wrong argument count"},
		{input: "llq {\n push-keepalive x 1h\n}", err: "push-keepalive"},

		{input: "llq {\n max-sessions 7\n}", check: func(c *config) bool { return c.maxSessions == 7 }},
		{input: "llq {\n max-sessions -7\n}", err: "negative"},
		{input: "llq {\n max-sessions-per-client 2\n}", check: func(c *config) bool { return c.maxSessionsPerClient == 2 }},
		{input: "llq {\n max-subscriptions 9\n}", check: func(c *config) bool { return c.maxPushSubs == 9 }},
		{input: "llq {\n max-subscriptions-per-session 3\n}", check: func(c *config) bool { return c.maxSubsPerSession == 3 }},
		{input: "llq {\n max-subscriptions-per-session\n}", err: "want one number"},
		{input: "llq {\n max-queued 65536\n}", check: func(c *config) bool { return c.maxQueued == 65536 }},
		{input: "llq {\n max-queued lots\n}", err: "max-queued"},
		{input: "llq {\n tls-handshake-timeout 3s\n}", check: func(c *config) bool { return c.handshakeTimeout == 3*time.Second }},
		{input: "llq {\n tls-handshake-timeout 0\n}", err: "positive"},
		{input: "llq {\n tls-handshake-timeout\n}", err: "Wrong argument count"},
		{input: "llq {\n retry-delay 250ms\n}", check: func(c *config) bool { return c.retryDelay == 250*time.Millisecond }},
		{input: "llq {\n retry-delay -1s\n}", err: "negative"},
		{input: "llq {\n state /var/lib/llq/state\n}", check: func(c *config) bool {
			return c.statePath == "/var/lib/llq/state" && c.stateEvery == def.stateEvery
		}},
		{input: "llq {\n state llq.state 30s\n}", check: func(c *config) bool { return c.statePath == "llq.state" && c.stateEvery == 30*time.Second }},
		{input: "llq {\n state llq.state 2\n}", check: func(c *config) bool { return c.stateEvery == 2*time.Second }},
		{input: "llq {\n state llq.state 0\n}", err: "INTERVAL must be positive"},
		{input: "llq {\n state llq.state -1s\n}", err: "negative"},
		{input: "llq {\n state llq.state often\n}", err: "state"},
		{input: "llq {\n state\n}", err: "Wrong argument count"},
		{input: "llq {\n state a 1s b\n}", err: "Wrong argument count"},

		// Everything at once.
		{input: `llq example.org {
			listen :15352
			lease 30 600
			max-llqs 5
			max-llqs-per-client 2
			setup-rate 3 7
			retransmit 250ms 4
			poll 1m
			debounce 5ms
			srv-target push.example.org
		}`, zones: []string{"example.org."}, check: func(c *config) bool {
			return c.listen == ":15352" && c.minLease == 30*time.Second && c.maxLease == 10*time.Minute &&
				c.maxLLQs == 5 && c.maxPerClient == 2 && c.setupRate == 3 && c.setupBurst == 7 &&
				c.retransmit == 250*time.Millisecond && c.attempts == 4 && c.poll == time.Minute &&
				c.debounce == 5*time.Millisecond && c.srvTarget == "push.example.org." &&
				c.udpSize == def.udpSize && c.fullRetryAfter == def.fullRetryAfter
		}},

		{input: "llq {\n bogus 1\n}", err: `unknown property "bogus"`},
		{input: "llq {\n Listen :1\n}", err: "unknown property"},
		{input: "llq\nllq", err: "only be used once"},
		{input: "llq {\n}\nllq example.org", err: "only be used once"},
	}
	for i, tc := range tests {
		c := caddy.NewTestController("dns", tc.input)
		zones, cfg, _, err := parse(c)
		if tc.err != "" {
			if err == nil {
				t.Errorf("test %d %q: no error, want %q", i, tc.input, tc.err)
			} else if !strings.Contains(err.Error(), tc.err) {
				t.Errorf("test %d %q: error %q, want %q", i, tc.input, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("test %d %q: %v", i, tc.input, err)
			continue
		}
		if tc.check != nil && !tc.check(cfg) {
			t.Errorf("test %d %q: config %+v", i, tc.input, *cfg)
		}
		if tc.zones != nil && strings.Join(zones, " ") != strings.Join(tc.zones, " ") {
			t.Errorf("test %d %q: zones %v, want %v", i, tc.input, zones, tc.zones)
		}
	}
}

func TestParseZonesFromServerBlock(t *testing.T) {
	c := caddy.NewTestController("dns", "llq")
	c.ServerBlockKeys = []string{"example.org:1053", "Example.NET."}
	zones, _, _, err := parse(c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(zones, " ") != "example.org. example.net." {
		t.Fatalf("zones %v", zones)
	}
}

func TestDefaults(t *testing.T) {
	c := defaultConfig()
	if c.listen != ":5352" || c.minLease != 15*time.Minute || c.maxLease != 2*time.Hour ||
		c.retransmit != 2*time.Second || c.attempts < 1 || c.udpSize < 512 || c.setupBurst < 1 {
		t.Fatalf("defaults %+v", *c)
	}
	for _, tc := range []struct{ asked, granted uint32 }{{0, 900}, {899, 900}, {900, 900}, {3600, 3600}, {7200, 7200}, {7201, 7200}, {1 << 31, 7200}} {
		if got := c.clampLease(tc.asked); got != tc.granted {
			t.Errorf("clampLease(%d) = %d, want %d", tc.asked, got, tc.granted)
		}
	}
}

func TestSetup(t *testing.T) {
	c := caddy.NewTestController("dns", "llq {\n listen 127.0.0.1:0\n}")
	if err := setup(c); err != nil {
		t.Fatalf("setup: %v", err)
	}
	if n := len(dnsserver.GetConfig(c).Plugin); n != 1 {
		t.Fatalf("setup added %d plugins, want 1", n)
	}
	c = caddy.NewTestController("dns", "llq {\n lease 1\n}")
	if err := setup(c); err == nil || !strings.Contains(err.Error(), "plugin/llq") {
		t.Fatalf("setup error %v, want a plugin/llq error", err)
	}
}

// TestSetupTLSListen: tls-listen without a host follows the server block's
// bind address, as listen does; with several bind addresses the operator
// is told which line to write, naming the Corefile's line.
func TestSetupTLSListen(t *testing.T) {
	ca := newTestCA(t)
	for _, tc := range []struct {
		what   string
		binds  []string
		option string // the tls-listen line, if any
		want   string // the TLS listener's address
		err    string
	}{
		{what: "default, no bind", want: ":853"},
		{what: "default, one bind", binds: []string{"127.0.0.1"}, want: "127.0.0.1:853"},
		{what: "port only, one bind", binds: []string{"::1"}, option: "tls-listen :8853", want: "[::1]:8853"},
		{what: "host given, bind ignored", binds: []string{"127.0.0.1"}, option: "tls-listen 127.0.0.2:8853", want: "127.0.0.2:8853"},
		{what: "port only, no bind", option: "tls-listen :8853", want: ":8853"},
		{what: "two binds", binds: []string{"127.0.0.1", "::1"}, option: "tls-listen :8853",
			err: `Testfile:1: this server block binds 2 addresses (127.0.0.1 ::1) and the TLS listener takes one: set it with "tls-listen ADDRESS:8853"`},
		{what: "two binds, default", binds: []string{"127.0.0.1", "::1"},
			err: `set it with "tls-listen ADDRESS:853"`},
		{what: "two binds, host given", binds: []string{"127.0.0.1", "::1"}, option: "tls-listen 127.0.0.1:8853", want: "127.0.0.1:8853"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			input := "llq {\n listen 127.0.0.1:0\n tls " + ca.CertFile + " " + ca.KeyFile + "\n " + tc.option + "\n}"
			c := caddy.NewTestController("dns", input)
			dnsserver.GetConfig(c).ListenHosts = tc.binds
			err := setup(c)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := dnsserver.GetConfig(c).Plugin[0](nil).(*LLQ)
			if l.cfg.tlsListen != tc.want {
				t.Fatalf("TLS listener on %q, want %q", l.cfg.tlsListen, tc.want)
			}
		})
	}
}
