package main

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// queryRate keeps window ordinary queries in flight on each of -udp-sockets
// UDP sockets to -dns for -subscribe-for, cycling through the names the
// sessions subscribe to, and returns the NOERROR answers per second: the
// server's query rate, the baseline of the SUBSCRIBE rate.
func (p *pushBench) queryRate(ctx context.Context, window int) (float64, error) {
	queries := make([][]byte, p.names)
	for i := range queries {
		m := new(dns.Msg)
		m.Question = []dns.Question{p.question(i)}
		b, err := m.Pack()
		if err != nil {
			return 0, err
		}
		queries[i] = b
	}
	conns := make([]*net.UDPConn, p.udpSockets)
	for i := range conns {
		c, err := net.Dial("udp", p.dnsAddr)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return 0, err
		}
		conns[i] = c.(*net.UDPConn)
	}
	var answered atomic.Int64
	var counting atomic.Bool
	counting.Store(true)
	start := time.Now()
	deadline := start.Add(p.subscribeFor)
	var wg sync.WaitGroup
	for k, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			next := k * 7919 // spread the sockets over the names
			send := func() {
				q := queries[next%len(queries)]
				binary.BigEndian.PutUint16(q, uint16(next))
				c.Write(q)
				next++
			}
			for range window {
				send()
			}
			buf := make([]byte, 1500)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				n, err := c.Read(buf)
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					for range window { // lost: fill the window again
						send()
					}
					continue
				}
				if err != nil {
					return
				}
				if n >= 12 && buf[3]&0xF == dns.RcodeSuccess && counting.Load() {
					answered.Add(1)
				}
				send()
			}
		}()
	}
	time.Sleep(time.Until(deadline))
	counting.Store(false)
	n := answered.Load()
	elapsed := time.Since(start)
	wg.Wait()
	return float64(n) / elapsed.Seconds(), nil
}
