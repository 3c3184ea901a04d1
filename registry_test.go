package llq

import (
	"net"
	"testing"
)

func TestRegistryEphemeralNotShared(t *testing.T) {
	cfg := defaultConfig()
	cfg.listen = "127.0.0.1:0"
	a, err := acquire(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := acquire(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a.Addr().String() == b.Addr().String() {
		t.Fatalf("two instances share an ephemeral listener")
	}
	release(a)
	release(b)
}

func TestRegistryShared(t *testing.T) {
	// A port that was free a moment ago.
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.LocalAddr().String()
	probe.Close()

	old := defaultConfig()
	old.listen = addr
	e, err := acquire(old)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	// A reload: the new instance takes the running engine over, with the
	// new settings, before the old one lets go.
	next := defaultConfig()
	next.listen = addr
	next.maxLLQs = 7
	e2, err := acquire(next)
	if err != nil {
		t.Fatal(err)
	}
	if e2 != e || e.refs != 2 || e.config().maxLLQs != 7 {
		t.Fatalf("reload did not share the engine (refs %d, max-llqs %d)", e.refs, e.config().maxLLQs)
	}
	release(e)
	if _, err := net.ListenUDP("udp", e.Addr().(*net.UDPAddr)); err == nil {
		t.Fatalf("the listener let go of its port while still in use")
	}
	release(e2)
	registry.Lock()
	_, still := registry.engines[addr]
	registry.Unlock()
	if still {
		t.Fatalf("released engine still registered")
	}
	// The port is free again.
	c, err := net.ListenUDP("udp", e.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatalf("port still bound after the last release: %v", err)
	}
	c.Close()
}
