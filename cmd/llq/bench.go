package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const benchHelp = `usage: llq bench @SERVER[:PORT] [flags]
       llq bench push @SERVER[:PORT] [flags]   (DNS Push: see llq bench push -h)

Drives many LLQ clients against SERVER: full four-way setups, event acks,
refreshes and terminations, with optional packet loss in both directions.
LLQ i asks for the name -name formats with i % -names, from client
endpoint (address and port) i % -sockets; endpoints are spread over -addrs
loopback source addresses 127.1.x.y so that per-address limits are not what
is measured. With the server on loopback IPv4, endpoints of different
addresses share one OS socket bound to 0.0.0.0:PORT, which picks each
packet's source address with IP_PKTINFO and hands what it receives to the
endpoint it was sent to: -sockets 100000 -addrs 250 takes 400 sockets, not
100,000 file descriptors. -share=false, or any other server, gives every
endpoint a socket of its own.

With -zone the bench owns the zone file the server reads: it writes it at
start and then toggles "NAME A 198.51.100.1" on name 0 every -change-every,
bumping the serial (skipping a tick while the last change has not yet
reached every LLQ on name 0, so that fan-outs do not overlap); with -dns it
polls the ordinary port to learn when the backend shows each change, and
reports event latency from there. The largest fan-out of the hold is timed
from the first to the last LLQ the change reached.

-baseline then runs -rounds rounds, each timing three things back to back
the same way, first to last arrival: one more change to name 0 fanned out
to its LLQs (with -zone); a bare Go sender sending one packet to every
endpoint in a random order, with sendmmsg in batches of 64 as the server
does; and the same again with every packet answered by its endpoint
with an ack-sized datagram to a bare Go receiver, as LLQ events are acked.
It reports each round and the median of the rounds' ratios.

Flags:
`

