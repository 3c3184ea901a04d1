package llq

import (
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/llqdns/llq/dso"
	"github.com/miekg/dns"
)

var log = clog.NewWithPlugin("llq")

func init() {
	plugin.Register("llq", setup)
	caddy.RegisterEventHook("llq", startupComplete)
}

// afterStartups is the key, in a caddy instance's storage, of what llq runs
// once every plugin of the instance has started.
type afterStartups struct{}

// afterStartup runs f once the instance c belongs to has run every plugin's
// startup and serves.
func afterStartup(c *caddy.Controller, f func()) {
	fs, _ := c.Get(afterStartups{}).([]func())
	c.Set(afterStartups{}, append(fs, f))
}

func startupComplete(ev caddy.EventName, info any) error {
	inst, ok := info.(*caddy.Instance)
	if ev != caddy.InstanceStartupEvent || !ok {
		return nil
	}
	attachServers(inst)
	inst.StorageMu.Lock()
	fs, _ := inst.Storage[afterStartups{}].([]func())
	delete(inst.Storage, afterStartups{})
	inst.StorageMu.Unlock()
	for _, f := range fs {
		f()
	}
	return nil
}

func setup(c *caddy.Controller) error {
	zones, cfg, src, err := parse(c)
	if err != nil {
		return plugin.Error("llq", err)
	}
	if cfg.tlsCert != "" {
		if _, err := loadTLS(cfg); err != nil { // fail the load, not the first handshake
			return plugin.Error("llq", err)
		}
	}
	where := src.where
	conf := dnsserver.GetConfig(c)
	if err := checkZones(zones, blockZones(c)); err != nil {
		return plugin.Error("llq", fmt.Errorf("%s: %w", where, err))
	}
	if cfg.listen, err = followBind(cfg.listen, conf.ListenHosts, "listen"); err != nil {
		return plugin.Error("llq", fmt.Errorf("%s: %w", where, err))
	}
	if cfg.tlsCert != "" {
		// The TLS listener follows bind as the LLQ listener does: a block
		// bound to one address does not open port 853 on every other.
		if cfg.tlsListen, err = followBind(cfg.tlsListen, conf.ListenHosts, "tls-listen"); err != nil {
			return plugin.Error("llq", fmt.Errorf("%s: %w", where, err))
		}
	}
	if err := claimListen(listenClaims(c), cfg, where, src.options); err != nil {
		return plugin.Error("llq", fmt.Errorf("%s: %w", where, err))
	}
	l := &LLQ{Zones: zones, cfg: cfg}
	// The instance's llq handlers get their CoreDNS server once it has
	// started (see front.go).
	ls, _ := c.Get(instanceKey{}).([]*LLQ)
	c.Set(instanceKey{}, append(ls, l))
	keys := append([]string(nil), c.ServerBlockKeys...)
	// A relative state file is under the root directive's directory, as a
	// zone file is.
	if cfg.statePath != "" && !filepath.IsAbs(cfg.statePath) && conf.Root != "" {
		cfg.statePath = filepath.Join(conf.Root, cfg.statePath)
	}

	c.OnStartup(func() error {
		if err := checkBackend(conf, l, where); err != nil {
			return plugin.Error("llq", err)
		}
		l.addr = serverAddr(conf)
		l.block = blockID(keys, conf.ViewName)
		l.perClient = clientDependent(conf)
		if len(l.perClient) > 0 {
			log.Infof("answers in %v depend on the client (%v): one topic per client address", keys, l.perClient)
		}
		e, err := acquire(cfg)
		if err != nil {
			return plugin.Error("llq", err)
		}
		l.mu.Lock()
		l.below = below(conf, l)
		l.mu.Unlock()
		l.setEngine(e)
		started := make(chan struct{})
		afterStartup(c, sync.OnceFunc(func() { close(started) }))
		e.register(&backend{owner: l, zones: zones, handler: front{l}, viaServer: true, started: started})
		e.watch.add(probes(conf, l, e)...)
		log.Infof("LLQ listener on %s for %v", e.Addr(), zones)
		if p := e.pushTransport(); p != nil {
			log.Infof("DNS Push (TLS) listener on %s", p.Addr())
		}
		return nil
	})
	c.OnShutdown(func() error {
		if e := l.engine(); e != nil {
			e.watch.remove(l)
			e.unregister(l)
			release(e)
			l.setEngine(nil)
		}
		return nil
	})

	conf.AddPlugin(func(next plugin.Handler) plugin.Handler {
		l.Next = next
		return l
	})
	return nil
}

