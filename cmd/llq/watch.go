package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

const watchHelp = `usage: llq watch NAME [TYPE] [@SERVER[:PORT]] [flags]

Subscribes to NAME (TYPE defaults to A) and prints the answers as they
change, one line each, until SIGINT or SIGTERM; then it ends the
subscription. It speaks DNS Push (RFC 8765, over TLS) when the zone
advertises a push server (_dns-push-tls._tcp SRV), else a Long-Lived Query
(RFC 8764); -proto forces either. With @SERVER it talks to SERVER, with LLQ
(port %d unless given) unless -proto push (port %d); otherwise it discovers
the zone's servers through the resolver.

Output, each line stamped with the time in RFC 3339 UTC with milliseconds:
  TIME ANSWER RR    the answers when the LLQ was set up
  TIME ADD RR       a record added later
  TIME REMOVE RR    a record removed later

Flags may come before, between or after the arguments:
`

// timeFormat is RFC 3339 with milliseconds.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

type watchArgs struct {
	q        dns.Question
	server   string // "@" argument without the "@"; empty to discover
	resolver string
	timeout  time.Duration
	proto    client.Proto
	opts     client.Options
	push     client.PushOptions
}

func runWatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	w, err := parseWatch(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return usageError(stderr, "watch", err)
	}
	return w.run(ctx, stdout, stderr)
}

// parseWatch reads watch's arguments; asked for help, it writes it to help
// and returns flag.ErrHelp.
func parseWatch(args []string, help io.Writer) (*watchArgs, error) {
	w := &watchArgs{}
	fs := newFlags("watch")
	fs.DurationVar(&w.opts.Lease, "lease", client.DefaultLease, "lease to request; the server may grant less")
	fs.StringVar(&w.resolver, "resolver", "", "DNS `resolver` for discovery, host[:port] (default: first nameserver in /etc/resolv.conf, port 53)")
	fs.DurationVar(&w.timeout, "timeout", time.Minute, "limit on discovery plus LLQ setup (0: only the RFC retransmission limits)")
	fs.StringVar(&w.opts.LocalAddr, "local", "", "local UDP `address` to bind, e.g. 127.0.0.2:0")
	fs.DurationVar(&w.opts.RetryInterval, "retry", client.DefaultRetryInterval, "wait before the first retransmission; the next waits double")
	udpSize := fs.Uint("udpsize", client.DefaultUDPSize, "EDNS0 UDP payload size to advertise")
	proto := fs.String("proto", "auto", "`protocol`: auto (DNS Push when the zone advertises it, else LLQ), push or llq")
	fs.StringVar(&w.push.CAFile, "ca", "", "PEM `file` of the CA certificates to trust for DNS Push (default: the system's roots)")
	fs.StringVar(&w.push.ServerName, "tls-name", "", "`name` the DNS Push server's certificate must carry (default: the SRV target, or @SERVER)")

	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(help, fs, fmt.Sprintf(watchHelp, wire.DefaultPort, client.DefaultPushPort), exitCodesHelp)
	}
	if err != nil {
		return nil, err
	}
	if *udpSize < 512 || *udpSize > 65535 {
		return nil, fmt.Errorf("-udpsize %d is not between 512 and 65535", *udpSize)
	}
	w.opts.UDPSize = uint16(*udpSize)
	if w.proto, err = client.ParseProto(*proto); err != nil {
		return nil, fmt.Errorf("-proto: %w", err)
	}
	if w.opts.Lease < time.Second {
		return nil, fmt.Errorf("-lease %s is under a second", w.opts.Lease)
	}
	if w.opts.RetryInterval <= 0 {
		return nil, fmt.Errorf("-retry %s is not positive", w.opts.RetryInterval)
	}

	var name, typ string
	for _, a := range pos {
		switch {
		case strings.HasPrefix(a, "@") && w.server == "":
			w.server = a[1:]
		case name == "":
			name = a
		case typ == "":
			typ = a
		default:
			return nil, fmt.Errorf("unexpected argument %q", a)
		}
	}
	if name == "" {
		return nil, errors.New("missing NAME")
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return nil, fmt.Errorf("%q is not a domain name", name)
	}
	qtype := dns.TypeA
	if typ != "" {
		var err error
		if qtype, err = parseType(typ); err != nil {
			return nil, err
		}
	}
	w.q = dns.Question{Name: dns.Fqdn(name), Qtype: qtype, Qclass: dns.ClassINET}
	return w, nil
}