type benchArgs struct {
	server      netip.AddrPort
	llqs        int
	sockets     int
	addrs       int
	names       int
	name        string
	qtype       uint16
	window      int
	inflight    int
	lease       time.Duration
	hold        time.Duration
	loss        float64
	retry       time.Duration
	zone        string
	changeEvery time.Duration
	dnsAddr     string
	pid         int
	report      time.Duration
	baseline    bool
	roundCount  int
	poll        time.Duration
	cpuProfile  string
	share       bool
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "push" {
		return runBenchPush(ctx, args[1:], stdout, stderr)
	}
	b, err := parseBench(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return usageError(stderr, "bench", err)
	}
	if err := b.run(ctx, stdout); err != nil {
		fmt.Fprintf(stderr, "llq bench: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// parseBench reads bench's arguments; asked for help, it writes it to help
// and returns flag.ErrHelp.
func parseBench(args []string, help io.Writer) (*benchArgs, error) {
	b := &benchArgs{}
	fs := newFlags("bench")
	fs.IntVar(&b.llqs, "llqs", 1000, "LLQs to set up")
	fs.IntVar(&b.sockets, "sockets", 100, "client endpoints (address and port), each seen by the server as a client of its own")
	fs.IntVar(&b.addrs, "addrs", 50, "loopback source addresses (127.1.x.y) to spread the endpoints over")
	fs.BoolVar(&b.share, "share", true, "with the server on loopback IPv4, let one OS socket serve the endpoints of up to -addrs addresses (IP_PKTINFO)")
	fs.IntVar(&b.names, "names", 0, "distinct question names (default: -llqs)")
	fs.StringVar(&b.name, "name", "n%d.example.org.", "question name, formatted with the name index")
	qtype := fs.String("type", "A", "question type")
	fs.IntVar(&b.window, "window", 16, "handshakes in flight per socket")
	fs.IntVar(&b.inflight, "inflight", 4096, "handshakes in flight in all")
	fs.DurationVar(&b.lease, "lease", time.Hour, "lease to request")
	fs.DurationVar(&b.hold, "hold", 0, "keep the LLQs (acking events, refreshing) this long after set-up")
	fs.Float64Var(&b.loss, "loss", 0, "fraction of packets lost in each direction")
	fs.DurationVar(&b.retry, "retry", 2*time.Second, "handshake retransmission interval")
	fs.StringVar(&b.zone, "zone", "", "zone file to own and change (see above)")
	fs.DurationVar(&b.changeEvery, "change-every", time.Second, "interval between zone changes with -zone")
	fs.StringVar(&b.dnsAddr, "dns", "", "ordinary DNS address of the server, to time when the backend shows a change")
	fs.IntVar(&b.pid, "pid", 0, "server process ID, to report its RSS and CPU time")
	fs.DurationVar(&b.report, "report", time.Second, "progress report interval")
	fs.StringVar(&b.cpuProfile, "cpuprofile", "", "write the bench's own CPU profile to this file")
	fs.DurationVar(&b.poll, "poll", 0, "instead of LLQs, poll the names with ordinary queries to -dns at this interval (the alternative LLQ replaces)")
	fs.BoolVar(&b.baseline, "baseline", false, "after the hold, time a bare Go UDP sender sending one packet to every endpoint, in rounds (see above)")
	fs.IntVar(&b.roundCount, "rounds", 5, "rounds of -baseline")
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(help, fs, benchHelp)
	}
	if err != nil {
		return nil, err
	}
	if len(pos) != 1 || !strings.HasPrefix(pos[0], "@") {
		return nil, errors.New("want exactly one @SERVER[:PORT]")
	}
	server, err := parseServer(context.Background(), pos[0][1:], wire.DefaultPort)
	if err != nil {
		return nil, err
	}
	b.server = server
	t, ok := dns.StringToType[strings.ToUpper(*qtype)]
	if !ok {
		return nil, fmt.Errorf("unknown type %q", *qtype)
	}
	b.qtype = t
	if b.names <= 0 {
		b.names = b.llqs
	}
	if b.poll > 0 && (b.dnsAddr == "" || b.hold <= 0) {
		return nil, errors.New("-poll needs -dns and -hold")
	}
	if b.sockets <= 0 || b.llqs <= 0 || b.addrs <= 0 || b.window <= 0 {
		return nil, errors.New("-llqs, -sockets, -addrs and -window must be positive")
	}
	if b.baseline && b.roundCount <= 0 {
		return nil, errors.New("-baseline needs -rounds of at least 1")
	}
	if b.sockets > b.llqs {
		b.sockets = b.llqs
	}
	// A socket asking the same question twice would reach the same LLQ.
	if lcm(b.sockets, b.names) < b.llqs {
		return nil, fmt.Errorf("-sockets %d and -names %d repeat a question on a socket before %d LLQs; raise one of them", b.sockets, b.names, b.llqs)
	}
	return b, nil
}

func lcm(a, b int) int {
	x, y := a, b
	for y != 0 {
		x, y = y, x%y
	}
	return a / x * b
}

// benchLLQ is one LLQ's state in the load generator.
type benchLLQ struct {
	q       dns.Question
	name    int // name index
	state   int32
	msgID   uint16
	id      uint64
	lease   uint32
	start   time.Time
	sent    time.Time
	tries   int
	refresh time.Time
	// The packed ack of this LLQ's events, to which the DNS ID and the lease
	// (the last four bytes) are patched. Touched only by the reader of the
	// LLQ's socket.
	ack []byte
	// told holds, for removals [0] and additions [1], one more than the
	// index of the last change of that kind counted as having reached this
	// LLQ. The changeLog's mutex guards it.
	told [2]int
}

const (
	stIdle = iota
	stSetup
	stChallenge
	stLive
	stFailed
	stTerminating
	stDone
	stPollHas // a poller's last answer had the bench's record
)

type benchStats struct {
	challenged, established, failed, retransmitted atomic.Int64
	events, acks, refreshes, terminated, sent      atomic.Int64
	stray                                          atomic.Int64 // to no endpoint of a shared socket
	errs                                           [8]atomic.Int64
	mu                                             sync.Mutex
	setupLatency                                   []time.Duration
	eventFromVisible, eventFromWrite               []time.Duration
	baseline                                       int
	received                                       atomic.Int64
	holdPackets                                    int64
	baseFirst, baseLast                            time.Time
	endpoints, conns                               int
	shared                                         bool
	fanWant                                        int   // LLQs live on name 0 at the end of the hold
	holdChanges                                    int   // changes made during the hold
	dropsHold, dropsRounds                         int64 // client receive-queue drops counted by the kernel
	dropsOK                                        bool
	serverDrops                                    int64 // at the server's socket during set-up and hold
	serverDropsOK                                  bool
	benchHoldCPU                                   time.Duration

	rounds []round

	// The baseline with acks under way: packets that reached the endpoints,
	// first and last, and the acks they sent back to the sink.
	acked                int
	ackedFirst, ackedEnd time.Time
	ackedSent            atomic.Int64
	sink                 atomic.Pointer[ackSink] // where endpoints answer, during that baseline
}

// change is one zone edit made by the bench, with the time the zone file was
// written and the time the ordinary port first answered with it.
type change struct {
	add              bool
	written, visible time.Time
	arrivals         []time.Time // the first event that carried it to each LLQ
	dups             int         // events that carried it again to an LLQ: retransmissions
	latest           time.Time   // of the arrivals
}

// benchSocket is one client endpoint, an address and port the server takes
// for a client. Endpoints may share an OS socket, their benchConn.
type benchSocket struct {
	b     *benchArgs
	pc    *benchConn
	local netip.AddrPort
	oob   []byte // IP_PKTINFO choosing local's address as the source, when pc is shared
	llqs  []*benchLLQ
	next  int // llqs[:next] have been started
	mu    sync.Mutex
	byMsg map[uint16]*benchLLQ
	byID  map[uint64]*benchLLQ
	st    *benchStats
	ch    *changeLog

	// baseAck answers a packet of the baseline with acks: an LLQ ack of this
	// endpoint's first question, so of the size of its LLQ acks. Set before
	// st.sink, read by the reader after loading st.sink.
	baseAck []byte
}

type changeLog struct {
	mu      sync.Mutex
	changes []change
	serial  uint32 // of the zone as last written by change
	added   bool   // whether name 0 has 198.51.100.1 since then
}

// arrived files an event that carried the bench's record under the latest
// change it can be the news of. Latency is worked out at the end, once the
// probe has seen every change: an event may well beat the probe. Only the
// first event of a change to each LLQ counts; repeats are counted apart.
func (c *changeLog) arrived(add bool, at time.Time, l *benchLLQ) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.changes) - 1; i >= 0; i-- {
		if ch := &c.changes[i]; ch.add == add && !ch.written.After(at) {
			// An event is filed under the latest change of its kind written
			// before it arrived, so for each LLQ and kind the index only
			// grows: a change reached l already if and only if it is the
			// last one counted.
			kind := 0
			if add {
				kind = 1
			}
			if l.told[kind] == i+1 {
				ch.dups++
				return
			}
			l.told[kind] = i + 1
			ch.arrivals = append(ch.arrivals, at)
			if at.After(ch.latest) {
				ch.latest = at
			}
			return
		}
	}
}

