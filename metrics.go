package llq

import (
	"github.com/coredns/coredns/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

func counter(name, help string) prometheus.Counter {
	return promauto.NewCounter(prometheus.CounterOpts{Namespace: plugin.Namespace, Subsystem: "llq", Name: name, Help: help})
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return promauto.NewCounterVec(prometheus.CounterOpts{Namespace: plugin.Namespace, Subsystem: "llq", Name: name, Help: help}, labels)
}

var (
	liveLLQs = promauto.NewGauge(prometheus.GaugeOpts{Namespace: plugin.Namespace, Subsystem: "llq",
		Name: "subscriptions", Help: "Live LLQs."})
	topicsGauge = promauto.NewGauge(prometheus.GaugeOpts{Namespace: plugin.Namespace, Subsystem: "llq",
		Name: "topics", Help: "Distinct questions with at least one live LLQ."})
	limitGauge = promauto.NewGaugeVec(prometheus.GaugeOpts{Namespace: plugin.Namespace, Subsystem: "llq",
		Name: "limit", Help: "Configured limits."}, []string{"limit"})

	sessionsGauge = promauto.NewGauge(prometheus.GaugeOpts{Namespace: plugin.Namespace, Subsystem: "llq",
		Name: "push_sessions", Help: "Open DNS Push (DSO) sessions."})
	pushSubsGauge = promauto.NewGauge(prometheus.GaugeOpts{Namespace: plugin.Namespace, Subsystem: "llq",
		Name: "push_subscriptions", Help: "Live DNS Push subscriptions."})
	sessionsEnded = counterVec("push_sessions_ended_total", "DNS Push sessions ended, by reason.", "reason")
	subscribes    = counterVec("push_subscribes_total", "DNS Push SUBSCRIBE requests, by result.", "result")
	reconfirms    = counter("push_reconfirms_total", "DNS Push RECONFIRM messages.")
	retryDelays   = counterVec("push_retry_delays_total", "Retry Delays sent to end DNS Push sessions, by reason.", "reason")
	pushesSent    = counter("push_messages_total", "DNS Push PUSH messages sent.")

	setups          = counterVec("setups_total", "LLQ setup messages by result.", "result")
	refreshes       = counter("refreshes_total", "LLQ leases refreshed.")
	terminations    = counter("terminations_total", "LLQs terminated by their client.")
	expirations     = counter("expirations_total", "LLQs whose lease ran out.")
	eventsSent      = counter("events_sent_total", "Event packets sent (first transmissions).")
	retransmissions = counter("event_retransmissions_total", "Event packets sent again for want of an acknowledgement.")
	acks            = counter("event_acks_total", "Event acknowledgements matched to a pending event packet.")
	droppedSilent   = counter("dropped_silent_total", "LLQs dropped because their client acknowledged no event.")
	errorsSent      = counterVec("errors_total", "LLQ error codes sent, by code.", "code")
	limitRejections = counterVec("limit_rejections_total", "LLQ setups refused with SERV-FULL, by limit.", "limit")
	triggerChanges  = counterVec("trigger_changes_total", "Change signals seen, by trigger.", "trigger")
	resolutions     = counterVec("resolutions_total", "Topics re-resolved, by trigger.", "trigger")
	resolveFailures = counter("resolution_failures_total", "Re-resolutions that gave no usable answer (SERVFAIL, timeout, truncation...) and left the answers as they were.")
)

func publishLimits(c *config) {
	limitGauge.WithLabelValues("max-llqs").Set(float64(c.maxLLQs))
	limitGauge.WithLabelValues("max-llqs-per-client").Set(float64(c.maxPerClient))
	limitGauge.WithLabelValues("setup-rate").Set(c.setupRate)
	limitGauge.WithLabelValues("lease-min-seconds").Set(c.minLease.Seconds())
	limitGauge.WithLabelValues("lease-max-seconds").Set(c.maxLease.Seconds())
	limitGauge.WithLabelValues("retransmit-attempts").Set(float64(c.attempts))
	limitGauge.WithLabelValues("resolve-parallel").Set(float64(c.resolveWorkers))
	limitGauge.WithLabelValues("max-connections").Set(float64(c.conns.max))
	limitGauge.WithLabelValues("max-connections-per-client").Set(float64(c.conns.perClient))
	limitGauge.WithLabelValues("idle-timeout-seconds").Set(c.conns.idle.Seconds())
	limitGauge.WithLabelValues("max-read-buffers").Set(float64(c.conns.buffers))
	limitGauge.WithLabelValues("client-prefix-ipv6").Set(float64(c.clientBits.v6))
	limitGauge.WithLabelValues("client-prefix-ipv4").Set(float64(c.clientBits.v4))
	limitGauge.WithLabelValues("max-sessions").Set(float64(c.maxSessions))
	limitGauge.WithLabelValues("max-sessions-per-client").Set(float64(c.maxSessionsPerClient))
	limitGauge.WithLabelValues("max-subscriptions").Set(float64(c.maxPushSubs))
	limitGauge.WithLabelValues("max-subscriptions-per-session").Set(float64(c.maxSubsPerSession))
	limitGauge.WithLabelValues("max-queued-bytes").Set(float64(c.maxQueued))
	limitGauge.WithLabelValues("tls-handshake-timeout-seconds").Set(c.handshakeTimeout.Seconds())
}

// The state file (state.go).
var (
	stateWrites       = counterVec("state_writes_total", "State file writes, by result.", "result")
	stateWriteSeconds = promauto.NewHistogram(prometheus.HistogramOpts{Namespace: plugin.Namespace, Subsystem: "llq",
		Name: "state_write_duration_seconds", Help: "Time to snapshot, encode and durably write the state file.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)})
	stateBytes = promauto.NewGauge(prometheus.GaugeOpts{Namespace: plugin.Namespace, Subsystem: "llq",
		Name: "state_file_bytes", Help: "Size of the state file last written."})
	stateLLQs = promauto.NewGauge(prometheus.GaugeOpts{Namespace: plugin.Namespace, Subsystem: "llq",
		Name: "state_file_llqs", Help: "LLQs in the state file last written."})
	stateRestored = counterVec("state_restored_total", "LLQs read from the state file at start, by what became of them.", "result")
)