func parseType(s string) (uint16, error) {
	u := strings.ToUpper(s)
	if t, ok := dns.StringToType[u]; ok {
		return t, nil
	}
	if n, ok := strings.CutPrefix(u, "TYPE"); ok {
		if t, err := strconv.ParseUint(n, 10, 16); err == nil {
			return uint16(t), nil
		}
	}
	return 0, fmt.Errorf("unknown record type %q", s)
}

func (w *watchArgs) run(ctx context.Context, stdout, stderr io.Writer) int {
	qs := w.q.Name + " " + dns.TypeToString[w.q.Qtype]
	fail := func(err error, where string) int {
		fmt.Fprintf(stderr, "llq watch: %s\n", explain(err, where))
		return exitCode(err)
	}

	setupCtx := ctx
	if w.timeout > 0 {
		var cancel context.CancelFunc
		setupCtx, cancel = context.WithTimeout(ctx, w.timeout)
		defer cancel()
	}

	if w.usePush(setupCtx, stderr) {
		return w.runPush(ctx, stdout, stderr)
	}

	server, err := w.findServer(setupCtx, stderr)
	if err != nil {
		if ctx.Err() != nil {
			return exitOK
		}
		return fail(err, qs)
	}
	where := qs + " at " + server.String()

	c, sub, err := w.subscribe(setupCtx, server)
	if err != nil {
		if ctx.Err() != nil {
			return exitOK // interrupted during setup
		}
		return fail(err, where)
	}
	fmt.Fprintf(stderr, "llq watch: LLQ %#x for %s at %s, lease %s\n", sub.ID(), qs, server, sub.Lease())
	now := time.Now()
	for _, rr := range sub.Answers() {
		printRR(stdout, now, "ANSWER", rr)
	}

	var dropped uint64
	for {
		select {
		case ev, ok := <-sub.Events():
			if !ok {
				// The server lost the LLQ (a restart, or a replica that never
				// had it) or stopped answering: set it up again, wherever
				// discovery points now, and print what changed meanwhile.
				lost := sub.Err()
				before := sub.Answers()
				c.Close()
				fmt.Fprintf(stderr, "llq watch: %s; setting the LLQ up again\n", explainLost(lost, where))
				if c, sub, server, err = w.resubscribe(ctx, stderr); err != nil {
					if ctx.Err() != nil {
						return exitOK
					}
					return fail(err, qs)
				}
				where = qs + " at " + server.String()
				fmt.Fprintf(stderr, "llq watch: LLQ %#x for %s at %s, lease %s\n", sub.ID(), qs, server, sub.Lease())
				added, removed := client.Diff(before, sub.Answers())
				now := time.Now()
				for _, rr := range removed {
					printRR(stdout, now, "REMOVE", rr)
				}
				for _, rr := range added {
					printRR(stdout, now, "ADD", rr)
				}
				dropped = 0
				continue
			}
			for _, rr := range ev.Removed {
				printRR(stdout, ev.Time, "REMOVE", rr)
			}
			for _, rr := range ev.Added {
				printRR(stdout, ev.Time, "ADD", rr)
			}
			if d := sub.Dropped(); d != dropped {
				fmt.Fprintf(stderr, "llq watch: output fell behind; %d event(s) skipped\n", d-dropped)
				dropped = d
			}
		case <-ctx.Done():
			fmt.Fprintf(stderr, "llq watch: terminating LLQ %#x\n", sub.ID())
			err := sub.Close()
			c.Close()
			if err != nil {
				fmt.Fprintf(stderr, "llq watch: %s (the server drops the LLQ when its lease runs out)\n", explain(err, where))
			}
			return exitOK
		}
	}
}