// fanningOut tells whether the last change, made less than limit ago, has
// reached fewer than subscribers LLQs and either none yet or one less than
// 250 ms ago: the next change would overlap its fan-out. (Events that need
// a retransmission come seconds later, and are not waited for.)
func (c *changeLog) fanningOut(subscribers int, limit time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.changes) == 0 {
		return false
	}
	last := &c.changes[len(c.changes)-1]
	if len(last.arrivals) >= subscribers || time.Since(last.written) >= limit {
		return false
	}
	return len(last.arrivals) == 0 || time.Since(last.latest) < 250*time.Millisecond
}

func (b *benchArgs) run(ctx context.Context, out io.Writer) error {
	if b.cpuProfile != "" {
		f, err := os.Create(b.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	st := &benchStats{}
	cl := &changeLog{}
	socks, conns, err := b.openEndpoints(st, cl)
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range conns {
			c.close()
		}
	}()
	for i := 0; i < b.llqs; i++ {
		n := i % b.names
		q := dns.Question{Name: dns.Fqdn(fmt.Sprintf(b.name, n)), Qtype: b.qtype, Qclass: dns.ClassINET}
		s := socks[i%b.sockets]
		s.llqs = append(s.llqs, &benchLLQ{q: q, name: n})
	}
	if b.zone != "" {
		if err := b.writeZone(0, false); err != nil {
			return err
		}
		if b.dnsAddr != "" {
			if _, ok := b.waitVisible(ctx, false, 10*time.Second); !ok {
				return fmt.Errorf("%s does not serve the bench zone %s", b.dnsAddr, b.zone)
			}
		}
	}
	sdrops0, sok0 := serverDrops(b.server)
	cpu0, _ := procCPU(b.pid)
	rss0, _ := procRSS(b.pid)

	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); c.read() }()
	}
	start := time.Now()
	setupCtx, cancel := context.WithCancel(ctx)
	stopReport := b.progress(out, st, start)
	if b.poll == 0 { // pollers need no set-up
		drive(setupCtx, socks, b.inflight)
	}
	cancel()
	setupTime := time.Since(start)
	cpu1, _ := procCPU(b.pid)
	self1, _ := procCPU(os.Getpid())
	rss1, _ := procRSS(b.pid)

	if b.hold > 0 {
		holdCtx, stop := context.WithTimeout(ctx, b.hold)
		var hold sync.WaitGroup
		sent0, recv0 := st.sent.Load(), st.received.Load()
		if b.poll > 0 {
			for _, s := range socks {
				hold.Add(1)
				go func() { defer hold.Done(); s.pollLoop(holdCtx) }()
			}
		} else {
			hold.Add(1)
			go func() { defer hold.Done(); keepAlive(holdCtx, socks) }()
		}
		holdPackets := func() int64 { return st.sent.Load() - sent0 + st.received.Load() - recv0 }
		if b.zone != "" {
			b.changeLoop(holdCtx, cl, liveOn(socks, 0))
		}
		<-holdCtx.Done()
		stop()
		hold.Wait()
		st.holdPackets = holdPackets()
	}
	cpu2, _ := procCPU(b.pid)
	self2, _ := procCPU(os.Getpid())
	st.benchHoldCPU = self2 - self1
	stopReport()
	st.fanWant = liveOn(socks, 0)
	cl.mu.Lock()
	st.holdChanges = len(cl.changes)
	cl.mu.Unlock()
	drops0, err0 := connDrops(conns)
	if b.baseline {
		if err := b.rounds(ctx, st, cl, socks); err != nil {
			return err
		}
	}
	drops1, err1 := connDrops(conns)
	sdrops1, sok1 := serverDrops(b.server)
	st.serverDrops, st.serverDropsOK = sdrops1-sdrops0, sok0 && sok1
	st.dropsHold, st.dropsRounds = drops0, drops1-drops0
	st.dropsOK = err0 == nil && err1 == nil

	termStart := time.Now()
	terminateAll(socks, b.retry)
	termTime := time.Since(termStart)
	for _, c := range conns {
		c.close()
	}
	wg.Wait()

	b.summary(out, st, cl, setupTime, termTime, cpu1-cpu0, cpu2-cpu1, rss0, rss1)
	return nil
}

// drive runs the four-way handshakes of every socket from one goroutine:
// a hundred thousand sockets with a ticker each would cost the bench more
// CPU than the server. It keeps -window handshakes in flight per socket and
// -inflight in all, and retransmits as RFC 8764 asks.
func drive(ctx context.Context, socks []*benchSocket, limit int) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	pending := append([]*benchSocket(nil), socks...) // filtered in place below
	for len(pending) > 0 && ctx.Err() == nil {
		inflight := 0
		for _, s := range pending {
			inflight += s.inflight()
		}
		next := pending[:0]
		for _, s := range pending {
			started, done := s.step(time.Now(), limit-inflight)
			inflight += started
			if !done {
				next = append(next, s)
			}
		}
		pending = next
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

func (s *benchSocket) inflight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.llqs[:s.next] {
		if l.state == stSetup || l.state == stChallenge {
			n++
		}
	}
	return n
}

// step retransmits what is due, starts up to budget new handshakes, and
// reports how many it started and whether every LLQ of the socket is done.
func (s *benchSocket) step(now time.Time, budget int) (started int, done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inflight, finished := 0, 0
	for _, l := range s.llqs[:s.next] {
		switch l.state {
		case stSetup, stChallenge:
			inflight++
			if now.Sub(l.sent) > s.b.retry<<uint(l.tries-1) {
				if l.tries >= 3 {
					l.state = stFailed
					s.st.failed.Add(1)
					s.st.errs[7].Add(1)
					continue
				}
				l.tries++
				s.st.retransmitted.Add(1)
				s.sendLocked(l, now)
			}
		default:
			finished++
		}
	}
	for s.next < len(s.llqs) && inflight < s.b.window && started < budget {
		l := s.llqs[s.next]
		s.next++
		l.state, l.start, l.tries = stSetup, now, 1
		s.sendLocked(l, now)
		inflight++
		started++
	}
	return started, finished == len(s.llqs)
}

