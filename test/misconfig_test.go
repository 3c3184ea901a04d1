//go:build linux

package test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coredns/caddy"
)

// startFails starts CoreDNS with corefile, read from a file named Corefile,
// and returns the error it refuses with.
func startFails(t *testing.T, corefile string) string {
	t.Helper()
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
	if err == nil {
		inst.ShutdownCallbacks()
		inst.Stop()
		t.Fatalf("CoreDNS started with\n%s", corefile)
	}
	return err.Error()
}

// TestMisconfigurationsRefused: Corefiles that would start and then fail
// their clients in silence are refused at start-up, naming the Corefile's
// line.
func TestMisconfigurationsRefused(t *testing.T) {
	dir := t.TempDir()
	zone := filepath.Join(dir, "example.org.zone")
	if err := os.WriteFile(zone, []byte(fmt.Sprintf(zoneHead, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, key, _ := certChain(t)
	for _, tc := range []struct {
		what, corefile, err string
	}{
		{
			what: "llq with nothing after it but cache",
			corefile: `example.org:0 {
    llq {
        listen 127.0.0.1:0
    }
    cache
}
`,
			err: "Corefile:2: no plugin after llq in this server block answers its questions",
		},
		{
			what: "two blocks sharing a listener with different options",
			corefile: fmt.Sprintf(`example.org:0 {
    llq {
        listen 127.0.0.1:%[1]d
    }
    file %[2]s
}
example.net:0 {
    llq {
        listen 127.0.0.1:%[1]d
        lease 1 60
    }
    file %[2]s example.net
}
`, freePort(t), zone),
			err: "Corefile:8: the LLQ listener 127.0.0.1:",
		},
		{
			what: "tls-listen naming a host",
			corefile: fmt.Sprintf(`example.org:0 {
    llq {
        listen 127.0.0.1:0
        tls %[1]s %[2]s
        tls-listen push.example.org:853
    }
    file %[3]s
}
`, cert, key, zone),
			err: `Corefile:5 - Error during parsing: tls-listen: "push.example.org" is not an IP address`,
		},
		{
			what: "tls-listen without a host in a block bound to two addresses",
			corefile: fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1 127.0.0.2
    llq {
        listen 127.0.0.1:0
        tls %[1]s %[2]s
        tls-listen :%[4]d
    }
    file %[3]s
}
`, cert, key, zone, freePort(t)),
			err: `Corefile:3: this server block binds 2 addresses (127.0.0.1 127.0.0.2) and the TLS listener takes one: set it with "tls-listen ADDRESS:`,
		},
	} {
		if got := startFails(t, tc.corefile); !strings.Contains(got, tc.err) {
			t.Errorf("%s: error\n\t%s\nwant\n\t%s", tc.what, got, tc.err)
		}
	}
}

// TestListenFollowsBind: with bind 127.0.0.1 and a listen address without a
// host, the LLQ listener binds 127.0.0.1 too, not every interface: another
// loopback address keeps its port free.
func TestListenFollowsBind(t *testing.T) {
	s2 := &server{t: t}
	zone := filepath.Join(t.TempDir(), "zone")
	if err := os.WriteFile(zone, []byte(fmt.Sprintf(zoneHead, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	port2 := freePort(t)
	s2.start(fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1
    llq {
        listen :%d
    }
    file %s
}
`, port2, zone))
	for _, c := range []struct {
		addr string
		free bool
	}{{fmt.Sprintf("127.0.0.2:%d", port2), true}, {fmt.Sprintf("127.0.0.1:%d", port2), false}} {
		conn, err := net.ListenPacket("udp4", c.addr)
		if err == nil {
			conn.Close()
		}
		if (err == nil) != c.free {
			t.Errorf("binding %s: %v; want it free: %v", c.addr, err, c.free)
		}
	}
}

// TestTLSListenFollowsBind: so does the TLS listener, with a tls-listen
// address without a host.
func TestTLSListenFollowsBind(t *testing.T) {
	s := &server{t: t}
	dir := t.TempDir()
	zone := filepath.Join(dir, "zone")
	if err := os.WriteFile(zone, []byte(fmt.Sprintf(zoneHead, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, key, _ := certChain(t)
	port := freePort(t)
	s.start(fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1
    llq {
        listen 127.0.0.1:0
        tls %s %s
        tls-listen :%d
    }
    file %s
}
`, cert, key, port, zone))
	for _, c := range []struct {
		addr string
		free bool
	}{{fmt.Sprintf("127.0.0.2:%d", port), true}, {fmt.Sprintf("127.0.0.1:%d", port), false}} {
		ln, err := net.Listen("tcp4", c.addr)
		if err == nil {
			ln.Close()
		}
		if (err == nil) != c.free {
			t.Errorf("binding %s: %v; want it free: %v", c.addr, err, c.free)
		}
	}
}
