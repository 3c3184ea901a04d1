package llq

import (
	"strings"
	"sync"
)

// A Corefile reload builds new plugin instances, starts them, and only then
// shuts the old ones down. Engines live here, keyed by listen address and
// reference counted by instance, so the new instance takes over the running
// engine, with its socket and every live LLQ, and the last instance to let
// go closes it. An ephemeral port (":0") is never shared: every instance
// asking for one gets its own engine, which is what tests want.
var registry = struct {
	sync.Mutex
	engines map[string]*Engine
}{engines: make(map[string]*Engine)}

func acquire(cfg *config) (*Engine, error) {
	registry.Lock()
	defer registry.Unlock()
	shared := !strings.HasSuffix(cfg.listen, ":0")
	if e, ok := registry.engines[cfg.listen]; ok && shared {
		e.refs++
		e.reconfigure(cfg)
		return e, nil
	}
	e, err := newEngine(cfg)
	if err != nil {
		return nil, err
	}
	e.refs = 1
	if shared {
		registry.engines[cfg.listen] = e
	}
	return e, nil
}

func release(e *Engine) {
	registry.Lock()
	e.refs--
	last := e.refs == 0
	if last && registry.engines[e.key] == e {
		delete(registry.engines, e.key)
	}
	registry.Unlock()
	if last {
		e.close() // its sessions get a Retry Delay NOERROR: the server is going away
		return
	}
	// A reload: sessions subscribed to a zone no instance serves any more
	// are told so (Retry Delay REFUSED).
	if p := e.pushTransport(); p != nil {
		p.unserved()
	}
}