// sendLocked sends l's next handshake or refresh message. Call with s.mu held.
func (s *benchSocket) sendLocked(l *benchLLQ, now time.Time) {
	delete(s.byMsg, l.msgID)
	for { // IDs must be unique among the socket's outstanding messages
		l.msgID = dns.Id()
		if _, taken := s.byMsg[l.msgID]; !taken {
			break
		}
	}
	s.byMsg[l.msgID] = l
	l.sent = now
	m := new(dns.Msg)
	m.Id = l.msgID
	m.Question = []dns.Question{l.q}
	var o *dns.EDNS0_LLQ
	lease := uint32(s.b.lease / time.Second)
	switch l.state {
	case stSetup:
		o = wire.NewOption(wire.OpSetup, 0, 0, lease)
	case stChallenge:
		o = wire.NewOption(wire.OpSetup, 0, l.id, l.lease)
	case stLive:
		o = wire.NewOption(wire.OpRefresh, 0, l.id, lease)
	case stTerminating:
		o = wire.NewOption(wire.OpRefresh, 0, l.id, 0)
	default:
		return
	}
	wire.SetOptions(m, 1232, o)
	s.write(m)
}

func (s *benchSocket) write(m *dns.Msg) {
	if s.b.loss > 0 && rand.Float64() < s.b.loss {
		return
	}
	b, err := m.Pack()
	if err != nil {
		return
	}
	s.st.sent.Add(1)
	s.send(b, s.b.server)
}

// handle takes a packet the endpoint received at now.
func (s *benchSocket) handle(b []byte, from netip.AddrPort, now time.Time) {
	if len(b) == len(baselinePacket) && string(b[:len(baselineMagic)]) == baselineMagic {
		s.st.baselineArrived(now)
		return
	}
	if len(b) == len(ackedPacket) && string(b[:len(ackedMagic)]) == ackedMagic {
		s.baselineAck(now)
		return
	}
	if s.b.loss > 0 && rand.Float64() < s.b.loss {
		return
	}
	s.st.received.Add(1)
	if s.b.poll > 0 {
		s.pollReply(b, now)
		return
	}
	if from.Port() != s.b.server.Port() {
		return
	}
	if s.event(b, now) {
		return
	}
	m := new(dns.Msg)
	if m.Unpack(b) != nil {
		return
	}
	opts := wire.Options(m)
	if len(opts) != 1 || opts[0].Opcode == wire.OpEvent {
		return
	}
	s.reply(m, opts[0], now)
}

func (s *benchSocket) reply(m *dns.Msg, o *dns.EDNS0_LLQ, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.byMsg[m.Id]
	if !ok {
		return
	}
	delete(s.byMsg, m.Id)
	if l.state == stTerminating && o.Error == wire.NoSuchLLQ {
		// The reply to an earlier copy of this terminate got lost.
		l.state = stDone
		s.st.terminated.Add(1)
		return
	}
	if o.Error != wire.NoError || m.Rcode != dns.RcodeSuccess {
		code := int(o.Error)
		if code == 0 || code >= len(s.st.errs) {
			code = wire.UnknownErr
		}
		s.st.errs[code].Add(1)
		if l.state == stSetup || l.state == stChallenge {
			l.state = stFailed
			s.st.failed.Add(1)
		} else {
			l.state = stDone
		}
		return
	}
	switch l.state {
	case stSetup:
		l.id, l.lease = o.Id, o.LeaseLife
		l.state, l.tries = stChallenge, 1
		s.st.challenged.Add(1)
		s.sendLocked(l, now)
	case stChallenge:
		if m.Truncated {
			l.state = stFailed // the bench does not fetch big answer sets over TCP
			s.st.failed.Add(1)
			return
		}
		l.state = stLive
		l.lease = o.LeaseLife
		l.ack = packAck(l.q, l.id) // ready before the first event
		l.refresh = now.Add(time.Duration(l.lease) * time.Second * 8 / 10)
		s.byID[l.id] = l
		s.st.established.Add(1)
		s.st.mu.Lock()
		s.st.setupLatency = append(s.st.setupLatency, now.Sub(l.start))
		s.st.mu.Unlock()
	case stLive:
		s.st.refreshes.Add(1)
		l.lease = o.LeaseLife
		l.refresh = now.Add(time.Duration(l.lease) * time.Second * 8 / 10)
	case stTerminating:
		l.state = stDone
		s.st.terminated.Add(1)
	}
}

// benchAddr is the address of the record the bench adds to name 0 and
// removes; benchMark is its A record's data.
var (
	benchAddr = netip.AddrFrom4([4]byte{198, 51, 100, 1})
	benchMark = string(benchAddr.AsSlice())
)

// event handles b if it is an event packet: it acknowledges it and, when the
// bench made the change, records when it arrived. It reads the packet in
// place (wire.Scan) rather than unpacking it: a fan-out is a hundred
// thousand events, and the bench shares the machine's cores with the server
// it measures.
func (s *benchSocket) event(b []byte, now time.Time) bool {
	if len(b) < 12 || b[2]&0x80 == 0 {
		return false
	}
	var o dns.EDNS0_LLQ
	options, added, removed := 0, 0, 0
	err := wire.Scan(b,
		func(typ uint16, ttl uint32, rdata []byte) {
			if typ != dns.TypeA || string(rdata) != benchMark {
				return
			}
			if ttl == wire.RemoveTTL {
				removed++
			} else {
				added++
			}
		},
		func(l dns.EDNS0_LLQ) { o, options = l, options+1 })
	if err != nil || options != 1 || o.Opcode != wire.OpEvent {
		return false
	}
	s.mu.Lock()
	l, ok := s.byID[o.Id]
	s.mu.Unlock()
	if !ok {
		return true
	}
	s.st.events.Add(1)
	s.ack(l, binary.BigEndian.Uint16(b), o.LeaseLife)
	for range added {
		s.ch.arrived(true, now, l)
	}
	for range removed {
		s.ch.arrived(false, now, l)
	}
	return true
}

