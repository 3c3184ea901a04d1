package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/miekg/dns"
)

// Proto is the protocol a Watcher speaks.
type Proto int

const (
	// ProtoAuto uses DNS Push when the zone advertises it
	// (_dns-push-tls._tcp) and the server takes the subscription, else LLQ.
	ProtoAuto Proto = iota
	// ProtoPush uses DNS Push only.
	ProtoPush
	// ProtoLLQ uses LLQ only.
	ProtoLLQ
)

func (p Proto) String() string {
	switch p {
	case ProtoPush:
		return "push"
	case ProtoLLQ:
		return "llq"
	}
	return "auto"
}

// ParseProto reads "auto", "push" or "llq".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "auto", "":
		return ProtoAuto, nil
	case "push":
		return ProtoPush, nil
	case "llq":
		return ProtoLLQ, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want auto, push or llq)", s)
}

// Watcher defaults.
const (
	DefaultMinRetry = time.Second
	DefaultMaxRetry = time.Minute
)

// WatchOptions configures Watch.
type WatchOptions struct {
	// Proto chooses the protocol; the zero value is ProtoAuto.
	Proto Proto
	// Resolver is the "host:port" of a recursive resolver, through which
	// the zone's servers are discovered.
	Resolver string
	// Server, when valid, is used instead of discovery: a DNS Push server
	// with ProtoPush, an LLQ server otherwise (ProtoAuto means LLQ here).
	Server netip.AddrPort

	// LLQ and Push configure the underlying clients. Push.ServerName
	// defaults to the SRV target found by discovery.
	LLQ  Options
	Push PushOptions

	// MinRetry and MaxRetry bound the back-off between attempts to
	// (re)subscribe; defaults 1 s and 1 min. A server's Retry Delay or
	// SERV-FULL lease may make a wait longer.
	MinRetry, MaxRetry time.Duration

	// Log, when set, hears what the watcher does (server found, session
	// lost, retrying), one line at a time, for a human to read.
	Log func(line string)
}

// Update is the answer set of a watched question after a change.
type Update struct {
	Time time.Time
	// Answers is the whole current answer set.
	Answers []dns.RR
	// Added and Removed are the difference from the previous Update's
	// Answers.
	Added, Removed []dns.RR
	// Initial is set on the first Update of each subscription, once it is
	// established: the first one ever, and the first after every
	// resubscription.
	Initial bool
	// Proto and Server say where the answers come from.
	Proto  Proto
	Server netip.AddrPort
	// Err, when set, reports a failure (the subscription was lost, or an
	// attempt to subscribe failed); the watcher tries again on its own.
	// Answers is then the last set known.
	Err error
}

// Watcher follows the answers to one question with DNS Push or LLQ,
// setting the subscription up again whenever it is lost, and reports every
// change as an Update carrying the whole answer set.
type Watcher struct {
	q       dns.Question
	opts    WatchOptions
	updates chan Update
	cancel  context.CancelFunc
	done    chan struct{}

	mu   sync.Mutex
	last []dns.RR // the Answers of the last Update
	err  error
}

// Watch starts following q's answers. Every change, and every failure,
// arrives on Updates until Close or until ctx ends.
func Watch(ctx context.Context, q dns.Question, opts WatchOptions) *Watcher {
	q.Name = dns.Fqdn(q.Name)
	if q.Qclass == 0 {
		q.Qclass = dns.ClassINET
	}
	if opts.MinRetry <= 0 {
		opts.MinRetry = DefaultMinRetry
	}
	if opts.MaxRetry < opts.MinRetry {
		opts.MaxRetry = max(DefaultMaxRetry, opts.MinRetry)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{q: q, opts: opts, updates: make(chan Update), cancel: cancel, done: make(chan struct{})}
	go w.run(ctx)
	return w
}

// Updates returns the channel of updates. It is not buffered: the watcher
// waits for the consumer, and each Update's Added and Removed are relative
// to the Update before it, so nothing is lost by a slow reader. It is
// closed after Close.
func (w *Watcher) Updates() <-chan Update { return w.updates }

// Close stops the watcher, ending its subscription (UNSUBSCRIBE, or an LLQ
// terminated with a zero lease).
func (w *Watcher) Close() error {
	w.cancel()
	<-w.done
	return nil
}

// Answers returns the answer set of the last Update.
func (w *Watcher) Answers() []dns.RR {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]dns.RR(nil), w.last...)
}

func (w *Watcher) logf(format string, args ...any) {
	if w.opts.Log != nil {
		w.opts.Log(fmt.Sprintf(format, args...))
	}
}

// emit sends an Update for the answer set now, unless it changes nothing;
// false when the watcher is closing.
func (w *Watcher) emit(ctx context.Context, u Update) bool {
	w.mu.Lock()
	if u.Err == nil {
		u.Added, u.Removed = Diff(w.last, u.Answers)
		if !u.Initial && len(u.Added) == 0 && len(u.Removed) == 0 {
			// An event that changed nothing, or one an earlier Update
			// already covered.
			w.mu.Unlock()
			return true
		}
		w.last = u.Answers
	} else {
		u.Answers = append([]dns.RR(nil), w.last...)
	}
	w.mu.Unlock()
	if u.Time.IsZero() {
		u.Time = time.Now()
	}
	select {
	case w.updates <- u:
		return true
	case <-ctx.Done():
		return false
	}
}

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	defer close(w.updates)
	wait := w.opts.MinRetry
	var pushBlocked time.Time // a Retry Delay keeps the watcher from the push server until then
	for ctx.Err() == nil {
		established, retry, err := w.once(ctx, pushBlocked)
		if ctx.Err() != nil {
			return
		}
		if established {
			wait = w.opts.MinRetry
		}
		var rd *RetryDelayError
		if errors.As(err, &rd) {
			d := rd.Delay
			if rd.Never {
				d = time.Duration(dso.Infinite-1) * time.Millisecond // RFC 8490's cap, about 49.7 days
			}
			pushBlocked = time.Now().Add(d)
			if w.opts.Proto == ProtoAuto && !w.opts.Server.IsValid() {
				retry = 0 // LLQ serves meanwhile, if the zone has it
			} else {
				retry = max(retry, d)
			}
		}
		retry = jittered(max(retry, wait))
		if !w.emit(ctx, Update{Err: err}) {
			return
		}
		w.logf("%v; trying again in %s", err, retry)
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, w.opts.MaxRetry)
	}
}

