package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

const benchPushHelp = `usage: llq bench push @SERVER[:PORT] [flags]

Drives DNS Push (RFC 8765) against SERVER's TLS listener and measures each
figure against a bare baseline in the same run:

Sessions: -sessions TLS connections from -addrs loopback source addresses,
each opening a DSO session (Keepalive) and subscribing to -subs questions:
name 0 and -subs - 1 others of the -names names. With -pid, the server's
RSS before and after gives bytes per session; with -baseline and
-baseline-pid, the bench starts a child of itself that opens as many idle
TLS connections to the bare Go TLS server at -baseline (bench/push-baseline)
and reads that server's RSS the same way. (The open-file limit is per
process: the child holds the baseline's connections.)

Fan-out (with -zone and -dns, the bench owning the zone file as llq bench
does): -rounds rounds, each toggling one address of name 0 and timing its
PUSH to every session, first to last arrival, then, back to back, the
baseline server writing a frame of the same size to every one of its
connections, timed the same way.

SUBSCRIBE rate (-subscribe-for): -rounds rounds, each -subscribe-for of
ordinary UDP queries to -dns for the same names (-udp-sockets sockets,
-window queries in flight on each), then -subscribe-for of SUBSCRIBEs on
-subscribe-sessions open sessions (as many in flight in all), new names
each time; answers per second of each.

Restart (-watchers): instead of the above, runs -watchers client.Watch
followers of DNS Push, each its own session, sends SIGTERM to the server
whose process ID -pidfile holds (a loop in the calling script starts it
again), and times the Retry Delays, the old process's exit, the new one's
listener and every watcher's resubscription; it checks that none came back
before its Retry Delay ran out.

Flags:
`

type pushBench struct {
	server       netip.AddrPort
	ca           string
	serverName   string
	sessions     int
	subs         int
	names        int
	name         string
	addrs        int
	dialers      int
	zone         string
	dnsAddr      string
	pid          int
	baseline     netip.AddrPort
	baselinePID  int
	rounds       int
	subscribeFor time.Duration
	subSessions  int
	udpSockets   int
	window       int
	child        bool
	watchers     int
	pidFile      string
	hold         time.Duration
}