// ack acknowledges an event of l with DNS ID id. Acks of an LLQ differ only
// in the ID and the lease, which ends the message (the LLQ option is the
// last and only option of the OPT record, the last record), so one is
// packed when the LLQ is established and patched for each event.
func (s *benchSocket) ack(l *benchLLQ, id uint16, lease uint32) {
	if l.ack == nil {
		if l.ack = packAck(l.q, l.id); l.ack == nil {
			return
		}
	}
	binary.BigEndian.PutUint16(l.ack, id)
	binary.BigEndian.PutUint32(l.ack[len(l.ack)-4:], lease)
	s.st.acks.Add(1)
	if s.b.loss > 0 && rand.Float64() < s.b.loss {
		return
	}
	s.st.sent.Add(1)
	s.pc.queue(s, l.ack)
}

// packAck packs an event ack for LLQ llqID, or returns nil if the lease is
// not its last four bytes.
func packAck(q dns.Question, llqID uint64) []byte {
	const mark = 0x4c4c5121
	ack := new(dns.Msg)
	ack.Response = true
	ack.Question = []dns.Question{q}
	wire.SetOptions(ack, 1232, wire.NewOption(wire.OpEvent, 0, llqID, mark))
	b, err := ack.Pack()
	if err != nil || len(b) < 4 || binary.BigEndian.Uint32(b[len(b)-4:]) != mark {
		return nil
	}
	return b
}

// keepAlive refreshes LLQs at 80 % of their lease until ctx ends, for every
// socket from one goroutine. Refresh times only move later during the hold,
// so it sleeps through the passes before the earliest.
func keepAlive(ctx context.Context, socks []*benchSocket) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var next time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if now.Before(next) {
				continue
			}
			next = now.Add(time.Hour)
			for _, s := range socks {
				s.mu.Lock()
				for _, l := range s.llqs {
					if l.state != stLive {
						continue
					}
					if now.After(l.refresh) {
						l.refresh = now.Add(s.b.retry)
						s.sendLocked(l, now)
					}
					if l.refresh.Before(next) {
						next = l.refresh
					}
				}
				s.mu.Unlock()
			}
		}
	}
}

// terminateAll cancels every live LLQ, retransmitting each -retry, for
// every endpoint from one goroutine. It gives up after three retransmission
// rounds in which no LLQ ended: a loaded machine slows the replies down, and
// only a server that stopped answering should cut the phase short.
func terminateAll(socks []*benchSocket, retry time.Duration) {
	deadline, last := time.Now().Add(3*retry), -1
	for time.Now().Before(deadline) {
		pending := 0
		for _, s := range socks {
			s.mu.Lock()
			now := time.Now()
			for _, l := range s.llqs {
				if l.state == stLive || (l.state == stTerminating && now.Sub(l.sent) > retry) {
					l.state = stTerminating
					s.sendLocked(l, now)
				}
				if l.state == stTerminating {
					pending++
				}
			}
			s.mu.Unlock()
		}
		if pending == 0 {
			return
		}
		if pending != last {
			deadline, last = time.Now().Add(3*retry), pending
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// liveOn counts the live LLQs that ask for name index n: the subscribers a
// change of that name fans out to.
func liveOn(socks []*benchSocket, n int) int {
	live := 0
	for _, s := range socks {
		s.mu.Lock()
		for _, l := range s.llqs {
			if l.name == n && l.state == stLive {
				live++
			}
		}
		s.mu.Unlock()
	}
	return live
}

// writeZone writes the bench's zone: name i has address 192.0.2.(i%250+1),
// and name 0 also 198.51.100.1 when extra is set.
func (b *benchArgs) writeZone(serial uint32, extra bool) error {
	origin := zoneOf(b.name)
	var sb strings.Builder
	// Serials from the clock stay above whatever the file held before.
	serial += uint32(time.Now().Unix() - 1.7e9)
	fmt.Fprintf(&sb, "$ORIGIN %s\n$TTL 3600\n@ IN SOA ns1 hostmaster %d 7200 3600 1209600 3600\n  IN NS ns1\nns1 IN A 127.0.0.1\n", origin, serial)
	for i := 0; i < b.names; i++ {
		fmt.Fprintf(&sb, "%s IN A 192.0.2.%d\n", dns.Fqdn(fmt.Sprintf(b.name, i)), i%250+1)
	}
	if extra {
		fmt.Fprintf(&sb, "%s IN A %s\n", dns.Fqdn(fmt.Sprintf(b.name, 0)), benchAddr)
	}
	tmp := b.zone + ".tmp"
	if err := os.WriteFile(tmp, []byte(sb.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, b.zone)
}

func zoneOf(name string) string {
	labels := dns.SplitDomainName(dns.Fqdn(name))
	if len(labels) < 2 {
		return "."
	}
	return dns.Fqdn(strings.Join(labels[1:], "."))
}

// changeLoop toggles the extra record of name 0 every -change-every and
// polls the ordinary port to learn when the backend serves each change. It
// skips a tick while the last change is still reaching the subscribers of
// name 0, so that one fan-out is timed alone.
func (b *benchArgs) changeLoop(ctx context.Context, cl *changeLog, subscribers int) {
	tick := time.NewTicker(b.changeEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if cl.fanningOut(subscribers, 10*b.changeEvery) {
			continue
		}
		if _, err := b.change(ctx, cl); err != nil {
			return
		}
	}
}

// change toggles 198.51.100.1 on name 0 and files the change; it returns
// its index in cl.changes. With -dns it learns in the background when the
// ordinary port shows it.
func (b *benchArgs) change(ctx context.Context, cl *changeLog) (int, error) {
	cl.mu.Lock()
	cl.serial++
	serial, add := cl.serial, !cl.added
	cl.added = add
	cl.mu.Unlock()
	if err := b.writeZone(serial, add); err != nil {
		return 0, err
	}
	cl.mu.Lock()
	cl.changes = append(cl.changes, change{add: add, written: time.Now()})
	i := len(cl.changes) - 1
	cl.mu.Unlock()
	if b.dnsAddr != "" {
		go func() {
			if at, ok := b.waitVisible(ctx, add, max(b.changeEvery, time.Second)); ok {
				cl.mu.Lock()
				cl.changes[i].visible = at
				cl.mu.Unlock()
			}
		}()
	}
	return i, nil
}

// waitVisible polls name 0 on the ordinary port until it exists and its
// answer has (or lacks) 198.51.100.1.
func (b *benchArgs) waitVisible(ctx context.Context, add bool, limit time.Duration) (time.Time, bool) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(fmt.Sprintf(b.name, 0)), dns.TypeA)
	c := &dns.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		r, _, err := c.Exchange(m, b.dnsAddr)
		if err == nil {
			has := false
			for _, rr := range r.Answer {
				if a, ok := rr.(*dns.A); ok && string(a.A.To4()) == benchMark {
					has = true
				}
			}
			if has == add && len(r.Answer) > 0 {
				return time.Now(), true
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Time{}, false
}

func (b *benchArgs) progress(out io.Writer, st *benchStats, start time.Time) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(b.report)
		defer tick.Stop()
		var last int64
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				est := st.established.Load()
				fmt.Fprintf(out, "%6.1fs established %d (+%d) failed %d retransmitted %d events %d refreshes %d\n",
					time.Since(start).Seconds(), est, est-last, st.failed.Load(), st.retransmitted.Load(), st.events.Load(), st.refreshes.Load())
				last = est
			}
		}
	}()
	return func() { close(stop); <-done }
}