// jittered adds up to a fifth to d, so that the clients of a server that
// went away, told one Retry Delay or starting one back-off together, do not
// all come back in the same instant. It never shortens d: a Retry Delay is
// the least a client must wait (RFC 8490 section 7.2).
func jittered(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d + rand.N(d/5+1)
}

// once finds a server, subscribes and follows the subscription until it is
// lost. It returns why, whether a subscription was established, and the
// least wait the failure asks for.
func (w *Watcher) once(ctx context.Context, pushBlocked time.Time) (established bool, retry time.Duration, err error) {
	usePush := w.opts.Proto == ProtoPush
	server, target := w.opts.Server, ""
	if !server.IsValid() {
		if w.opts.Proto != ProtoLLQ && time.Now().After(pushBlocked) {
			var zone string
			server, target, zone, err = DiscoverPush(ctx, w.opts.Resolver, w.q.Name)
			switch {
			case err == nil:
				w.logf("zone %s, DNS Push server %s (%s) via %s", zone, server, target, w.opts.Resolver)
				usePush = true
			case w.opts.Proto == ProtoPush || !errors.Is(err, ErrNoService):
				if w.opts.Proto == ProtoPush {
					return false, 0, err
				}
				w.logf("%v; trying LLQ", err)
			}
		}
		if !usePush {
			var zone string
			if server, zone, err = Discover(ctx, w.opts.Resolver, w.q.Name); err != nil {
				return false, 0, err
			}
			w.logf("zone %s, LLQ server %s via %s", zone, server, w.opts.Resolver)
		}
	}
	if usePush {
		established, retry, err = w.followPush(ctx, server, target)
		var pe *PushError
		if w.opts.Proto == ProtoAuto && !established && !w.opts.Server.IsValid() && errors.As(err, &pe) && pe.NoDSO() {
			// Advertised but not working: LLQ while the push server
			// recovers.
			w.logf("%v; trying LLQ", err)
			var zone string
			if server, zone, err = Discover(ctx, w.opts.Resolver, w.q.Name); err != nil {
				return false, 0, err
			}
			w.logf("zone %s, LLQ server %s via %s", zone, server, w.opts.Resolver)
			return w.followLLQ(ctx, server)
		}
		return established, retry, err
	}
	return w.followLLQ(ctx, server)
}

func (w *Watcher) followPush(ctx context.Context, server netip.AddrPort, target string) (established bool, retry time.Duration, err error) {
	opts := w.opts.Push
	if opts.ServerName == "" && target != "" {
		opts.ServerName = strings.TrimSuffix(target, ".")
	}
	c, err := DialPush(ctx, server, opts)
	if err != nil {
		var pe *PushError
		if errors.As(err, &pe) {
			return false, pe.RetryAfter(), err
		}
		return false, 0, err
	}
	defer c.Close()
	s, err := c.Subscribe(ctx, w.q)
	if err != nil {
		var pe *PushError
		if errors.As(err, &pe) {
			return false, pe.RetryAfter(), err
		}
		return false, 0, err
	}
	defer s.Close()
	// Let the initial PUSH arrive before reporting the set (see Ping).
	if err := c.Ping(ctx); err != nil {
		return false, 0, err
	}
	w.logf("subscribed to %s with DNS Push at %s", questionString(w.q), server)
	return true, 0, w.relay(ctx, &s.feed, ProtoPush, server)
}

func (w *Watcher) followLLQ(ctx context.Context, server netip.AddrPort) (established bool, retry time.Duration, err error) {
	c, err := Dial(server, w.opts.LLQ)
	if err != nil {
		return false, 0, err
	}
	defer c.Close()
	s, err := c.Subscribe(ctx, w.q)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return false, e.RetryAfter(), err
		}
		return false, 0, err
	}
	w.logf("LLQ %#x for %s at %s, lease %s", s.ID(), questionString(w.q), server, s.Lease())
	return true, 0, w.relay(ctx, &s.feed, ProtoLLQ, server)
}

// relay reports s's answer set now and after every event until s ends,
// returning why it ended, or nil when the watch was stopped.
func (w *Watcher) relay(ctx context.Context, s *feed, proto Proto, server netip.AddrPort) error {
	if !w.emit(ctx, Update{Answers: s.Answers(), Initial: true, Proto: proto, Server: server}) {
		return nil
	}
	for {
		select {
		case ev, ok := <-s.Events():
			if !ok {
				return s.Err()
			}
			if !w.emit(ctx, Update{Time: ev.Time, Answers: s.Answers(), Proto: proto, Server: server}) {
				return nil
			}
		case <-ctx.Done():
			return nil
		}
	}
}
