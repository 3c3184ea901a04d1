package llq

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// TCP connections under attack: caps, idle connections, read buffers and
// running out of descriptors.

// dialFrom opens a TCP connection to the engine from a loopback address of
// its own (Linux routes all of 127/8 to lo), so that tests can play several
// clients.
func dialFrom(t testing.TB, e *Engine, from string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", e.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// tcpExchange sends one framed message and reads one framed reply.
func tcpExchange(c net.Conn, m *dns.Msg) (*dns.Msg, error) {
	raw, err := m.Pack()
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(wait))
	if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(raw))), raw...)); err != nil {
		return nil, err
	}
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(c, buf); err != nil {
		return nil, err
	}
	r := new(dns.Msg)
	return r, r.Unpack(buf)
}

// closedByServer waits until the server has closed c.
func closedByServer(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 512)
	for {
		_, err := c.Read(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open")
		}
		if err != nil {
			return
		}
	}
}

func openConns(e *Engine) int {
	e.llq.ln.gate.mu.Lock()
	defer e.llq.ln.gate.mu.Unlock()
	return e.llq.ln.gate.open
}

func bufferedBytes(e *Engine) int {
	e.llq.ln.gate.mu.Lock()
	defer e.llq.ln.gate.mu.Unlock()
	return e.llq.ln.gate.buffered
}

// One address cannot hold more than max-connections-per-client
// connections (the default: 256); others still get in, up to
// max-connections.
func TestConnectionCaps(t *testing.T) {
	env := newTestEnv(t, nil)
	perClient := env.e.config().conns.perClient
	refusedPer := track(t, env.e.metrics.connsRefused.WithLabelValues("max-connections-per-client"))
	refusedMax := track(t, env.e.metrics.connsRefused.WithLabelValues("max-connections"))
	n := perClient + 50
	for range n {
		dialFrom(t, env.e, "127.0.0.1")
	}
	eventually(t, "the extra connections to be refused", func() bool { return refusedPer.moved(t) == 50 }, wait)
	if got := openConns(env.e); got != perClient {
		t.Fatalf("%d connections open from one address, want the cap %d", got, perClient)
	}

	// Another client is served.
	other := dialFrom(t, env.e, "127.0.0.2")
	r, err := tcpExchange(other, llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600)))
	if err != nil {
		t.Fatal(err)
	}
	wantOpt(t, only(t, r), wire.OpSetup, wire.NoError)

	// The total cap, lowered by a reload, refuses the next one from anyone.
	cfg := *env.e.config()
	cfg.conns.max = perClient + 1
	env.e.reconfigure(&cfg)
	closedByServer(t, dialFrom(t, env.e, "127.0.0.3"))
	if refusedMax.moved(t) != 1 {
		t.Fatalf("refused for max-connections: %v, want 1", refusedMax.moved(t))
	}
}

// IPv6 clients are counted by their /64: a host picking a fresh address
// for every connection gets no more.
func TestConnectionCapsIPv6Prefix(t *testing.T) {
	bits := defaultClientBits
	a := netip.MustParseAddr("2001:db8:1:2:aaaa::1")
	b := netip.MustParseAddr("2001:db8:1:2:bbbb::7")
	c := netip.MustParseAddr("2001:db8:1:3::1")
	if bits.key(a) != bits.key(b) || bits.key(a) == bits.key(c) {
		t.Fatalf("keys %v %v %v", bits.key(a), bits.key(b), bits.key(c))
	}
	v4 := netip.MustParseAddr("192.0.2.1")
	if bits.key(v4) == bits.key(v4.Next()) || bits.key(netip.AddrFrom16(v4.As16())) != bits.key(v4) {
		t.Fatalf("IPv4 keys")
	}
	g := newConnGate(newListenerMetrics(t.Name()))
	lim := connLimits{perClient: 2}
	if !g.enter(bits.key(a), lim) || !g.enter(bits.key(b), lim) || g.enter(bits.key(b.Next()), lim) {
		t.Fatalf("a /64 got more than 2 connections")
	}
	if !g.enter(bits.key(c), lim) {
		t.Fatalf("the next /64 refused")
	}
}