func (b *benchArgs) summary(out io.Writer, st *benchStats, cl *changeLog, setup, term time.Duration, setupCPU, holdCPU time.Duration, rss0, rss1 int64) {
	est := st.established.Load()
	fmt.Fprintf(out, "\n| figure | value |\n| --- | --- |\n")
	row := func(k, f string, a ...any) { fmt.Fprintf(out, "| %s | %s |\n", k, fmt.Sprintf(f, a...)) }
	row("server", "%s", b.server)
	row("LLQs asked / established / failed", "%d / %d / %d", b.llqs, est, st.failed.Load())
	row("client endpoints / source addresses / names", "%d / %d / %d", b.sockets, min(b.addrs, b.sockets), b.names)
	if st.shared {
		row("client OS sockets", "%d, each bound to 0.0.0.0:PORT for up to %d endpoints (IP_PKTINFO)", st.conns, min(b.addrs, b.sockets))
	} else {
		row("client OS sockets", "%d, one per endpoint", st.conns)
	}
	row("packet loss each way", "%.1f %%", b.loss*100)
	row("set-up time", "%.2f s", setup.Seconds())
	row("completed four-way setups per second", "%.0f", float64(est)/setup.Seconds())
	st.mu.Lock()
	defer st.mu.Unlock()
	row("setup latency p50 / p99", "%s / %s", pct(st.setupLatency, 50), pct(st.setupLatency, 99))
	row("handshake retransmissions", "%d", st.retransmitted.Load())
	var errs []string
	for code := range st.errs {
		if n := st.errs[code].Load(); n > 0 {
			name := wire.ErrorName(uint16(code))
			if code == 7 {
				name = "no reply"
			}
			errs = append(errs, fmt.Sprintf("%s %d", name, n))
		}
	}
	if len(errs) > 0 {
		row("errors", "%s", strings.Join(errs, ", "))
	}
	if b.hold > 0 {
		row("hold", "%s", b.hold)
		if b.poll > 0 {
			row("mode", "polling every %s instead of LLQ", b.poll)
		} else {
			row("event packets received / acked", "%d / %d", st.events.Load(), st.acks.Load())
			row("refreshes", "%d", st.refreshes.Load())
		}
		row("client packets sent + received during the hold", "%d (%.0f per second)", st.holdPackets, float64(st.holdPackets)/b.hold.Seconds())
	}
	cl.mu.Lock()
	var fan change
	for i, ch := range cl.changes {
		if i < st.holdChanges && len(ch.arrivals) > len(fan.arrivals) {
			fan = ch
		}
		for _, at := range ch.arrivals {
			st.eventFromWrite = append(st.eventFromWrite, at.Sub(ch.written))
			if !ch.visible.IsZero() {
				// An event that beat the probe's 2 ms polling counts as 0.
				st.eventFromVisible = append(st.eventFromVisible, max(0, at.Sub(ch.visible)))
			}
		}
	}
	cl.mu.Unlock()
	var fanRate float64
	if n := len(fan.arrivals); n > 1 {
		sort.Slice(fan.arrivals, func(i, j int) bool { return fan.arrivals[i].Before(fan.arrivals[j]) })
		span := fan.arrivals[n-1].Sub(fan.arrivals[0])
		fanRate = float64(n) / span.Seconds()
		row("largest fan-out during the hold: events for one change, first to last arrival", "%d of %d subscribers in %s = %.0f events/s", n, st.fanWant, span.Round(time.Millisecond), fanRate)
		if fan.dups > 0 {
			row("repeats of that change to a subscriber already told (retransmissions)", "%d", fan.dups)
		}
	}
	roundRows(row, st.rounds, st.endpoints)
	if st.dropsOK {
		if b.baseline {
			row("client receive-queue drops (kernel): set-up and hold / rounds", "%d / %d", st.dropsHold, st.dropsRounds)
		} else {
			row("client receive-queue drops (kernel)", "%d", st.dropsHold)
		}
	}
	if st.serverDropsOK && b.poll == 0 {
		row("server receive-queue drops (kernel) during set-up, hold and rounds", "%d", st.serverDrops)
	}
	if n := st.stray.Load(); n > 0 {
		row("packets to no endpoint of a shared socket", "%d", n)
	}
	if len(st.eventFromVisible) > 0 {
		row("change visible on the ordinary port -> client knows, p50 / p99", "%s / %s (%d events)", pct(st.eventFromVisible, 50), pct(st.eventFromVisible, 99), len(st.eventFromVisible))
		row("zone file written -> client knows, p50 / p99", "%s / %s", pct(st.eventFromWrite, 50), pct(st.eventFromWrite, 99))
	}
	row("terminated", "%d in %.2f s", st.terminated.Load(), term.Seconds())
	if b.pid > 0 {
		row("server CPU during set-up", "%.2f s (%.1f µs per LLQ)", setupCPU.Seconds(), float64(setupCPU.Microseconds())/float64(max(est, 1)))
		if b.hold > 0 {
			row("server CPU during hold", "%.2f s (the bench's own: %.2f s)", holdCPU.Seconds(), st.benchHoldCPU.Seconds())
		}
		row("server RSS before / after set-up", "%.1f MiB / %.1f MiB (%.0f bytes per LLQ)", float64(rss0)/(1<<20), float64(rss1)/(1<<20), float64(rss1-rss0)/float64(max(est, 1)))
	}
}

