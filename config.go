package llq

import "time"

// config is what the Corefile sets. An engine takes the newest config on every
// (re)load; values are read under the engine lock.
type config struct {
	listen         string
	minLease       time.Duration
	maxLease       time.Duration
	maxLLQs        int
	maxPerClient   int
	setupRate      float64 // established LLQs per second per client address
	setupBurst     int
	retransmit     time.Duration // first event retransmission; doubles after each
	attempts       int           // event transmissions before a silent client is dropped
	poll           time.Duration // re-resolution period for backends without a change signal; 0 = never
	debounce       time.Duration // quiet period after a change signal before re-resolving
	srvTarget      string        // SRV target for discovery; "" = llq.ZONE with synthesised addresses
	udpSize        uint16        // EDNS0 size the listener advertises
	fullRetryAfter time.Duration // SERV-FULL retry-after when a count limit is hit
	clientBits     clientBits    // how much of an address is one client for per-client limits
	conns          connLimits    // TCP connections
	handoff        bool          // queries below llq run on warm workers (handoff.go)
	resolveWorkers int           // re-resolutions in flight per backend

	// DNS Push over TLS (push_*.go), off while tlsCert is "".
	tlsCert, tlsKey, tlsCA string
	tlsListen              string
	pushInactivity         time.Duration // inactivity timeout granted to sessions
	pushKeepalive          time.Duration // keepalive interval granted to sessions
	maxSessions            int
	maxSessionsPerClient   int
	maxPushSubs            int // DNS Push subscriptions in all sessions
	maxSubsPerSession      int
	handshakeTimeout       time.Duration
	maxQueued              int           // bytes waiting to be written to one session
	retryDelay             time.Duration // Retry Delay on overload, reconfiguration and shutdown
	statePath              string        // file the LLQ table survives restarts in; "" = none (see state.go)
	stateEvery             time.Duration // how often the table is written there when it changed
}

func defaultConfig() *config {
	return &config{
		listen:         ":5352",
		minLease:       15 * time.Minute,
		maxLease:       2 * time.Hour,
		maxLLQs:        100000,
		maxPerClient:   1000,
		setupRate:      20,
		setupBurst:     100,
		retransmit:     2 * time.Second,
		attempts:       5,
		poll:           30 * time.Second,
		debounce:       5 * time.Millisecond,
		udpSize:        1232,
		fullRetryAfter: 5 * time.Minute,
		clientBits:     defaultClientBits,
		conns:          defaultConnLimits,
		handoff:        true,
		resolveWorkers: 8,

		tlsListen:            ":853",
		pushInactivity:       time.Minute,
		pushKeepalive:        time.Hour,
		maxSessions:          10000,
		maxSessionsPerClient: 100,
		maxPushSubs:          100000,
		maxSubsPerSession:    1000,
		handshakeTimeout:     10 * time.Second,
		maxQueued:            256 << 10,
		// Apple's client reads a Retry Delay's milliseconds as seconds: a
		// second is a short wait for a client that reads it right, and no
		// longer than its own poll interval for one that does not.
		retryDelay: time.Second,
		stateEvery: 5 * time.Second,
	}
}

// clampLease grants a lease within the configured bounds. A request for
// zero (only meaningful in a refresh, where it terminates) gets the minimum.
func (c *config) clampLease(requested uint32) uint32 {
	d := time.Duration(requested) * time.Second
	if d < c.minLease {
		d = c.minLease
	}
	if d > c.maxLease {
		d = c.maxLease
	}
	return uint32(d / time.Second)
}
