package llq

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin/auto"
	"github.com/coredns/coredns/plugin/file"
	"github.com/coredns/coredns/plugin/secondary"
)

// probes finds the backends of a server block that have a native change
// signal (zone files, hosts, etcd) and returns a change probe for each. The
// etcd probe's watch runs from now until the probe is stopped.
func probes(conf *dnsserver.Config, owner *LLQ, e *Engine) []zoneProbe {
	var out []zoneProbe
	if f, ok := conf.Handler("file").(file.File); ok {
		out = append(out, zoneProbe{owner: owner, trigger: "file", zones: staticZones(f.Zones)})
	}
	if s, ok := conf.Handler("secondary").(*secondary.Secondary); ok {
		// Take the configured zones now: catalog zones add members later
		// under a lock llq cannot reach; the poll covers those.
		zs := file.Zones{Z: make(map[string]*file.Zone), Names: s.Names}
		for _, n := range s.Names {
			zs.Z[n] = s.Z[n]
		}
		out = append(out, zoneProbe{owner: owner, trigger: "secondary", zones: staticZones(zs)})
	}
	if a, ok := conf.Handler("auto").(auto.Auto); ok && a.Zones != nil {
		zs := a.Zones
		out = append(out, zoneProbe{owner: owner, trigger: "auto", zones: func(yield func(string, *file.Zone)) {
			zs.RLock()
			defer zs.RUnlock()
			for origin, z := range zs.Z {
				yield(origin, z)
			}
		}})
	}
	out = append(out, hostsProbe(conf, owner)...)
	out = append(out, etcdProbe(conf, owner, e)...)
	out = append(out, kubeProbe(conf, owner)...)
	return out
}

func staticZones(zs file.Zones) func(func(string, *file.Zone)) {
	return func(yield func(string, *file.Zone)) {
		for _, n := range zs.Names {
			if z := zs.Z[n]; z != nil {
				yield(n, z)
			}
		}
	}
}