func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s) - 1) * p / 100
	return s[i].Round(10 * time.Microsecond).String()
}

// procCPU returns the user+system CPU time of process pid.
func procCPU(pid int) (time.Duration, error) {
	if pid <= 0 {
		return 0, errors.New("no pid")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

// procRSS returns the resident set size of process pid in bytes.
func procRSS(pid int) (int64, error) {
	if pid <= 0 {
		return 0, errors.New("no pid")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, err := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// The baseline for event fan-out: what a minimal Go program achieves sending
// one event-sized datagram to each of the same endpoints (address and port)
// from one socket with sendmmsg, as the server does; the same readers
// receive them. The server's events of one change are one packet but for
// the DNS ID and LLQ ID, so this is the bound for the fan-out. Its
// packets carry a marker the readers count.
const baselineMagic = "LLQ-BENCH-BASELINE"

var baselinePacket = func() []byte {
	b := make([]byte, 100) // about the size of a one-record event
	copy(b, baselineMagic)
	return b
}()

// blastLocal is the address the baseline sockets bind to.
func blastLocal(socks []*benchSocket) *net.UDPAddr {
	if a := socks[0].local.Addr(); !a.Is4() || !a.IsLoopback() {
		return &net.UDPAddr{} // endpoints bound to any address
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
}

// blast sends pkt to every endpoint from one socket, the fastest way a Go
// program can: sendmmsg, blastBatch datagrams a call (as the server sends
// its events), every message pointing at the same bytes, the addresses
// built before the first call.
func blast(socks []*benchSocket, pkt []byte) error {
	conn, err := net.ListenUDP("udp", blastLocal(socks))
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetWriteBuffer(4 << 20)
	var batch interface {
		WriteBatch([]ipv4.Message, int) (int, error)
	} = ipv4.NewPacketConn(conn)
	if conn.LocalAddr().(*net.UDPAddr).IP.To4() == nil {
		batch = ipv6.NewPacketConn(conn)
	}
	ms := make([]ipv4.Message, len(socks))
	bufs := [][]byte{pkt}
	for i, s := range socks {
		to := s.local
		if to.Addr().IsUnspecified() {
			to = netip.AddrPortFrom(netip.IPv6Loopback(), to.Port())
		}
		ms[i] = ipv4.Message{Buffers: bufs, Addr: net.UDPAddrFromAddrPort(to)}
	}
	for len(ms) > 0 {
		n, err := batch.WriteBatch(ms[:min(len(ms), blastBatch)], 0)
		if err != nil {
			return err
		}
		ms = ms[n:]
	}
	return nil
}

// blastBatch is the server's sendBatch.
const blastBatch = 64

// settle waits until count, of packets that reached the bench, has not
// moved for quiet, or at most limit.
func settle(count func() int64, quiet, limit time.Duration) {
	deadline := time.Now().Add(limit)
	last, since := count(), time.Now()
	for time.Now().Before(deadline) && time.Since(since) < quiet {
		time.Sleep(50 * time.Millisecond)
		if n := count(); n != last {
			last, since = n, time.Now()
		}
	}
}

func (st *benchStats) baselineCount() int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return int64(st.baseline)
}

func (st *benchStats) baselineArrived(at time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.baseline == 0 || at.Before(st.baseFirst) {
		st.baseFirst = at
	}
	if at.After(st.baseLast) {
		st.baseLast = at
	}
	st.baseline++
}

// The baseline with acks: the same bare sender, but every endpoint answers
// each packet at once with a datagram of the size of its LLQ acks, sent the
// way it sends those (batched at the end of the read on a shared socket,
// from the endpoint's address), to a bare Go receiver that only counts. The
// difference from the plain baseline is what the protocol's round trip costs
// by itself: the acks' sending and, on loopback, their delivery to the
// receiving socket in the sender's context, and their reception.
const ackedMagic = "LLQ-BENCH-ACKED-BASELINE"

var ackedPacket = func() []byte {
	b := make([]byte, len(baselinePacket))
	copy(b, ackedMagic)
	return b
}()

// ackSink is the bare Go receiver of the baseline's acks.
type ackSink struct {
	conn *net.UDPConn
	addr *net.UDPAddr
	ap   netip.AddrPort
	n    atomic.Int64
	last time.Time // of the last ack; read after done
	done chan struct{}
}

// receiveBuffer is what the llq server asks for its UDP socket.
const receiveBuffer = 4 << 20

func newAckSink(local *net.UDPAddr) (*ackSink, error) {
	conn, err := net.ListenUDP("udp", local)
	if err != nil {
		return nil, err
	}
	conn.SetReadBuffer(receiveBuffer) // as the server's socket
	ap := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	if ap.Addr().IsUnspecified() {
		ap = netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port())
	}
	k := &ackSink{conn: conn, addr: net.UDPAddrFromAddrPort(ap), ap: ap, done: make(chan struct{})}
	go k.run()
	return k, nil
}

func (k *ackSink) run() {
	defer close(k.done)
	buf := make([]byte, 2048)
	for {
		if _, _, err := k.conn.ReadFromUDPAddrPort(buf); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		k.last = time.Now()
		k.n.Add(1)
	}
}

// ackedBaseline runs the baseline with acks once and files its figures in r.
func (b *benchArgs) ackedBaseline(st *benchStats, socks []*benchSocket, r *round) error {
	k, err := newAckSink(blastLocal(socks))
	if err != nil {
		return err
	}
	q0 := dns.Question{Name: dns.Fqdn(fmt.Sprintf(b.name, 0)), Qtype: b.qtype, Qclass: dns.ClassINET}
	for _, s := range socks {
		q := q0
		if len(s.llqs) > 0 {
			q = s.llqs[0].q
		}
		s.baseAck = packAck(q, 1)
	}
	st.mu.Lock()
	st.acked, st.ackedFirst, st.ackedEnd = 0, time.Time{}, time.Time{}
	st.mu.Unlock()
	st.ackedSent.Store(0)
	st.sink.Store(k)
	err = blast(socks, ackedPacket)
	if err == nil {
		time.Sleep(time.Second) // as for the plain baseline
		settle(func() int64 { return st.ackedCount() + k.n.Load() }, 500*time.Millisecond, 30*time.Second)
	}
	st.sink.Store(nil)
	drops, found, derr := udpDrops([]netip.AddrPort{k.ap})
	k.conn.Close()
	<-k.done
	st.mu.Lock()
	defer st.mu.Unlock()
	r.acked = rate{st.acked, st.ackedEnd.Sub(st.ackedFirst)}
	if !k.last.IsZero() && st.acked > 0 {
		r.ackedLast = k.last.Sub(st.ackedFirst)
	}
	r.ackedSent, r.ackedReceived = st.ackedSent.Load(), k.n.Load()
	r.sinkDrops, r.sinkDropsOK = drops, derr == nil && found == 1
	return err
}

func (st *benchStats) ackedCount() int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return int64(st.acked)
}

// baselineAck counts a packet of the baseline with acks and answers it.
func (s *benchSocket) baselineAck(now time.Time) {
	st := s.st
	st.mu.Lock()
	if st.acked == 0 || now.Before(st.ackedFirst) {
		st.ackedFirst = now
	}
	if now.After(st.ackedEnd) {
		st.ackedEnd = now
	}
	st.acked++
	st.mu.Unlock()
	k := st.sink.Load()
	if k == nil || s.baseAck == nil {
		return
	}
	st.ackedSent.Add(1)
	s.pc.queueTo(s, s.baseAck, k.addr, k.ap)
}

// pollLoop is the alternative to LLQ: ask every name again each -poll,
// with the phases spread so that the load is even.
func (s *benchSocket) pollLoop(ctx context.Context) {
	next := make([]time.Time, len(s.llqs))
	now := time.Now()
	for i := range next {
		next[i] = now.Add(time.Duration(rand.Int64N(int64(s.b.poll))))
	}
	to, err := netip.ParseAddrPort(s.b.dnsAddr)
	if err != nil {
		return
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			for i, l := range s.llqs {
				if now.Before(next[i]) {
					continue
				}
				next[i] = next[i].Add(s.b.poll)
				m := new(dns.Msg)
				m.SetQuestion(l.q.Name, l.q.Qtype)
				m.Id = uint16(i)
				if b, err := m.Pack(); err == nil {
					s.st.sent.Add(1)
					s.send(b, to)
				}
			}
		}
	}
}

// pollReply notes when a poller first sees a change of name 0.
func (s *benchSocket) pollReply(b []byte, now time.Time) {
	m := new(dns.Msg)
	if m.Unpack(b) != nil || int(m.Id) >= len(s.llqs) {
		return
	}
	l := s.llqs[m.Id]
	has := false
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok && string(a.A.To4()) == benchMark {
			has = true
		}
	}
	s.mu.Lock()
	changed := has != (l.state == stPollHas)
	if has {
		l.state = stPollHas
	} else {
		l.state = stIdle
	}
	s.mu.Unlock()
	if changed {
		s.ch.arrived(has, now, l)
	}
}
