// Package grpcresolver is a gRPC name resolver that learns answer changes
// from the DNS server as they happen, instead of re-resolving now and then.
//
// Importing the package registers a resolver.Builder for the scheme "llq":
//
//	import _ "github.com/llqdns/llq/grpcresolver"
//
//	conn, err := grpc.NewClient("llq:///my-svc.my-ns.svc.cluster.local:8080",
//		grpc.WithTransportCredentials(insecure.NewCredentials()),
//		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
//
// # Targets
//
// A target is llq://[DNS-SERVER]/NAME[:PORT]:
//
//   - NAME is a fully qualified domain name; no search list applies, so in a
//     Kubernetes pod give the whole name (my-svc.my-ns.svc.cluster.local).
//   - PORT defaults to 443, as for gRPC's own dns scheme.
//   - When NAME begins with two underscore labels (_grpc._tcp.my-svc...), it
//     names an SRV service: the resolver watches its SRV records and the A
//     and AAAA records of every SRV target, and each address gets its SRV
//     record's port. Such a target takes no PORT. The targets must be in a
//     zone the same push server serves (they are in Kubernetes); if the
//     server refuses one, the resolver polls instead.
//   - DNS-SERVER (host:port, port 53 by default) is the DNS server used for
//     discovery and polling; empty means the first nameserver in
//     /etc/resolv.conf, which in a pod is the cluster DNS.
//
// Otherwise the resolver watches NAME's A and AAAA records. Every address
// in the answers becomes one endpoint.
//
// # Push, and polling when there is none
//
// The resolver discovers the zone's push server through DNS-SERVER, the way
// llq's client does: the zone by SOA queries, then SRV
// _dns-push-tls._tcp.ZONE for DNS Push (RFC 8765, over TLS) and, when the
// zone advertises none or it does not take a session, SRV _dns-llq._udp.ZONE
// for LLQ (RFC 8764). Options.Proto can insist on one. It subscribes to
// every question it needs there, on one session or one LLQ socket, and
// hands gRPC a new resolver state as soon as a change arrives.
//
// When the zone advertises no push server, or the subscriptions are lost
// (a DNS Push session closes; an LLQ server stops answering, forgets an LLQ
// or fails a refresh), the resolver queries DNS-SERVER every
// Options.PollInterval (30 s by default) and tries push again: at once
// after a loss, then after Options.PushRetryMin (1 s), doubling on every
// failure up to Options.PushRetryMax (5 min), each wait jittered by up to
// a fifth. Once a push setup succeeds it stops polling. A poll comes
// first, at the start and after every loss, so that gRPC gets addresses at
// once even when the push server is slow to answer. A failed poll, or one
// whose answers gRPC cannot use (no address), is repeated sooner: after
// PushRetryMin, doubling up to PollInterval.
//
// gRPC calls ResolveNow when a connection fails. While polling, ResolveNow
// queries at once; push is tried on its own schedule. While pushing, it
// asks the server whether it still holds the subscriptions (a DSO
// Keepalive, or an LLQ refresh of each); a failure drops to polling as
// above. ResolveNow calls closer together than MinResolveNowInterval are
// merged into one.
//
// A target that does not parse fails Build. A failed poll reaches gRPC
// through ClientConn.ReportError, which keeps the last good addresses in
// use; nothing panics. An empty answer set is a state with no endpoints,
// which fails RPCs until an address appears: the name exists without
// servers, or not at all.
//
// # Not provided
//
// Service config from TXT records (gRPC's _grpc_config.NAME) is out of
// scope: the resolver never sets ServiceConfig, so a channel uses the one
// given with grpc.WithDefaultServiceConfig. Nor does it return grpclb
// balancer addresses.
//
// The package depends on grpc-go. CoreDNS links grpc-go anyway (its grpc
// plugin and server type, etcd's client), but llq's plugin package imports
// no grpc package and does not depend on this one, nor does cmd/coredns.
package grpcresolver
