package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// benchPeer is a minimal LLQ server for the bench: it keys LLQs by client
// address, port and question as a real one does, and once want of them are
// live sends each one event.
type benchPeer struct {
	conn *net.UDPConn
	want int

	mu      sync.Mutex
	llqs    map[string]uint64 // client/question -> LLQ ID
	live    map[string]netip.AddrPort
	clients map[netip.AddrPort]bool
	acks    int
	sent    bool
}

func newBenchPeer(t *testing.T, ip net.IP, want int) *benchPeer {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Skip(err) // no IPv6 here
	}
	conn.SetReadBuffer(4 << 20) // the acks of all events come at once
	t.Cleanup(func() { conn.Close() })
	p := &benchPeer{conn: conn, want: want, llqs: map[string]uint64{}, live: map[string]netip.AddrPort{}, clients: map[netip.AddrPort]bool{}}
	go p.serve()
	return p
}

func (p *benchPeer) addr() string { return p.conn.LocalAddr().String() }

func (p *benchPeer) serve() {
	buf := make([]byte, 65535)
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:n]) != nil || len(m.Question) != 1 {
			continue
		}
		opts := wire.Options(m)
		if len(opts) != 1 {
			continue
		}
		o := opts[0]
		key := fmt.Sprintf("%s %s", from, m.Question[0].Name)
		p.mu.Lock()
		p.clients[from] = true
		var reply *dns.EDNS0_LLQ
		switch {
		case m.Response && o.Opcode == wire.OpEvent:
			if id, ok := p.llqs[key]; ok && o.Id == id && o.LeaseLife == 3599 && m.Id == uint16(id) {
				p.acks++
			}
		case o.Opcode == wire.OpSetup && o.Id == 0:
			id, ok := p.llqs[key]
			if !ok {
				id = uint64(len(p.llqs) + 1)
				p.llqs[key] = id
			}
			reply = wire.NewOption(wire.OpSetup, wire.NoError, id, o.LeaseLife)
		case o.Opcode == wire.OpSetup:
			p.live[key] = from
			reply = wire.NewOption(wire.OpSetup, wire.NoError, o.Id, o.LeaseLife)
		case o.Opcode == wire.OpRefresh:
			if o.LeaseLife == 0 {
				delete(p.live, key)
			}
			reply = wire.NewOption(wire.OpRefresh, wire.NoError, o.Id, o.LeaseLife)
		}
		var events []*dns.Msg
		var to []netip.AddrPort
		if len(p.live) == p.want && !p.sent {
			p.sent = true
			for k, c := range p.live {
				e := new(dns.Msg)
				e.Id = uint16(p.llqs[k])
				e.Response = true
				e.Question = []dns.Question{{Name: strings.Fields(k)[1], Qtype: dns.TypeA, Qclass: dns.ClassINET}}
				wire.SetOptions(e, 1232, wire.NewOption(wire.OpEvent, wire.NoError, p.llqs[k], 3599))
				events, to = append(events, e), append(to, c)
			}
		}
		p.mu.Unlock()
		if reply != nil {
			r := new(dns.Msg)
			r.SetReply(m)
			wire.SetOptions(r, 1232, reply)
			b, _ := r.Pack()
			p.conn.WriteToUDPAddrPort(b, from)
		}
		for i, e := range events {
			b, _ := e.Pack()
			p.conn.WriteToUDPAddrPort(b, to[i])
		}
	}
}

