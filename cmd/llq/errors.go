package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
)

// Exit codes, shared by every subcommand so that scripts can tell a full
// server (worth retrying later) from a dead one or a bad invocation.
const (
	exitOK      = 0
	exitFailure = 1  // anything not listed below: discovery, network, protocol
	exitUsage   = 2  // bad arguments
	exitNoReply = 3  // no reply after RFC 8764's retransmissions
	exitLLQ     = 10 // + the LLQ error code: 11 SERV-FULL ... 16 UNKNOWN-ERR
	// exitInterrupted is a second interrupt's: 128 + SIGINT, as shells report it.
	exitInterrupted = 130
)

const exitCodesHelp = `Exit status: 0 after a clean stop (SIGINT/SIGTERM), 1 other failures, 2 usage,
3 no reply from the server, 10+LLQ error code for a refusal: 11 SERV-FULL, 12 STATIC,
13 FORMAT-ERR (or rcode FORMERR), 14 NO-SUCH-LLQ, 15 BAD-VERS (or rcode BADVERS),
16 UNKNOWN-ERR (or any other rcode), 130 a second SIGINT/SIGTERM before the clean
stop finished (it exits at once).`

func exitCode(err error) int {
	var e *client.Error
	var nr *client.NoReplyError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &e):
		if e.Code > wire.NoError && e.Code <= wire.UnknownErr {
			return exitLLQ + int(e.Code)
		}
		return exitLLQ + wire.UnknownErr
	case errors.As(err, &nr):
		return exitNoReply
	}
	return exitFailure
}

// explain turns err into one line for a person: what happened and, for the
// LLQ refusals, what to do about it.
func explain(err error, server string) string {
	// The prefix is the command's to give, once.
	msg := strings.ReplaceAll(err.Error(), "llq: ", "")
	var e *client.Error
	var nr *client.NoReplyError
	switch {
	case errors.As(err, &e):
		return fmt.Sprintf("%s: %s: %s", server, msg, hint(e))
	case errors.As(err, &nr):
		return fmt.Sprintf("%s: is an LLQ server listening on %s?", msg, nr.Server)
	case errors.Is(err, client.ErrProtocol):
		return fmt.Sprintf("%s: %s", server, msg)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("%s: %s: gave up (see -timeout)", server, msg)
	}
	return msg
}

// explainLost says why a running LLQ was lost, for a line that goes on to
// say it is being set up again: what happened, not what to do about it.
func explainLost(err error, server string) string {
	var e *client.Error
	if errors.As(err, &e) && e.Code == wire.NoSuchLLQ {
		msg := strings.ReplaceAll(err.Error(), "llq: ", "")
		return fmt.Sprintf("%s: %s: the server no longer knows the LLQ (it restarted, or this is another replica)", server, msg)
	}
	return explain(err, server)
}

func hint(e *client.Error) string {
	switch e.Code {
	case wire.ServFull:
		if d := e.RetryAfter(); d > 0 {
			return fmt.Sprintf("the server is at capacity; try again in %s", d)
		}
		return "the server is at capacity; try again later"
	case wire.Static:
		return "this data never changes; query it normally instead of watching it"
	case wire.FormatErr:
		return "the server found the request malformed"
	case wire.NoSuchLLQ:
		return "the server does not know this LLQ (it may have restarted); watch again to set up a new one"
	case wire.BadVers:
		return fmt.Sprintf("the server does not speak LLQ version %d", wire.Version)
	}
	return "the server could not serve the LLQ"
}