// below returns the handler that re-resolves subscribed questions: the first
// plugin after llq that is not cache, so that subscribers never see stale
// cached answers.
func below(conf *dnsserver.Config, l *LLQ) plugin.Handler {
	hs := conf.Handlers()
	for i, h := range hs {
		if h != plugin.Handler(l) {
			continue
		}
		for _, next := range hs[i+1:] {
			if next.Name() != "cache" {
				return next
			}
		}
	}
	return l.Next
}

// source is where an llq directive is and what it says, for messages.
type source struct {
	where   string   // FILE:LINE
	options []string // its option lines other than listen, as written
}

// parse reads the llq directive.
func parse(c *caddy.Controller) ([]string, *config, source, error) {
	cfg := defaultConfig()
	var zones []string
	var src source
	i := 0
	for c.Next() {
		if i > 0 {
			return nil, nil, src, plugin.ErrOnce
		}
		i++
		src.where = fmt.Sprintf("%s:%d", c.File(), c.Line())
		zones = plugin.OriginsFromArgsOrServerBlock(c.RemainingArgs(), c.ServerBlockKeys)
		for c.NextBlock() {
			prop := c.Val()
			args := c.RemainingArgs()
			var err error
			switch prop {
			case "listen":
				if len(args) != 1 {
					return nil, nil, src, c.ArgErr()
				}
				cfg.listen, err = args[0], checkListen(args[0])
			case "lease":
				if len(args) != 2 {
					return nil, nil, src, c.ArgErr()
				}
				if cfg.minLease, err = duration(args[0]); err == nil {
					cfg.maxLease, err = duration(args[1])
				}
				if err == nil && (cfg.minLease < time.Second || cfg.maxLease < cfg.minLease) {
					err = fmt.Errorf("lease wants 1s <= MIN <= MAX, got %s %s", args[0], args[1])
				}
			case "max-llqs":
				cfg.maxLLQs, err = count(args)
			case "max-llqs-per-client":
				cfg.maxPerClient, err = count(args)
			case "setup-rate":
				if len(args) < 1 || len(args) > 2 {
					return nil, nil, src, c.ArgErr()
				}
				if cfg.setupRate, err = strconv.ParseFloat(args[0], 64); err != nil {
					err = fmt.Errorf("want a number of setups per second, such as 20 or 0.5, got %q", args[0])
				}
				if err == nil && cfg.setupRate < 0 {
					err = fmt.Errorf("negative setup rate %s", args[0])
				}
				// NaN and Inf parse as floats but break the token bucket:
				// a NaN rate refuses every setup.
				if err == nil && (math.IsNaN(cfg.setupRate) || math.IsInf(cfg.setupRate, 0)) {
					err = fmt.Errorf("setup rate is not a finite number: %s", args[0])
				}
				cfg.setupBurst = max(1, int(cfg.setupRate))
				if err == nil && len(args) == 2 {
					cfg.setupBurst, err = count(args[1:])
					// A bucket that holds no token refuses every setup.
					if err == nil && cfg.setupBurst < 1 {
						err = fmt.Errorf("burst must be at least 1")
					}
				}
			case "max-connections":
				cfg.conns.max, err = count(args)
			case "max-connections-per-client":
				cfg.conns.perClient, err = count(args)
			case "idle-timeout":
				if len(args) != 1 {
					return nil, nil, src, c.ArgErr()
				}
				cfg.conns.idle, err = duration(args[0])
				if err == nil && cfg.conns.idle <= 0 {
					err = fmt.Errorf("must be more than 0")
				}
			case "max-read-buffers":
				cfg.conns.buffers, err = count(args)
				// Less than one whole message would close every connection
				// that sends a large one.
				if err == nil && cfg.conns.buffers != 0 && cfg.conns.buffers < dns.MaxMsgSize {
					err = fmt.Errorf("must be 0 (no limit) or at least %d bytes, one whole message", dns.MaxMsgSize)
				}
			case "client-prefix":
				if len(args) < 1 || len(args) > 2 {
					return nil, nil, src, c.ArgErr()
				}
				if cfg.clientBits.v6, err = prefixLen(args[0], 128); err == nil && len(args) == 2 {
					cfg.clientBits.v4, err = prefixLen(args[1], 32)
				}
			case "resolve-parallel":
				cfg.resolveWorkers, err = count(args)
				if err == nil && cfg.resolveWorkers < 1 {
					err = fmt.Errorf("must be at least 1")
				}
			case "handoff":
				if len(args) != 1 || args[0] != "on" && args[0] != "off" {
					err = fmt.Errorf("want on or off")
				}
				cfg.handoff = len(args) == 1 && args[0] == "on"
			case "retransmit":
				if len(args) != 2 {
					return nil, nil, src, c.ArgErr()
				}
				if cfg.retransmit, err = duration(args[0]); err == nil {
					cfg.attempts, err = count(args[1:])
				}
				if err == nil && (cfg.retransmit <= 0 || cfg.attempts < 1) {
					err = fmt.Errorf("retransmit wants INTERVAL > 0 and ATTEMPTS >= 1")
				}
			case "poll":
				if len(args) != 1 {
					return nil, nil, src, c.ArgErr()
				}
				cfg.poll, err = duration(args[0])
			case "debounce":
				if len(args) != 1 {
					return nil, nil, src, c.ArgErr()
				}
				cfg.debounce, err = duration(args[0])
			case "srv-target":
				if len(args) != 1 {
					return nil, nil, src, c.ArgErr()
				}
				if _, ok := dns.IsDomainName(args[0]); !ok {
					err = fmt.Errorf("not a domain name: %q", args[0])
				}
				cfg.srvTarget = dns.Fqdn(args[0])
			case "tls":
				if len(args) < 2 || len(args) > 3 {
					return nil, nil, src, c.ArgErr()
				}
				cfg.tlsCert, cfg.tlsKey = args[0], args[1]
				if len(args) == 3 {
					cfg.tlsCA = args[2]
				}
			case "tls-listen":
				if len(args) != 1 {
					return nil, nil, src, c.ArgErr()
				}
				cfg.tlsListen, err = args[0], checkListen(args[0])
			case "push-keepalive":
				if len(args) != 2 {
					return nil, nil, src, c.ArgErr()
				}
				if cfg.pushInactivity, err = duration(args[0]); err == nil {
					cfg.pushKeepalive, err = duration(args[1])
				}
				// RFC 8490 section 7.1: a client aborts on an interval below 10 s.
				if err == nil && cfg.pushKeepalive < dso.MinKeepaliveInterval {
					err = fmt.Errorf("keepalive interval below %s", dso.MinKeepaliveInterval)
				}
			case "max-sessions":
				cfg.maxSessions, err = count(args)
			case "max-sessions-per-client":
				cfg.maxSessionsPerClient, err = count(args)
			case "max-subscriptions":
				cfg.maxPushSubs, err = count(args)
			case "max-subscriptions-per-session":
				cfg.maxSubsPerSession, err = count(args)
			case "max-queued":
				cfg.maxQueued, err = count(args)
			case "tls-handshake-timeout":
				if len(args) != 1 {
					return nil, nil, src, c.ArgErr()
				}
				cfg.handshakeTimeout, err = duration(args[0])
				if err == nil && cfg.handshakeTimeout <= 0 {
					err = fmt.Errorf("want a positive duration")
				}
			case "retry-delay":
				if len(args) != 1 {
					return nil, nil, src, c.ArgErr()
				}
				cfg.retryDelay, err = duration(args[0])
			case "state":
				if len(args) < 1 || len(args) > 2 {
					return nil, nil, src, c.ArgErr()
				}
				cfg.statePath = args[0]
				if len(args) == 2 {
					cfg.stateEvery, err = duration(args[1])
					if err == nil && cfg.stateEvery <= 0 {
						err = fmt.Errorf("INTERVAL must be positive")
					}
				}
			default:
				return nil, nil, src, c.Errf("unknown property %q", prop)
			}
			if err != nil {
				return nil, nil, src, c.Errf("%s: %v", prop, err)
			}
			if prop != "listen" {
				src.options = append(src.options, strings.Join(append([]string{prop}, args...), " "))
			}
		}
	}
	return zones, cfg, src, nil
}

// duration reads a Go duration, or a bare number of seconds as in RFC 8764.
func duration(s string) (time.Duration, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("want a duration such as 500ms, 30s or 2h, or a number of seconds, got %q", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration %s", s)
	}
	return d, nil
}

// prefixLen reads a prefix length of at most max bits.
func prefixLen(s string, max int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > max {
		return 0, fmt.Errorf("%q is not a prefix length from 0 to %d", s, max)
	}
	return n, nil
}

// count reads the single non-negative integer argument of a limit; 0 means
// no limit.
func count(args []string) (int, error) {
	if len(args) != 1 {
		return 0, fmt.Errorf("want one number, got %d arguments", len(args))
	}
	n, err := strconv.Atoi(args[0])
	if err != nil {
		return 0, fmt.Errorf("want a whole number, 0 for no limit, got %q", args[0])
	}
	if n < 0 {
		return 0, fmt.Errorf("negative number %d", n)
	}
	return n, nil
}