func (w *watchArgs) subscribe(ctx context.Context, server netip.AddrPort) (*client.Client, *client.Subscription, error) {
	c, err := client.Dial(server, w.opts)
	if err != nil {
		return nil, nil, err
	}
	sub, err := c.Subscribe(ctx, w.q)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, sub, nil
}

// resubscribe keeps trying to set the LLQ up again, backing off from the
// retransmission interval to a minute, until it succeeds or ctx ends. Only
// a refusal that retrying cannot cure (STATIC, FORMAT-ERR, BAD-VERS) stops it.
func (w *watchArgs) resubscribe(ctx context.Context, stderr io.Writer) (*client.Client, *client.Subscription, netip.AddrPort, error) {
	wait := w.opts.RetryInterval
	if wait <= 0 {
		wait = client.DefaultRetryInterval
	}
	for {
		server, err := w.findServer(ctx, stderr)
		if err == nil {
			var c *client.Client
			var sub *client.Subscription
			if c, sub, err = w.subscribe(ctx, server); err == nil {
				return c, sub, server, nil
			}
		}
		var e *client.Error
		if errors.As(err, &e) {
			switch e.Code {
			case wire.Static, wire.FormatErr, wire.BadVers:
				return nil, nil, netip.AddrPort{}, err
			case wire.ServFull:
				wait = max(wait, e.RetryAfter())
			}
		}
		fmt.Fprintf(stderr, "llq watch: %v; trying again in %s\n", err, wait)
		select {
		case <-ctx.Done():
			return nil, nil, netip.AddrPort{}, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}

// findServer returns the @SERVER argument's address, or discovers the LLQ
// server through the resolver.
func (w *watchArgs) findServer(ctx context.Context, stderr io.Writer) (netip.AddrPort, error) {
	if w.server != "" {
		return parseServer(ctx, w.server, wire.DefaultPort)
	}
	resolver, err := w.resolverAddr()
	if err != nil {
		return netip.AddrPort{}, err
	}
	server, zone, err := client.Discover(ctx, resolver, w.q.Name)
	if err != nil {
		return server, err
	}
	fmt.Fprintf(stderr, "llq watch: zone %s, LLQ server %s (via %s)\n", zone, server, resolver)
	return server, nil
}

// resolverAddr is the -resolver flag with a port, or the first nameserver
// of /etc/resolv.conf.
func (w *watchArgs) resolverAddr() (string, error) {
	resolver := w.resolver
	if resolver == "" {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil || len(conf.Servers) == 0 {
			return "", fmt.Errorf("no resolver for discovery (give -resolver or @SERVER): %v", err)
		}
		return net.JoinHostPort(conf.Servers[0], conf.Port), nil
	}
	if _, _, err := net.SplitHostPort(resolver); err != nil {
		resolver = net.JoinHostPort(strings.Trim(resolver, "[]"), "53")
	}
	return resolver, nil
}

// parseServer accepts an address with or without port ("192.0.2.1",
// "[2001:db8::1]:5352", "2001:db8::1") or a host name, which the system
// resolver looks up.
func parseServer(ctx context.Context, s string, defPort uint16) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	host, port := strings.Trim(s, "[]"), defPort
	if h, p, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("bad port in @%s", s)
		}
		host, port = h, uint16(n)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a, port), nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("looking up @%s: %w", s, err)
	}
	// Prefer IPv4: dnsextd, the one LLQ server deployed widely, has no IPv6.
	best := addrs[0]
	for _, a := range addrs {
		if a.Unmap().Is4() {
			best = a
			break
		}
	}
	return netip.AddrPortFrom(best.Unmap(), port), nil
}

func printRR(w io.Writer, t time.Time, verb string, rr dns.RR) {
	fmt.Fprintf(w, "%s %s %s\n", t.UTC().Format(timeFormat), verb, strings.ReplaceAll(rr.String(), "\t", " "))
}
