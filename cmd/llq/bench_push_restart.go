package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/llqdns/llq/client"
)

// watcherLog is what one watcher went through around the restart.
type watcherLog struct {
	mu          sync.Mutex
	subscribed  int       // Initial updates
	lost        time.Time // the first failure after the restart began
	retryDelay  time.Duration
	gotRetry    bool
	resubscribe time.Time // the first Initial update after lost
}

// runRestart follows -watchers questions with client.Watch over DNS Push,
// restarts the server with SIGTERM and times every watcher's way back.
func (p *pushBench) runRestart(ctx context.Context, out io.Writer) error {
	conf, err := p.tlsConfig()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logs := make([]*watcherLog, p.watchers)
	ready := make(chan struct{}, p.watchers)
	var restarting sync.WaitGroup
	var wg sync.WaitGroup
	start := time.Now()
	fmt.Fprintf(out, "starting %d watchers...\n", p.watchers)
	for i := range logs {
		l := &watcherLog{}
		logs[i] = l
		w := client.Watch(ctx, p.question(i%p.names), client.WatchOptions{
			Proto:  client.ProtoPush,
			Server: p.server,
			Push:   client.PushOptions{TLS: conf},
		})
		restarting.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range w.Updates() {
				l.mu.Lock()
				switch {
				case u.Err != nil && l.lost.IsZero() && l.subscribed > 0:
					l.lost = u.Time
					var rd *client.RetryDelayError
					if errors.As(u.Err, &rd) {
						l.gotRetry, l.retryDelay = true, rd.Delay
					}
				case u.Err == nil && u.Initial:
					l.subscribed++
					if l.subscribed == 1 {
						ready <- struct{}{}
					}
					if !l.lost.IsZero() && l.resubscribe.IsZero() {
						l.resubscribe = u.Time
						restarting.Done()
					}
				}
				l.mu.Unlock()
			}
		}()
		// Pace the start: each watcher is a TLS handshake.
		if i%p.dialers == p.dialers-1 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	for range p.watchers {
		select {
		case <-ready:
		case <-time.After(2 * time.Minute):
			return errors.New("not every watcher subscribed")
		}
	}
	fmt.Fprintf(out, "%d watchers subscribed in %s\n", p.watchers, time.Since(start).Round(time.Millisecond))
	time.Sleep(time.Second)

	oldPID, err := readPID(p.pidFile)
	if err != nil {
		return err
	}
	term := time.Now()
	if err := syscall.Kill(oldPID, syscall.SIGTERM); err != nil {
		return err
	}
	exited := waitExit(oldPID, 30*time.Second)
	listening := waitListening(ctx, p.server.String(), oldPID, p.pidFile, 60*time.Second)
	done := make(chan struct{})
	go func() { restarting.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
	}
	cancel()
	wg.Wait()

	var lost, retries, back, early int
	var lostAt, backAt, waits []time.Duration
	minDelay := time.Duration(-1)
	for _, l := range logs {
		if l.lost.IsZero() {
			continue
		}
		lost++
		lostAt = append(lostAt, l.lost.Sub(term))
		if l.gotRetry {
			retries++
			if minDelay < 0 || l.retryDelay < minDelay {
				minDelay = l.retryDelay
			}
		}
		if l.resubscribe.IsZero() {
			continue
		}
		back++
		backAt = append(backAt, l.resubscribe.Sub(term))
		waits = append(waits, l.resubscribe.Sub(l.lost))
		if l.gotRetry && l.resubscribe.Sub(l.lost) < l.retryDelay {
			early++
		}
	}
	rep := report{out}
	fmt.Fprintf(out, "\n| figure | value |\n| --- | --- |\n")
	rep.row("watchers (client.Watch, DNS Push, one session each)", "%d", p.watchers)
	rep.row("sessions ended by the SIGTERM / of them with a Retry Delay", "%d / %d (Retry Delay %s)", lost, retries, minDelay)
	if len(lostAt) > 0 {
		rep.row("SIGTERM to the last session told", "%s", slices.Max(lostAt).Round(time.Millisecond))
	}
	rep.row("SIGTERM to the old process's exit", "%s", since(term, exited))
	rep.row("SIGTERM to the new server's TLS listener accepting", "%s", since(term, listening))
	if len(backAt) > 0 {
		rep.row("SIGTERM to every session subscribed again", "%d of %d back; first %s, median %s, **last %s**", back, p.watchers,
			slices.Min(backAt).Round(time.Millisecond), pct(backAt, 50), slices.Max(backAt).Round(time.Millisecond))
		if !listening.IsZero() {
			rep.row("new listener to every session subscribed again", "**%s**", (term.Add(slices.Max(backAt)).Sub(listening)).Round(time.Millisecond))
		}
		rep.row("each session: told to its resubscription", "min %s, median %s, max %s", slices.Min(waits).Round(time.Millisecond), pct(waits, 50), slices.Max(waits).Round(time.Millisecond))
	}
	rep.row("sessions back before their Retry Delay ran out", "**%d**", early)
	return nil
}

func since(t0, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Sub(t0).Round(time.Millisecond).String()
}

func readPID(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// waitExit waits for process pid to be gone.
func waitExit(pid int, limit time.Duration) time.Time {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return time.Now()
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(b), ") Z ") {
			return time.Now()
		}
		time.Sleep(time.Millisecond)
	}
	return time.Time{}
}

// waitListening waits for a process other than old, named in pidFile, to
// accept TCP connections at addr.
func waitListening(ctx context.Context, addr string, old int, pidFile string, limit time.Duration) time.Time {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if pid, err := readPID(pidFile); err == nil && pid != old {
			if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
				at := time.Now()
				c.Close()
				return at
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Time{}
}