// A connection that holds no LLQ is closed once the idle time has passed,
// however often it sends something meaningless; one that holds an LLQ stays
// until its LLQ ends.
func TestIdleConnections(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.conns.idle = 300 * time.Millisecond })
	idle := track(t, env.e.metrics.connsClosed.WithLabelValues("idle"))

	holder := dialFrom(t, env.e, "127.0.0.1")
	r, err := tcpExchange(holder, llqMsg(1, 1232, []dns.Question{qWWW}, setupOpt(0, 3600)))
	if err != nil {
		t.Fatal(err)
	}
	o := only(t, r)
	wantOpt(t, o, wire.OpSetup, wire.NoError)

	// Started after the holder's setup, so its idle time ends later.
	chatter := dialFrom(t, env.e, "127.0.0.1")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := chatter.Write([]byte{0, 0}); err != nil { // an empty message
				return
			}
		}
	}()
	closedByServer(t, chatter)

	// A trickle of one message's bytes does not keep a connection either.
	slow := dialFrom(t, env.e, "127.0.0.1")
	slow.Write([]byte{0, 100})
	go func() {
		for range 100 {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := slow.Write([]byte{0}); err != nil {
				return
			}
		}
	}()
	closedByServer(t, slow)

	// The holder outlived its own idle time and still answers.
	r, err = tcpExchange(holder, llqMsg(2, 1232, []dns.Question{qWWW}, refreshOpt(o.Id, 3600)))
	if err != nil {
		t.Fatalf("connection holding an LLQ: %v", err)
	}
	wantOpt(t, only(t, r), wire.OpRefresh, wire.NoError)

	// Once its LLQ ends, it is idle like any other.
	if _, err := tcpExchange(holder, llqMsg(3, 1232, []dns.Question{qWWW}, refreshOpt(o.Id, 0))); err != nil {
		t.Fatal(err)
	}
	closedByServer(t, holder)
	if got := idle.moved(t); got != 3 {
		t.Fatalf("%v connections closed as idle, want 3", got)
	}
}

// A 2-byte length prefix buys a connection frameStart bytes, not 64 KiB;
// more comes only with the bytes that arrive, and the total is capped.
func TestReadBuffers(t *testing.T) {
	env := newTestEnv(t, func(c *config) { c.conns.buffers = dns.MaxMsgSize })
	full := track(t, env.e.metrics.connsClosed.WithLabelValues("read-buffers"))
	fit := dns.MaxMsgSize / frameStart // 127 prefixes fit, the 128th does not
	conns := make([]*net.TCPConn, fit)
	for i := range conns {
		conns[i] = dialFrom(t, env.e, "127.0.0.1")
		conns[i].Write([]byte{0xff, 0xff})
	}
	eventually(t, "every prefix to be read", func() bool { return bufferedBytes(env.e) == fit*frameStart }, wait)
	one := dialFrom(t, env.e, "127.0.0.1")
	one.Write([]byte{0xff, 0xff})
	closedByServer(t, one)
	if full.moved(t) != 1 {
		t.Fatalf("closed for read buffers: %v, want 1", full.moved(t))
	}

	// A connection closed mid-message gives its buffer back; the room lets
	// another message grow as its bytes arrive, to twice what arrived.
	conns[0].Close()
	conns[1].Close()
	eventually(t, "the buffers to be given back", func() bool { return bufferedBytes(env.e) == (fit-2)*frameStart }, wait)
	conns[2].Write(make([]byte, frameStart+1))
	eventually(t, "the buffer to grow", func() bool { return bufferedBytes(env.e) == (fit-1)*frameStart }, wait)
}

// The measurement behind the read buffers: 2,000 connections, each a
// 2-byte prefix announcing 65,535 bytes, from 8 addresses within the
// default caps.
func TestReadBuffersHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 connections")
	}
	env := newTestEnv(t, nil)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const n = 2000
	for i := range n {
		c := dialFrom(t, env.e, fmt.Sprintf("127.0.0.%d", 1+i%8))
		c.Write([]byte{0xff, 0xff})
	}
	eventually(t, "every prefix to be read", func() bool { return bufferedBytes(env.e) == n*frameStart }, 4*wait)
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("%d connections with a 2-byte prefix: read buffers %d KiB, heap in use %+d KiB, goroutine stacks %+d KiB",
		n, bufferedBytes(env.e)>>10, (int64(after.HeapInuse)-int64(before.HeapInuse))>>10,
		(int64(after.StackInuse)-int64(before.StackInuse))>>10)
}

func TestAcceptPauses(t *testing.T) {
	var got []time.Duration
	p := time.Duration(0)
	for range 10 {
		p = nextAcceptPause(p)
		got = append(got, p)
	}
	want := "[5ms 10ms 20ms 40ms 80ms 160ms 320ms 640ms 1s 1s]"
	if fmt.Sprint(got) != want {
		t.Fatalf("pauses %v, want %s", got, want)
	}
}

