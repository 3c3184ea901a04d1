package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
)

// usePush decides the protocol: DNS Push when forced, or, with -proto auto
// and no @SERVER, when discovery finds the zone's push server. @SERVER
// without -proto push is an LLQ server, as it always was.
func (w *watchArgs) usePush(ctx context.Context, stderr io.Writer) bool {
	switch {
	case w.proto == client.ProtoPush:
		return true
	case w.proto == client.ProtoLLQ || w.server != "":
		return false
	}
	resolver, err := w.resolverAddr()
	if err != nil {
		return false // LLQ discovery reports it
	}
	_, _, zone, err := client.DiscoverPush(ctx, resolver, w.q.Name)
	if err != nil {
		if !errors.Is(err, client.ErrNoService) {
			fmt.Fprintf(stderr, "llq watch: %s; trying LLQ\n", explain(err, w.q.Name))
		}
		return false
	}
	fmt.Fprintf(stderr, "llq watch: zone %s advertises DNS Push\n", zone)
	return true
}

// runPush follows the question with client.Watch: DNS Push, falling back
// to LLQ (with -proto auto) when the push server stops working, with the
// same output lines as an LLQ. A failure before the first subscription is
// reported and ends the command, as with LLQ; later ones are retried.
func (w *watchArgs) runPush(ctx context.Context, stdout, stderr io.Writer) int {
	qs := w.q.Name + " " + dns.TypeToString[w.q.Qtype]
	opts := client.WatchOptions{
		Proto:    w.proto,
		LLQ:      w.opts,
		Push:     w.push,
		MinRetry: w.opts.RetryInterval,
		Log: func(line string) {
			fmt.Fprintf(stderr, "llq watch: %s\n", strings.ReplaceAll(line, "llq: ", ""))
		},
	}
	if w.server != "" {
		server, err := parseServer(ctx, w.server, client.DefaultPushPort)
		if err != nil {
			fmt.Fprintf(stderr, "llq watch: %s\n", explain(err, qs))
			return exitFailure
		}
		opts.Server = server
		// A host name given as @SERVER is the name to check in the
		// certificate; an address leaves the check to the address.
		host := w.server
		if h, _, err := net.SplitHostPort(w.server); err == nil {
			host = h
		}
		if host = strings.Trim(host, "[]"); opts.Push.ServerName == "" && net.ParseIP(host) == nil {
			opts.Push.ServerName = host
		}
	} else {
		resolver, err := w.resolverAddr()
		if err != nil {
			fmt.Fprintf(stderr, "llq watch: %s\n", explain(err, qs))
			return exitFailure
		}
		opts.Resolver = resolver
	}

	watcher := client.Watch(ctx, w.q, opts)
	defer watcher.Close()
	var timeout <-chan time.Time
	if w.timeout > 0 {
		t := time.NewTimer(w.timeout)
		defer t.Stop()
		timeout = t.C
	}
	established := false
	for {
		var u client.Update
		select {
		case <-timeout:
			if !established {
				fmt.Fprintf(stderr, "llq watch: %s: no subscription after %s: gave up (see -timeout)\n", qs, w.timeout)
				return exitFailure
			}
			continue
		case got, ok := <-watcher.Updates():
			if !ok {
				fmt.Fprintf(stderr, "llq watch: ending the subscription to %s\n", qs)
				return exitOK
			}
			u = got
		}
		if u.Err != nil {
			if !established {
				if ctx.Err() != nil {
					return exitOK
				}
				fmt.Fprintf(stderr, "llq watch: %s\n", explain(u.Err, qs))
				return exitCode(u.Err)
			}
			continue // Log has said it, and that it tries again
		}
		verb := "ADD"
		if u.Initial && !established {
			verb = "ANSWER"
			established = true
		}
		for _, rr := range u.Removed {
			printRR(stdout, u.Time, "REMOVE", rr)
		}
		for _, rr := range u.Added {
			printRR(stdout, u.Time, verb, rr)
		}
	}
}
