package llq

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"sort"
	"strings"
	"unsafe"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/rewrite"
	"github.com/miekg/dns"
)

// A subscriber gets what an ordinary query from it would get: the server
// block CoreDNS would pick for it (zone, view), that block's policy (acl),
// rewriting, metadata, and CNAMEs chased the way the block chases them. So
// llq asks its questions through the CoreDNS server itself, as the upstream
// package does when file follows a CNAME: the class check, the choice of
// block by zone, metadata and view, then every plugin of the block in
// order. When such a query reaches llq, the resolving marker in its context
// sends it on past cache and records which llq, hence which block, it came
// through. A question that never reaches llq (acl refused or dropped it, a
// block without llq answers it) is not admitted.
//
// CoreDNS does not hand plugins their server. llq finds it once caddy
// reports the instance started: among the instance's servers, the one
// listening where the block does.

// resolving marks the context of a question llq asks on its own behalf.
type resolving struct {
	reached *LLQ // the first llq the question passed: its server block answered
}

type resolvingKey struct{}

func resolvingFrom(ctx context.Context) *resolving {
	r, _ := ctx.Value(resolvingKey{}).(*resolving)
	return r
}

// front is the backend handler of a block: the CoreDNS server it belongs to.
type front struct{ l *LLQ }

func (f front) Name() string { return "llq" }

var errNoServer = errors.New("the CoreDNS server has not started yet")

// ServeDNS runs r through the CoreDNS server, as the upstream package does.
func (f front) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	srv := f.l.server()
	if srv == nil {
		return dns.RcodeServerFailure, errNoServer
	}
	ctx = context.WithValue(ctx, dnsserver.Key{}, srv)
	ctx = context.WithValue(ctx, dnsserver.LoopKey{}, 0)
	srv.ServeDNS(ctx, w, r)
	return dns.RcodeSuccess, nil
}

// instanceKey keys, in a caddy instance's Storage, the llq handlers set up
// in it.
type instanceKey struct{}

// attachServers hands every llq of a caddy instance that has started (at
// startup or after a reload) the CoreDNS server of its block. It runs from
// startupComplete, before the instance's backends are let loose.
func attachServers(inst *caddy.Instance) {
	inst.StorageMu.RLock()
	ls, _ := inst.Storage[instanceKey{}].([]*LLQ)
	inst.StorageMu.RUnlock()
	if len(ls) == 0 {
		return
	}
	servers := dnsServers(inst)
	for _, l := range ls {
		if srv := servers[l.addr]; srv != nil {
			l.setServer(srv)
		} else {
			log.Errorf("no CoreDNS server listens on %s: LLQs for %v are refused", l.addr, l.Zones)
		}
	}
}

// dnsServers returns the instance's CoreDNS servers by address. caddy keeps
// them in an unexported field: it is read by reflection, and a CoreDNS
// whose caddy differs fails the tests, not silently.
func dnsServers(inst *caddy.Instance) map[string]*dnsserver.Server {
	out := make(map[string]*dnsserver.Server)
	for _, sl := range inst.Servers() {
		f := reflect.ValueOf(&sl).Elem().FieldByName("server")
		if !f.IsValid() || f.Kind() != reflect.Interface {
			continue
		}
		v := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface()
		var srv *dnsserver.Server
		switch s := v.(type) {
		case *dnsserver.Server:
			srv = s
		case *dnsserver.ServerTLS:
			srv = s.Server
		case *dnsserver.ServerHTTPS:
			srv = s.Server
		case *dnsserver.ServerHTTPS3:
			srv = s.Server
		case *dnsserver.ServerQUIC:
			srv = s.Server
		case *dnsserver.ServergRPC:
			srv = s.Server
		}
		if srv != nil {
			if _, dup := out[srv.Addr]; !dup { // several sockets serve one address alike
				out[srv.Addr] = srv
			}
		}
	}
	return out
}

// serverAddr is the address of the CoreDNS server a block's first key
// belongs to, as CoreDNS groups blocks into servers.
func serverAddr(conf *dnsserver.Config) string {
	host := ""
	if len(conf.ListenHosts) > 0 {
		host = conf.ListenHosts[0]
	}
	hp := net.JoinHostPort(host, conf.Port)
	if a, err := net.ResolveTCPAddr("tcp", hp); err == nil {
		hp = a.String()
	}
	return conf.Transport + "://" + hp
}

// blockID names a server block in a way that survives a reload: its keys
// and its view.
func blockID(keys []string, view string) string {
	return strings.Join(keys, " ") + "|" + view
}

// clientPlugins are the plugins whose answers may depend on who asks, once
// the block is chosen: with one of them in the block, a topic is kept per
// client address (acl only admits or refuses, which every setup checks).
var clientPlugins = map[string]bool{
	"geoip":    true, // metadata by client address, read by template, view...
	"metadata": true,
	"autopath": true, // the client's search path
	"dns64":    true, // translates for IPv6 (or, optionally, IPv4) clients
	"template": true, // templates may use .Remote and metadata
	"whoami":   true,
}

// clientDependent returns the plugins of a block that make its answers
// depend on the client address, sorted.
func clientDependent(conf *dnsserver.Config) []string {
	var out []string
	for _, h := range conf.Handlers() {
		name := h.Name()
		if clientPlugins[name] {
			out = append(out, name)
			continue
		}
		// rewrite's EDNS0 rules can pass the client's address upstream
		// ({client_ip}, client subnet).
		if rw, ok := h.(rewrite.Rewrite); ok {
			for _, r := range rw.Rules {
				if strings.Contains(strings.ToLower(fmt.Sprintf("%T", r)), "edns0") {
					out = append(out, name)
					break
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// skipCache hands a question llq asks on its own behalf past cache.
func (l *LLQ) skipCache(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, rs *resolving) (int, error) {
	if rs.reached == nil {
		rs.reached = l
	}
	below := l.belowHandler()
	if below == nil {
		return dns.RcodeServerFailure, nil
	}
	return plugin.NextOrFailure(l.Name(), below, ctx, w, r)
}