// TestBenchEndpoints checks that every endpoint is a client of its own to
// the server, whether endpoints share sockets or not, that events, acks and
// the baselines reach each one, and that each answers the baseline with acks.
func TestBenchEndpoints(t *testing.T) {
	const n = 300
	for _, tc := range []struct {
		name  string
		ip    net.IP
		share bool
		conns string
		addrs int // distinct client addresses the server should see
	}{
		{"shared", net.IPv4(127, 0, 0, 1), true, "| client OS sockets | 6, each bound to 0.0.0.0:PORT for up to 50 endpoints (IP_PKTINFO) |", 50},
		{"unshared", net.IPv4(127, 0, 0, 1), false, "| client OS sockets | 300, one per endpoint |", 50},
		{"IPv6", net.IPv6loopback, true, "| client OS sockets | 300, one per endpoint |", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newBenchPeer(t, tc.ip, n)
			var out, errOut strings.Builder
			code := runBench(context.Background(), []string{"@" + p.addr(), "-llqs", fmt.Sprint(n), "-sockets", fmt.Sprint(n),
				"-addrs", "50", "-names", "1", "-hold", "500ms", "-baseline", "-rounds", "2", "-report", "1h", "-retry", "500ms",
				fmt.Sprintf("-share=%v", tc.share)}, &out, &errOut)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, errOut.String())
			}
			for _, want := range []string{
				tc.conns,
				fmt.Sprintf("| LLQs asked / established / failed | %d / %d / 0 |", n, n),
				fmt.Sprintf("| event packets received / acked | %d / %d |", n, n),
				fmt.Sprintf("| round 1 | bare sender %d of %d in", n, n),
				fmt.Sprintf("| round 2 | bare sender %d of %d in", n, n),
				fmt.Sprintf("packets/s (acks received: %d of %d, the last", n, n),
				"| baseline: a bare Go UDP sender to the same endpoints in a random order, median of the rounds |",
				fmt.Sprintf("| terminated | %d in", n),
			} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if len(p.clients) != n || p.acks != n {
				t.Errorf("server saw %d clients and %d acks, want %d of each", len(p.clients), p.acks, n)
			}
			addrs := map[netip.Addr]bool{}
			for c := range p.clients {
				if a := c.Addr().As16(); tc.addrs > 1 && (a[12] != 127 || a[13] != 1) {
					t.Errorf("client %s is not from 127.1.x.y", c)
				}
				addrs[c.Addr()] = true
			}
			if len(addrs) != tc.addrs {
				t.Errorf("clients came from %d addresses, want %d", len(addrs), tc.addrs)
			}
		})
	}
}

func TestFanningOut(t *testing.T) {
	cl := &changeLog{}
	if cl.fanningOut(3, time.Minute) {
		t.Error("fanning out before any change")
	}
	now := time.Now()
	cl.changes = append(cl.changes, change{add: true, written: now.Add(-time.Second)})
	if !cl.fanningOut(3, time.Minute) {
		t.Error("a change nobody has heard of yet is not fanning out")
	}
	a, b, c := &benchLLQ{}, &benchLLQ{}, &benchLLQ{}
	cl.arrived(true, now, a)
	cl.arrived(true, now, a) // a repeat
	if !cl.fanningOut(3, time.Minute) {
		t.Error("a change still arriving is not fanning out")
	}
	if cl.fanningOut(3, time.Second/2) {
		t.Error("fanning out past the limit")
	}
	cl.changes[0].latest = now.Add(-time.Second)
	if cl.fanningOut(3, time.Minute) {
		t.Error("waiting for a retransmission")
	}
	cl.arrived(true, now, b)
	cl.arrived(true, now, c)
	if cl.fanningOut(3, time.Minute) {
		t.Error("fanning out after reaching every subscriber")
	}
	if ch := cl.changes[0]; len(ch.arrivals) != 3 || ch.dups != 1 {
		t.Errorf("%d arrivals and %d repeats, want 3 and 1", len(ch.arrivals), ch.dups)
	}
}

func TestBenchFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"@127.0.0.1:5352", "-llqs", "0"}, "must be positive"},
		{[]string{"@127.0.0.1:5352", "-baseline", "-rounds", "0"}, "-baseline needs -rounds"},
		{[]string{"@127.0.0.1:5352", "-poll", "1s"}, "-poll needs -dns and -hold"},
	} {
		var out, errOut strings.Builder
		if code := runBench(context.Background(), tc.args, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: exit %d, %q; want usage error %q", tc.args, code, errOut.String(), tc.want)
		}
	}
}