// When descriptors run out, a client connecting to the LLQ TCP listener or
// the DNS Push TLS listener has its connection reset at once rather than
// left in the backlog until it times out (the spare descriptor), the
// accept loop pauses between tries, and once descriptors are free again
// clients are served. It runs in a child process whose descriptor limit it
// lowers. With LLQ_BACKOFF_MEASURE=10s the child holds the shortage that
// long and reports the CPU time it used meanwhile.
func TestAcceptBackoff(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptBackoffChild$", "-test.v")
	cmd.Env = append(os.Environ(), "LLQ_BACKOFF_CHILD=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(stdout)
	var output []string
	await := func(prefix string) string {
		t.Helper()
		for lines.Scan() {
			output = append(output, lines.Text())
			if rest, ok := strings.CutPrefix(lines.Text(), prefix); ok {
				return rest
			}
		}
		t.Fatalf("child ended before %q:\n%s", prefix, strings.Join(output, "\n"))
		return ""
	}
	addrs := strings.Fields(await("child: listening "))
	if len(addrs) != 3 {
		t.Fatalf("child listens on %v, want the LLQ, TLS addresses and the CA file", addrs)
	}
	llqAddr, tlsAddr, caFile := addrs[0], addrs[1], addrs[2]
	await("child: descriptors exhausted")
	resets := 0
	for _, addr := range []string{llqAddr, tlsAddr} {
		// The kernel completes the handshake; on loopback the reset may
		// come before Dial returns.
		c, err := net.Dial("tcp", addr)
		if err == nil {
			// A bound on a broken server, not a timing: the reset comes as
			// soon as the accept loop wakes for the connection.
			c.SetReadDeadline(time.Now().Add(time.Minute))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			resets++
		case errors.Is(err, io.EOF):
			// A descriptor was free at that instant (another part of the
			// process had just let one go): the listener served the
			// connection, and closed it when this client, which says
			// nothing, let its handshake time run out. Not a hang.
			t.Logf("a client of %s while descriptors ran out was served: a descriptor was free", addr)
		default:
			t.Errorf("a client of %s while descriptors ran out read %v, want a connection reset", addr, err)
		}
	}
	if resets == 0 {
		t.Error("no client was reset while descriptors ran out")
	}
	fmt.Fprintf(stdin, "shed %d\n", resets)
	await("child: descriptors freed")
	c, err := net.Dial("tcp", llqAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := tcpExchange(c, llqMsg(7, 1232, []dns.Question{qWWW}, setupOpt(0, 3600)))
	if err != nil {
		t.Fatalf("client not served once descriptors were freed: %v", err)
	}
	wantOpt(t, only(t, r), wire.OpSetup, wire.NoError)
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tc, err := tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS handshake once descriptors were freed: %v", err)
	}
	tc.Close()
	stdin.Close()
	await("child: done")
	for _, l := range output {
		if strings.HasPrefix(l, "child: ") {
			t.Log(l)
		}
	}
	for lines.Scan() {
		output = append(output, lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v\n%s", err, strings.Join(output, "\n"))
	}
}

func TestAcceptBackoffChild(t *testing.T) {
	if os.Getenv("LLQ_BACKOFF_CHILD") == "" {
		t.Skip("run by TestAcceptBackoff")
	}
	env, ca := newPushEnv(t, nil)
	fmt.Println("child: listening", env.e.Addr(), env.e.pushTransport().Addr(), ca.CAFile)
	in := bufio.NewScanner(os.Stdin)

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = 256
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var held []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		held = append(held, f)
	}
	failed := track(t, env.e.metrics.acceptErrors)
	shed := track(t, env.e.metrics.connsRefused.WithLabelValues("descriptors"))
	fmt.Println("child: descriptors exhausted")
	in.Scan() // the parent's clients were reset; the count follows the reset
	var resets float64
	fmt.Sscanf(in.Text(), "shed %v", &resets)
	eventually(t, "the resets counted", func() bool { return shed.moved(t) == resets }, wait)
	eventually(t, "accepts to fail", func() bool { return failed.moved(t) >= 3 }, wait)
	if d, err := time.ParseDuration(os.Getenv("LLQ_BACKOFF_MEASURE")); err == nil {
		cpu0, t0 := cpuTime(), time.Now()
		time.Sleep(d)
		fmt.Printf("child: %v of descriptor exhaustion cost %v of CPU, %v failed accepts\n",
			time.Since(t0).Round(time.Millisecond), (cpuTime() - cpu0).Round(time.Millisecond), failed.moved(t))
	}
	for _, f := range held {
		f.Close()
	}
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	fmt.Println("child: descriptors freed")
	in.Scan() // the parent has its answers
	fmt.Println("child: done")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
