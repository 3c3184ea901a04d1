package llq

import (
	"time"

	"github.com/llqdns/llq/dso"
)

// grantKeepalive returns the timers a session gets for a client's Keepalive
// request asking for asked (RFC 8490 sections 6.5 and 7.1.1: the server
// decides, and its response states what applies). The configured
// push-keepalive values are the longest the server grants, since each
// session it keeps open costs it; shorter ones are the client's to choose,
// down to the RFC's 10 s floor for the interval. Infinite asks for the
// longest. clamped says a finite value asked for was not granted.
func grantKeepalive(cfg *config, asked dso.Keepalive) (inactivity, interval time.Duration, clamped bool) {
	inactivity, interval = cfg.pushInactivity, cfg.pushKeepalive
	if d, ok := dso.Duration(asked.Inactivity); !ok || d > inactivity {
		clamped = clamped || ok
	} else {
		inactivity = d
	}
	if d, ok := dso.Duration(asked.Interval); !ok || d > interval {
		clamped = clamped || ok
	} else {
		interval = max(d, dso.MinKeepaliveInterval)
		clamped = clamped || d < dso.MinKeepaliveInterval
	}
	return inactivity, interval, clamped
}
