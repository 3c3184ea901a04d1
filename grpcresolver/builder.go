package grpcresolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/resolver"
)

// Scheme is the scheme the package registers on import.
const Scheme = "llq"

// Defaults of Options.
const (
	DefaultPollInterval = 30 * time.Second
	DefaultPushRetryMin = time.Second
	DefaultPushRetryMax = 5 * time.Minute
	DefaultPort         = "443"
)

// MinResolveNowInterval merges ResolveNow calls: gRPC makes one per failing
// connection, and a deployment going away fails many at once.
const MinResolveNowInterval = time.Second

var logger = grpclog.Component("llq")

func init() { resolver.Register(NewBuilder(Options{})) }

// Options configures a Builder. The zero value gives the defaults.
type Options struct {
	// Scheme the builder serves; default "llq". Give another to use a
	// builder with other options through grpc.WithResolvers.
	Scheme string

	// PollInterval is the period of plain queries while no push
	// subscription is live. Default 30 s.
	PollInterval time.Duration

	// PushRetryMin and PushRetryMax bound the back-off between attempts to
	// set push up: the first wait is PushRetryMin, and it doubles up to
	// PushRetryMax. Defaults 1 s and 5 min.
	PushRetryMin, PushRetryMax time.Duration

	// Proto chooses the push protocol: client.ProtoAuto (the zero value)
	// uses DNS Push when the zone advertises it (_dns-push-tls._tcp) and
	// the server takes a session, else LLQ; client.ProtoPush and
	// client.ProtoLLQ use only the one.
	Proto client.Proto

	// Push configures DNS Push sessions: TLS roots (CAFile), keepalive.
	// ServerName defaults to the SRV target found by discovery.
	Push client.PushOptions

	// Client configures the LLQ client (lease, retransmission interval,
	// ...). OnEvent is the resolver's own.
	Client client.Options
}

func (o *Options) setDefaults() {
	if o.Scheme == "" {
		o.Scheme = Scheme
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.PushRetryMin <= 0 {
		o.PushRetryMin = DefaultPushRetryMin
	}
	if o.PushRetryMax < o.PushRetryMin {
		o.PushRetryMax = max(DefaultPushRetryMax, o.PushRetryMin)
	}
	// The resolver reads each subscription's answer set whole after an
	// event, so it needs no backlog of events.
	o.Client.EventBuffer = 1
	o.Client.OnEvent = nil
	o.Push.EventBuffer = 1
}

// Builder builds resolvers for targets of its scheme.
type Builder struct{ opts Options }

// NewBuilder returns a Builder with opts. Register it with
// resolver.Register, or pass it to one channel with grpc.WithResolvers.
func NewBuilder(opts Options) *Builder {
	opts.setDefaults()
	return &Builder{opts: opts}
}

// Scheme returns the scheme the builder serves.
func (b *Builder) Scheme() string { return b.opts.Scheme }

// Build starts resolving target. It fails only for a target it cannot
// parse; everything else is retried in the background.
func (b *Builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	t, err := parseTarget(target.Endpoint())
	if err != nil {
		return nil, err
	}
	server, err := dnsServer(target.URL.Host)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &llqResolver{
		cc:     cc,
		target: t,
		server: server,
		opts:   b.opts,
		ctx:    ctx,
		cancel: cancel,
		now:    make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	go r.run()
	return r, nil
}

// target is what a resolver watches.
type target struct {
	name string // FQDN
	port string // for A/AAAA targets
	srv  bool   // name is an SRV service (_port._proto.name)
}

func parseTarget(endpoint string) (target, error) {
	if endpoint == "" {
		return target{}, errors.New("llq: empty target name")
	}
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		// No port, or not host:port at all; the name check below decides.
		host, port = endpoint, ""
	}
	if _, ok := dns.IsDomainName(host); !ok || strings.Contains(host, ":") {
		return target{}, fmt.Errorf("llq: target %q is not a domain name", endpoint)
	}
	t := target{name: dns.CanonicalName(host)}
	labels := dns.SplitDomainName(t.name)
	t.srv = len(labels) > 2 && strings.HasPrefix(labels[0], "_") && strings.HasPrefix(labels[1], "_")
	switch {
	case t.srv && port != "":
		return target{}, fmt.Errorf("llq: target %q names an SRV service, whose records give the ports", endpoint)
	case t.srv:
	case port == "":
		t.port = DefaultPort
	default:
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return target{}, fmt.Errorf("llq: bad port in target %q", endpoint)
		}
		t.port = port
	}
	return t, nil
}

// dnsServer returns the DNS server a target's authority names, or the
// first nameserver in /etc/resolv.conf.
func dnsServer(authority string) (string, error) {
	if authority == "" {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return "", fmt.Errorf("llq: no DNS server in the target and none from /etc/resolv.conf: %w", err)
		}
		if len(conf.Servers) == 0 {
			return "", errors.New("llq: no DNS server in the target and none in /etc/resolv.conf")
		}
		return net.JoinHostPort(conf.Servers[0], conf.Port), nil
	}
	if _, _, err := net.SplitHostPort(authority); err == nil {
		return authority, nil
	}
	return net.JoinHostPort(strings.Trim(authority, "[]"), "53"), nil
}