func runBenchPush(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	p, err := parseBenchPush(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return usageError(stderr, "bench push", err)
	}
	switch {
	case p.child:
		err = p.runChild(ctx, os.Stdin, stdout)
	case p.watchers > 0:
		err = p.runRestart(ctx, stdout)
	default:
		err = p.run(ctx, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "llq bench push: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func parseBenchPush(args []string, help io.Writer) (*pushBench, error) {
	p := &pushBench{}
	fs := newFlags("bench push")
	fs.StringVar(&p.ca, "ca", "", "PEM file of the CA that signed the servers' certificates")
	fs.StringVar(&p.serverName, "server-name", "", "name the certificates must carry (default: the server's address)")
	fs.IntVar(&p.sessions, "sessions", 1000, "DSO sessions (TLS connections) to open")
	fs.IntVar(&p.subs, "subs", 10, "subscriptions per session")
	fs.IntVar(&p.names, "names", 1000, "names in the zone")
	fs.StringVar(&p.name, "name", "n%d.example.org.", "question name, formatted with the name index")
	fs.IntVar(&p.addrs, "addrs", 50, "loopback source addresses (127.1.x.y) to spread the connections over")
	fs.IntVar(&p.dialers, "dialers", 32, "connections being opened at once")
	fs.StringVar(&p.zone, "zone", "", "zone file to own and change, for the fan-out")
	fs.StringVar(&p.dnsAddr, "dns", "", "ordinary DNS address of the server (UDP)")
	fs.IntVar(&p.pid, "pid", 0, "server process ID, to report its RSS and CPU time")
	baseline := fs.String("baseline", "", "address of the bare Go TLS server (bench/push-baseline)")
	fs.IntVar(&p.baselinePID, "baseline-pid", 0, "its process ID")
	fs.IntVar(&p.rounds, "rounds", 5, "rounds of the fan-out and of the SUBSCRIBE rate")
	fs.DurationVar(&p.subscribeFor, "subscribe-for", 3*time.Second, "length of each SUBSCRIBE and query phase (0: skip)")
	fs.IntVar(&p.subSessions, "subscribe-sessions", 512, "sessions that subscribe in the SUBSCRIBE rate phase")
	fs.IntVar(&p.udpSockets, "udp-sockets", 64, "UDP sockets of the query phase")
	fs.IntVar(&p.window, "window", 8, "requests in flight per session (SUBSCRIBE) and, scaled to the same total, per UDP socket")
	fs.BoolVar(&p.child, "baseline-child", false, "(internal) hold the baseline's connections for the parent bench")
	fs.IntVar(&p.watchers, "watchers", 0, "restart mode: this many client.Watch followers (see above)")
	fs.StringVar(&p.pidFile, "pidfile", "", "restart mode: file holding the server's current process ID")
	fs.DurationVar(&p.hold, "hold", 0, "hold the sessions this long once open, before the rounds (to profile the server)")
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(help, fs, benchPushHelp)
	}
	if err != nil {
		return nil, err
	}
	if len(pos) != 1 || !strings.HasPrefix(pos[0], "@") {
		return nil, errors.New("want exactly one @SERVER[:PORT]")
	}
	if p.server, err = parseServer(context.Background(), pos[0][1:], 853); err != nil {
		return nil, err
	}
	if *baseline != "" {
		if p.baseline, err = netip.ParseAddrPort(*baseline); err != nil {
			return nil, fmt.Errorf("-baseline: %w", err)
		}
	}
	switch {
	case p.sessions <= 0 || p.addrs <= 0 || p.dialers <= 0 || p.window <= 0 || p.udpSockets <= 0:
		return nil, errors.New("-sessions, -addrs, -dialers, -window and -udp-sockets must be positive")
	case p.subs < 1 || p.subs > p.names:
		return nil, errors.New("-subs must be between 1 and -names")
	case p.zone != "" && p.dnsAddr == "":
		return nil, errors.New("-zone needs -dns")
	case p.watchers > 0 && p.pidFile == "":
		return nil, errors.New("-watchers needs -pidfile")
	}
	p.subSessions = min(p.subSessions, p.sessions)
	return p, nil
}

// subName is the index of the name of subscription j of session s: name 0
// first (every session follows it, for the fan-out), then names 1 and up,
// shifted by session so that the sessions spread over the zone, distinct
// within a session while j < -names.
func subName(s, j, perSession, names int) int {
	if j == 0 || names < 2 {
		return 0
	}
	return 1 + (s*(perSession-1)+j-1)%(names-1)
}

// source returns loopback source address i of n: 127.1.x.y, or the
// invalid address (any) when the server is not on loopback IPv4.
func source(server netip.AddrPort, i, n int) netip.Addr {
	if a := server.Addr(); !a.Is4() || !a.IsLoopback() {
		return netip.Addr{}
	}
	k := i % n
	return netip.AddrFrom4([4]byte{127, 1, byte(k / 250), byte(k%250 + 1)})
}

func (p *pushBench) tlsConfig() (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: p.serverName}
	if conf.ServerName == "" {
		conf.ServerName = p.server.Addr().String()
	}
	if p.ca != "" {
		pem, err := os.ReadFile(p.ca)
		if err != nil {
			return nil, err
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no certificate", p.ca)
		}
	}
	return conf, nil
}

func (p *pushBench) question(i int) dns.Question {
	return dns.Question{Name: dns.Fqdn(fmt.Sprintf(p.name, i)), Qtype: dns.TypeA, Qclass: dns.ClassINET}
}

