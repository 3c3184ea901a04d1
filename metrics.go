package llq

import (
	"net"

	"github.com/coredns/coredns/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Every llq metric carries the label listener: the LLQ listener's address
// (see listenerLabel), which is what an engine is and what its limits
// apply to. CoreDNS's own plugins label by server, their CoreDNS port;
// llq's subscriptions, connections and limits belong to its own listener,
// which several server blocks may share, so the listener is what tells
// llq's series apart.
const listenerLabelName = "listener"

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return promauto.NewCounterVec(prometheus.CounterOpts{Namespace: plugin.Namespace, Subsystem: "llq", Name: name, Help: help},
		append([]string{listenerLabelName}, labels...))
}

func gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return promauto.NewGaugeVec(prometheus.GaugeOpts{Namespace: plugin.Namespace, Subsystem: "llq", Name: name, Help: help},
		append([]string{listenerLabelName}, labels...))
}

var (
	liveLLQs    = gaugeVec("subscriptions", "Live LLQs.")
	topicsGauge = gaugeVec("topics", "Distinct questions with at least one live LLQ.")
	limitGauge  = gaugeVec("limit", "Configured limits.", "limit")

	sessionsGauge = gaugeVec("push_sessions", "Open DNS Push (DSO) sessions.")
	pushSubsGauge = gaugeVec("push_subscriptions", "Live DNS Push subscriptions.")
	sessionsEnded = counterVec("push_sessions_ended_total", "DNS Push sessions ended, by reason.", "reason")
	subscribes    = counterVec("push_subscribes_total", "DNS Push SUBSCRIBE requests, by result.", "result")
	reconfirms    = counterVec("push_reconfirms_total", "DNS Push RECONFIRM messages.")
	retryDelays   = counterVec("push_retry_delays_total", "Retry Delays sent to end DNS Push sessions, by reason.", "reason")
	pushesSent    = counterVec("push_messages_total", "DNS Push PUSH messages sent.")
	keepalives    = counterVec("push_keepalives_total",
		"DNS Push Keepalive requests, by whether the client got the timers it asked for or the server's bounds.", "result")
	privateEvents = counterVec("private_events_total", "LLQ event messages sent on TLS sessions (private LLQs).")

	setups          = counterVec("setups_total", "LLQ setup messages by result.", "result")
	refreshes       = counterVec("refreshes_total", "LLQ leases refreshed.")
	terminations    = counterVec("terminations_total", "LLQs terminated by their client.")
	expirations     = counterVec("expirations_total", "LLQs whose lease ran out.")
	eventsSent      = counterVec("events_sent_total", "Event packets sent (first transmissions).")
	retransmissions = counterVec("event_retransmissions_total", "Event packets sent again for want of an acknowledgement.")
	acks            = counterVec("event_acks_total", "Event acknowledgements matched to a pending event packet.")
	droppedSilent   = counterVec("dropped_silent_total", "LLQs dropped because their client acknowledged no event.")
	errorsSent      = counterVec("errors_total", "LLQ error codes sent, by code.", "code")
	limitRejections = counterVec("limit_rejections_total", "LLQ setups refused with SERV-FULL, by limit.", "limit")
	triggerChanges  = counterVec("trigger_changes_total", "Change signals seen, by trigger.", "trigger")
	resolutions     = counterVec("resolutions_total", "Topics re-resolved, by trigger.", "trigger")
	resolveFailures = counterVec("resolution_failures_total", "Re-resolutions that gave no usable answer (SERVFAIL, timeout, truncation...) and left the answers as they were.")
	setupsDropped   = counterVec("setups_dropped_total",
		"Challenge responses dropped because maxSetupsQueued were waiting for a worker already.")
	setupRateShared = counterVec("setup_rate_shared_total",
		"Setups rate-limited in a shared hashed bucket because more clients were being limited at once than have a bucket of their own.")

	// Stream connections (connlimit.go).
	connsOpen    = gaugeVec("connections", "Open TCP connections.")
	readBuffered = gaugeVec("read_buffer_bytes", "Bytes held for TCP messages being received.")
	connsRefused = counterVec("connections_refused_total", "TCP connections closed on arrival, by limit.", "limit")
	connsClosed  = counterVec("connections_closed_total", "TCP connections closed by the server, by reason.", "reason")
	acceptErrors = counterVec("accept_errors_total", "Failed accepts of TCP connections (each followed by a pause).")

	// The state file (state.go).
	stateWrites       = counterVec("state_writes_total", "State file writes, by result.", "result")
	stateWriteSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{Namespace: plugin.Namespace, Subsystem: "llq",
		Name: "state_write_duration_seconds", Help: "Time to snapshot, encode and durably write the state file.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}, []string{listenerLabelName})
	stateBytes        = gaugeVec("state_file_bytes", "Size of the state file last written.")
	stateLLQs         = gaugeVec("state_file_llqs", "LLQs in the state file last written.")
	stateRestored     = counterVec("state_restored_total", "LLQs read from the state file at start, by what became of them.", "result")
	stateReadmissions = counterVec("state_readmissions_total", "Restored LLQs admitted again through their block, dropped as refused, or left waiting for their backend (unresolved), per try.", "result")
)

// listenerMetrics are one listener's series, looked up once: events and
// acks count per packet, and a label lookup hashes its values every time.
type listenerMetrics struct {
	name string // the listener label's value

	liveLLQs, topics               prometheus.Gauge
	limits                         *prometheus.GaugeVec
	sessions, pushSubs             prometheus.Gauge
	sessionsEnded, subscribes      *prometheus.CounterVec
	reconfirms                     prometheus.Counter
	retryDelays                    *prometheus.CounterVec
	pushesSent                     prometheus.Counter
	keepalives                     *prometheus.CounterVec
	privateEvents                  prometheus.Counter
	setups                         *prometheus.CounterVec
	refreshes, terminations        prometheus.Counter
	expirations, eventsSent        prometheus.Counter
	retransmissions, acks          prometheus.Counter
	droppedSilent                  prometheus.Counter
	errorsSent, limitRejections    *prometheus.CounterVec
	triggerChanges, resolutions    *prometheus.CounterVec
	resolveFailures                prometheus.Counter
	setupsDropped, setupRateShared prometheus.Counter
	connsOpen, readBuffered        prometheus.Gauge
	connsRefused, connsClosed      *prometheus.CounterVec
	acceptErrors                   prometheus.Counter
	stateWrites                    *prometheus.CounterVec
	stateWriteSeconds              prometheus.Observer
	stateBytes, stateLLQs          prometheus.Gauge
	stateRestored, stateReadmitted *prometheus.CounterVec
}

func newListenerMetrics(name string) *listenerMetrics {
	l := prometheus.Labels{listenerLabelName: name}
	return &listenerMetrics{
		name:              name,
		liveLLQs:          liveLLQs.With(l),
		topics:            topicsGauge.With(l),
		limits:            limitGauge.MustCurryWith(l),
		sessions:          sessionsGauge.With(l),
		pushSubs:          pushSubsGauge.With(l),
		sessionsEnded:     sessionsEnded.MustCurryWith(l),
		subscribes:        subscribes.MustCurryWith(l),
		reconfirms:        reconfirms.With(l),
		retryDelays:       retryDelays.MustCurryWith(l),
		pushesSent:        pushesSent.With(l),
		keepalives:        keepalives.MustCurryWith(l),
		privateEvents:     privateEvents.With(l),
		setups:            setups.MustCurryWith(l),
		refreshes:         refreshes.With(l),
		terminations:      terminations.With(l),
		expirations:       expirations.With(l),
		eventsSent:        eventsSent.With(l),
		retransmissions:   retransmissions.With(l),
		acks:              acks.With(l),
		droppedSilent:     droppedSilent.With(l),
		errorsSent:        errorsSent.MustCurryWith(l),
		limitRejections:   limitRejections.MustCurryWith(l),
		triggerChanges:    triggerChanges.MustCurryWith(l),
		resolutions:       resolutions.MustCurryWith(l),
		resolveFailures:   resolveFailures.With(l),
		setupsDropped:     setupsDropped.With(l),
		setupRateShared:   setupRateShared.With(l),
		connsOpen:         connsOpen.With(l),
		readBuffered:      readBuffered.With(l),
		connsRefused:      connsRefused.MustCurryWith(l),
		connsClosed:       connsClosed.MustCurryWith(l),
		acceptErrors:      acceptErrors.With(l),
		stateWrites:       stateWrites.MustCurryWith(l),
		stateWriteSeconds: stateWriteSeconds.With(l),
		stateBytes:        stateBytes.With(l),
		stateLLQs:         stateLLQs.With(l),
		stateRestored:     stateRestored.MustCurryWith(l),
		stateReadmitted:   stateReadmissions.MustCurryWith(l),
	}
}

// forget removes the listener's gauges when it closes: they describe what
// it holds now, and it holds nothing. Its counters stay, as counters do.
func (m *listenerMetrics) forget() {
	l := prometheus.Labels{listenerLabelName: m.name}
	for _, g := range []*prometheus.GaugeVec{liveLLQs, topicsGauge, limitGauge, sessionsGauge, pushSubsGauge,
		connsOpen, readBuffered, stateBytes, stateLLQs} {
		g.DeletePartialMatch(l)
	}
}

// listenerLabel is the listener label's value: the listen address as the
// Corefile gives it (after bind, see followBind), so that it reads the
// same across restarts; when it asks for port 0, the port the kernel chose,
// so that two such listeners stay apart.
func listenerLabel(configured string, bound net.Addr) string {
	host, port, err := net.SplitHostPort(configured)
	if err != nil || port != "0" {
		return configured
	}
	_, p, err := net.SplitHostPort(bound.String())
	if err != nil {
		return bound.String()
	}
	return net.JoinHostPort(host, p)
}

func (m *listenerMetrics) publishLimits(c *config) {
	set := func(limit string, v float64) { m.limits.WithLabelValues(limit).Set(v) }
	set("max-llqs", float64(c.maxLLQs))
	set("max-llqs-per-client", float64(c.maxPerClient))
	set("setup-rate", c.setupRate)
	set("lease-min-seconds", c.minLease.Seconds())
	set("lease-max-seconds", c.maxLease.Seconds())
	set("retransmit-attempts", float64(c.attempts))
	set("resolve-parallel", float64(c.resolveWorkers))
	set("max-connections", float64(c.conns.max))
	set("max-connections-per-client", float64(c.conns.perClient))
	set("idle-timeout-seconds", c.conns.idle.Seconds())
	set("max-read-buffers", float64(c.conns.buffers))
	set("client-prefix-ipv6", float64(c.clientBits.v6))
	set("client-prefix-ipv4", float64(c.clientBits.v4))
	set("max-sessions", float64(c.maxSessions))
	set("max-sessions-per-client", float64(c.maxSessionsPerClient))
	set("max-subscriptions", float64(c.maxPushSubs))
	set("max-subscriptions-per-session", float64(c.maxSubsPerSession))
	set("max-queued-bytes", float64(c.maxQueued))
	set("tls-handshake-timeout-seconds", c.handshakeTimeout.Seconds())
	set("push-inactivity-max-seconds", c.pushInactivity.Seconds())
	set("push-keepalive-max-seconds", c.pushKeepalive.Seconds())
}
