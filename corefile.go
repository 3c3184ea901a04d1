package llq

import (
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
)

// Checks of a Corefile that parses but would not work as written. Each
// refuses to start with an error naming the file and line of the llq
// directive (where), in the Corefile's own terms.

// checkListen reads a listen address: HOST:PORT or :PORT, HOST an IP
// address.
func checkListen(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want HOST:PORT or :PORT, such as 127.0.0.1:5352 or [::1]:5352, got %q", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || port != strconv.FormatUint(n, 10) {
		return fmt.Errorf("port %q of %q is not a number from 0 to 65535", port, s)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q is not an IP address: llq listens on one address; leave the host out to follow bind", host)
		}
	}
	return nil
}

// followBind puts the server block's bind address into a listen address
// that gives no host, so that the listener set by the option named option
// (listen or tls-listen) binds where the block's DNS listener does. With
// more than one bind address there is no one place to follow.
func followBind(listen string, hosts []string, option string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || host != "" {
		return listen, err
	}
	var bound []string
	for _, h := range hosts {
		if h != "" {
			bound = append(bound, h)
		}
	}
	switch len(bound) {
	case 0:
		return listen, nil
	case 1:
		return net.JoinHostPort(bound[0], port), nil
	}
	what := "LLQ listener"
	if option == "tls-listen" {
		what = "TLS listener"
	}
	return "", fmt.Errorf("this server block binds %d addresses (%s) and the %s takes one: set it with \"%s ADDRESS%s\" in the llq block",
		len(bound), strings.Join(bound, " "), what, option, listen)
}

// checkZones refuses llq zones the server block does not serve: CoreDNS
// sends no query for them to this block, so llq could only say that their
// answers never change.
func checkZones(zones, block []string) error {
	for _, z := range zones {
		if !slices.ContainsFunc(block, func(b string) bool { return subDomain(b, z) }) {
			return fmt.Errorf("zone %s is not in this server block's zones (%s): CoreDNS never asks this block about it",
				z, strings.Join(block, " "))
		}
	}
	return nil
}

// A listenClaim is the llq block of one server block that uses a listen
// address, in the Corefile being loaded.
type listenClaim struct {
	cfg     *config
	where   string
	options []string // the llq block's option lines other than listen, sorted
}

type listenClaimsKey struct{}

// listenClaims are the claims of the Corefile c belongs to: caddy keeps
// them with the instance that one load of the Corefile makes.
func listenClaims(c *caddy.Controller) map[string]listenClaim {
	claims, _ := c.Get(listenClaimsKey{}).(map[string]listenClaim)
	if claims == nil {
		claims = make(map[string]listenClaim)
		c.Set(listenClaimsKey{}, claims)
	}
	return claims
}

// claimListen records that the block at where uses cfg.listen with cfg, and
// refuses it when another block of the same Corefile already uses that
// address with other options: one listener has one set of options, and
// those of the block started last would silently apply to both.
func claimListen(claims map[string]listenClaim, cfg *config, where string, options []string) error {
	if strings.HasSuffix(cfg.listen, ":0") { // ephemeral: never shared
		return nil
	}
	mine := listenClaim{cfg: cfg, where: where, options: slices.Sorted(slices.Values(options))}
	other, ok := claims[cfg.listen]
	if !ok {
		claims[cfg.listen] = mine
		return nil
	}
	if reflect.DeepEqual(other.cfg, cfg) {
		return nil
	}
	describe := func(opts []string) string {
		if len(opts) == 0 {
			return "no options"
		}
		return strings.Join(opts, "; ")
	}
	return fmt.Errorf("the LLQ listener %s is also the listener of the server block at %s, with other options (there: %s; here: %s): one listener has one set of options: make them the same, or give each block its own listen address",
		cfg.listen, other.where, describe(other.options), describe(mine.options))
}

// checkBackend refuses an llq that nothing after it answers for: every
// LLQ would get UNKNOWN-ERR.
func checkBackend(conf *dnsserver.Config, l *LLQ, where string) error {
	if h := below(conf, l); h != nil && h.Name() != "cache" {
		return nil
	}
	return fmt.Errorf("%s: no plugin after llq in this server block answers its questions (cache does not count): add the backend, such as file, forward or kubernetes, to the block", where)
}

// blockZones are the zones of the server block c is in.
func blockZones(c *caddy.Controller) []string {
	return plugin.OriginsFromArgsOrServerBlock(nil, c.ServerBlockKeys)
}