// open opens n connections to server with dialers at once; with subscribe,
// each is a DSO session subscribed to -subs questions.
func (p *pushBench) open(ctx context.Context, server netip.AddrPort, conf *tls.Config, n int, subscribe bool, st *pushStats) ([]*pushConn, error) {
	conns := make([]*pushConn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range p.dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := dialPush(ctx, i, source(server, i, p.addrs), server, conf, st)
				if err != nil {
					fail(fmt.Errorf("connection %d: %w", i, err))
					cancel()
					return
				}
				conns[i] = c
				go c.read()
				if !subscribe {
					continue
				}
				qs := make([]dns.Question, p.subs)
				for j := range qs {
					qs[j] = p.question(subName(i, j, p.subs, p.names))
				}
				err = c.establish(qs)
				if err == nil {
					err = c.waitSubscribed(ctx, int32(p.subs))
				}
				if err != nil {
					fail(fmt.Errorf("session %d: %w", i, err))
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		closeAll(conns)
		return nil, first
	}
	return conns, nil
}

func closeAll(conns []*pushConn) {
	for _, c := range conns {
		if c != nil {
			c.close()
		}
	}
}

// report is the bench's summary: rows of a Markdown table.
type report struct {
	out io.Writer
}

func (r report) row(k, f string, a ...any) {
	fmt.Fprintf(r.out, "| %s | %s |\n", k, fmt.Sprintf(f, a...))
}

func (p *pushBench) run(ctx context.Context, out io.Writer) error {
	conf, err := p.tlsConfig()
	if err != nil {
		return err
	}
	zb := &benchArgs{name: p.name, names: p.names, zone: p.zone, dnsAddr: p.dnsAddr, changeEvery: time.Second}
	cl := &changeLog{}
	if p.zone != "" {
		if err := zb.writeZone(0, false); err != nil {
			return err
		}
		if _, ok := zb.waitVisible(ctx, false, 10*time.Second); !ok {
			return errors.New("the server does not show the zone")
		}
	}
	rep := report{out}
	st := &pushStats{}
	rss0, _ := procRSS(p.pid)
	cpu0, _ := procCPU(p.pid)
	start := time.Now()
	fmt.Fprintf(out, "opening %d sessions with %d subscriptions each...\n", p.sessions, p.subs)
	conns, err := p.open(ctx, p.server, conf, p.sessions, true, st)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	setup := time.Since(start)
	cpu1, _ := procCPU(p.pid)
	time.Sleep(2 * time.Second) // initial PUSHes drain, the heap settles
	rss1, _ := procRSS(p.pid)

	var child *pushChild
	var brss0, brss1 int64
	if p.baseline.IsValid() {
		brss0, _ = procRSS(p.baselinePID)
		if child, err = p.startChild(ctx); err != nil {
			return err
		}
		defer child.stop()
		time.Sleep(2 * time.Second)
		brss1, _ = procRSS(p.baselinePID)
	}

	fmt.Fprintf(out, "\n| figure | value |\n| --- | --- |\n")
	rep.row("sessions x subscriptions", "%d x %d from %d source addresses, opened in %s (%.0f sessions/s, %.0f SUBSCRIBEs/s; server CPU %s)",
		p.sessions, p.subs, p.addrs, setup.Round(time.Millisecond), float64(p.sessions)/setup.Seconds(), float64(p.sessions*p.subs)/setup.Seconds(), (cpu1 - cpu0).Round(time.Millisecond))
	perSession := float64(rss1-rss0) / float64(p.sessions)
	if p.pid > 0 {
		rep.row("server RSS before / after", "%.1f MiB / %.1f MiB: **%.0f bytes per session** (with its %d subscriptions)", mib(rss0), mib(rss1), perSession, p.subs)
	}
	if child != nil && p.baselinePID > 0 {
		perConn := float64(brss1-brss0) / float64(p.sessions)
		rep.row("baseline: bare Go TLS server RSS before / after as many idle connections", "%.1f MiB / %.1f MiB: %.0f bytes per connection", mib(brss0), mib(brss1), perConn)
		if p.pid > 0 && perConn > 0 {
			rep.row("RSS per session / per bare connection (target <= 1.5)", "**%.2f**", perSession/perConn)
		}
	}
	if p.hold > 0 {
		fmt.Fprintf(out, "| holding | %s |\n", p.hold)
		time.Sleep(p.hold)
	}
	if p.zone != "" {
		if err := p.fanOutRounds(ctx, rep, zb, cl, st, conns, child); err != nil {
			return err
		}
	}
	if p.subscribeFor > 0 && p.dnsAddr != "" {
		if err := p.subscribeRounds(ctx, rep, st, conns); err != nil {
			return err
		}
	}
	if p.pid > 0 {
		rss, _ := procRSS(p.pid)
		rep.row("server RSS at the end", "%.1f MiB", mib(rss))
	}
	if l := st.lost.Load(); l > 0 {
		rep.row("sessions lost while held", "%d", l)
	}
	if r := st.retries.Load(); r > 0 {
		rep.row("Retry Delays received while held", "%d", r)
	}
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// fanOutRounds times, in rounds, one change pushed to every session and
// the baseline's frame of the same size written to every connection.
func (p *pushBench) fanOutRounds(ctx context.Context, rep report, zb *benchArgs, cl *changeLog, st *pushStats, conns []*pushConn, child *pushChild) error {
	var ratios, fans, bases []float64
	var toFirst, toLast []time.Duration
	for r := 1; r <= p.rounds; r++ {
		settle(st.pushes.Load, 300*time.Millisecond, 10*time.Second)
		st.startRound(int64(r))
		k, err := zb.change(ctx, cl)
		if err != nil {
			return err
		}
		fan := st.waitRound(len(conns), 60*time.Second)
		size := st.pushLen.Load()
		cells := fmt.Sprintf("PUSH (%d bytes framed) to %d of %d sessions in %s = %.0f PUSH/s", size, fan.n, len(conns), fan.span.Round(time.Millisecond), fan.perSecond())
		if vis := visibleAt(cl, k, 2*time.Second); !vis.IsZero() && fan.n > 0 {
			first, last := time.Unix(0, st.first.Load()).Sub(vis), time.Unix(0, st.last.Load()).Sub(vis)
			toFirst, toLast = append(toFirst, first), append(toLast, last)
			cells += fmt.Sprintf(" (change visible on the ordinary port -> first PUSH %s, last %s)", first.Round(time.Millisecond), last.Round(time.Millisecond))
		}
		fans = append(fans, fan.perSecond())
		if child != nil {
			time.Sleep(300 * time.Millisecond)
			base, err := child.round(r, int(size-2))
			if err != nil {
				return err
			}
			cells += fmt.Sprintf("; bare writer, same size, %d of %d connections in %s = %.0f/s", base.n, len(conns), base.span.Round(time.Millisecond), base.perSecond())
			if base.perSecond() > 0 && fan.n == len(conns) {
				ratios = append(ratios, fan.perSecond()/base.perSecond())
				bases = append(bases, base.perSecond())
				cells += fmt.Sprintf("; ratio %.2f", ratios[len(ratios)-1])
			}
		}
		rep.row(fmt.Sprintf("fan-out round %d", r), "%s", cells)
	}
	rep.row("fan-out: PUSH messages/s for one change, first to last arrival, median", "%.0f", median(fans))
	if len(toFirst) > 0 {
		rep.row("change visible on the ordinary port -> first / last PUSH, median of the rounds", "%s / %s", pct(toFirst, 50), pct(toLast, 50))
	}
	if len(ratios) > 0 {
		rep.row("baseline: bare Go writer, same bytes, same number of TLS connections, median", "%.0f frames/s", median(bases))
		rep.row("fan-out / baseline, median of the rounds' ratios (lowest, highest) (target >= 0.5)", "**%.2f** (%.2f, %.2f)", median(ratios), slices.Min(ratios), slices.Max(ratios))
	}
	return nil
}

// visibleAt waits up to limit for the time the ordinary port showed
// change k (zero if it did not).
func visibleAt(cl *changeLog, k int, limit time.Duration) time.Time {
	deadline := time.Now().Add(limit)
	for {
		cl.mu.Lock()
		at := cl.changes[k].visible
		cl.mu.Unlock()
		if !at.IsZero() || time.Now().After(deadline) {
			return at
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// subscribeRounds measures, in rounds, ordinary queries per second over
// UDP and SUBSCRIBEs per second on open sessions, for the same names, with
// as many requests in flight.
func (p *pushBench) subscribeRounds(ctx context.Context, rep report, st *pushStats, conns []*pushConn) error {
	sessions := conns[:p.subSessions]
	inflight := p.subSessions * p.window
	udpWindow := max(1, inflight/p.udpSockets)
	used := make([]int, len(sessions)) // extra subscriptions made on each session
	var ratios, qs, ss []float64
	for r := 1; r <= p.rounds; r++ {
		settle(st.pushes.Load, 300*time.Millisecond, 10*time.Second)
		q, err := p.queryRate(ctx, udpWindow)
		if err != nil {
			return err
		}
		settle(st.pushes.Load, 300*time.Millisecond, 10*time.Second)
		s, refused := p.subscribeRate(ctx, st, sessions, used)
		cells := fmt.Sprintf("queries %.0f/s; SUBSCRIBEs %.0f/s", q, s)
		if refused > 0 {
			cells += fmt.Sprintf(" (%d refused)", refused)
		}
		if q > 0 {
			ratios = append(ratios, s/q)
			cells += fmt.Sprintf("; ratio %.2f", s/q)
		}
		qs, ss = append(qs, q), append(ss, s)
		rep.row(fmt.Sprintf("SUBSCRIBE round %d", r), "%s", cells)
	}
	rep.row("ordinary UDP queries/s, same server, same names, median", "%.0f (%d sockets x %d in flight, %s each)", median(qs), p.udpSockets, udpWindow, p.subscribeFor)
	rep.row("SUBSCRIBEs/s on open sessions, median", "%.0f (%d sessions x %d in flight, %s each)", median(ss), p.subSessions, p.window, p.subscribeFor)
	if len(ratios) > 0 {
		rep.row("SUBSCRIBEs/s / queries/s, median of the rounds' ratios (lowest, highest) (target >= 0.5)", "**%.2f** (%.2f, %.2f)", median(ratios), slices.Min(ratios), slices.Max(ratios))
	}
	return nil
}

// subscribeRate keeps -window SUBSCRIBEs in flight on each of sessions for
// -subscribe-for, each for a name the session does not follow yet, and
// returns the NOERROR answers per second and how many were refused.
func (p *pushBench) subscribeRate(ctx context.Context, st *pushStats, sessions []*pushConn, used []int) (float64, int64) {
	ctx, cancel := context.WithTimeout(ctx, p.subscribeFor)
	defer cancel()
	a0, r0 := st.answers.Load(), st.refusals.Load()
	start := time.Now()
	var wg sync.WaitGroup
	for k, c := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := c.subscribed.Load() + c.refused.Load()
			sent := int32(0)
			for ctx.Err() == nil {
				for sent-(c.subscribed.Load()+c.refused.Load()-base) < int32(p.window) {
					j := p.subs + used[k]
					if j >= p.names {
						return // this session follows every name
					}
					if c.subscribe(p.question(subName(c.idx, j, p.subs, p.names))) != nil {
						return
					}
					used[k]++
					sent++
				}
				select {
				case <-c.answered:
				case <-c.done:
					return
				case <-ctx.Done():
				}
			}
		}()
	}
	<-ctx.Done()
	a1, r1 := st.answers.Load(), st.refusals.Load()
	elapsed := time.Since(start)
	wg.Wait()
	return float64(a1-a0) / elapsed.Seconds(), r1 - r0
}

// pushChild is the child process holding the baseline's connections.
type pushChild struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func (p *pushBench) startChild(ctx context.Context) (*pushChild, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"bench", "push", "@" + p.baseline.String(), "-baseline-child",
		"-sessions", strconv.Itoa(p.sessions), "-addrs", strconv.Itoa(p.addrs), "-dialers", strconv.Itoa(p.dialers)}
	if p.ca != "" {
		args = append(args, "-ca", p.ca)
	}
	if p.serverName != "" {
		args = append(args, "-server-name", p.serverName)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &pushChild{cmd: cmd, in: in, out: bufio.NewReader(out)}
	line, err := c.out.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		c.stop()
		return nil, fmt.Errorf("baseline child: %q %v", line, err)
	}
	return c, nil
}

// round has the child time the baseline's frame of size bytes to every
// connection.
func (c *pushChild) round(r, size int) (rate, error) {
	if _, err := fmt.Fprintf(c.in, "round %d %d\n", r, size); err != nil {
		return rate{}, err
	}
	line, err := c.out.ReadString('\n')
	if err != nil {
		return rate{}, fmt.Errorf("baseline child: %w", err)
	}
	var n int
	var span int64
	if _, err := fmt.Sscanf(line, "%d %d", &n, &span); err != nil {
		return rate{}, fmt.Errorf("baseline child said %q", line)
	}
	return rate{n, time.Duration(span)}, nil
}

func (c *pushChild) stop() {
	c.in.Close()
	c.cmd.Wait()
}

// runChild opens -sessions bare TLS connections to the baseline server,
// says "ready", then times one round per "round R SIZE" line on in.
func (p *pushBench) runChild(ctx context.Context, in io.Reader, out io.Writer) error {
	conf, err := p.tlsConfig()
	if err != nil {
		return err
	}
	st := &pushStats{}
	conns, err := p.open(ctx, p.server, conf, p.sessions, false, st)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	fmt.Fprintln(out, "ready")
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var r, size int
		if _, err := fmt.Sscanf(sc.Text(), "round %d %d", &r, &size); err != nil {
			return fmt.Errorf("child: %q: %w", sc.Text(), err)
		}
		st.startRound(int64(r))
		if err := conns[0].sendRaw(fanoutRequest(size)); err != nil {
			return err
		}
		res := st.waitRound(len(conns), 60*time.Second)
		fmt.Fprintf(out, "%d %d\n", res.n, int64(res.span))
	}
	return sc.Err()
}

// fanoutRequest is the message asking bench/push-baseline to write a frame
// of size bytes to every connection.
func fanoutRequest(size int) []byte {
	return append([]byte("LLQ-FANOUT"), byte(size>>8), byte(size))
}
