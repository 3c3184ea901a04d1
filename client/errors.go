package client

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/llqdns/llq/dso"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// ErrClosed is returned by operations on a closed Client, and by Err for a
// subscription that its owner closed.
var ErrClosed = errors.New("llq: closed")

// ErrDuplicate refuses a second subscription to a question on one Client;
// use another Client (another socket) for a second LLQ on the same question.
var ErrDuplicate = errors.New("llq: question already subscribed on this client")

// ErrProtocol wraps replies that are well-formed DNS but not the LLQ message
// the client waited for, e.g. a plain DNS server answering a setup request.
var ErrProtocol = errors.New("llq: protocol error")

// Error is a refusal by the server: a non-zero LLQ-ERROR, or a DNS rcode that
// rules out LLQ. Code is always an LLQ error code so callers can switch on it
// alone; Rcode says when the refusal came in the DNS header instead.
type Error struct {
	Code    uint16 // LLQ error code (wire.ServFull, ...); mapped from Rcode when the reply had no LLQ error
	Lease   uint32 // for SERV-FULL: seconds after which the client may try again
	Op      uint16 // the LLQ opcode of the request that was refused
	Rcode   int    // DNS rcode of the reply when it was not NOERROR or NXDOMAIN, else 0
	Version uint16 // for BAD-VERS: the version the server speaks, when it said
}

func (e *Error) Error() string {
	s := "llq: server answered "
	if e.Rcode != 0 && e.Code == rcodeToLLQ(e.Rcode) {
		s += "rcode " + rcodeName(e.Rcode)
	} else {
		s += wire.ErrorName(e.Code)
	}
	if e.Op != wire.OpSetup && e.Op != 0 {
		s += " to " + wire.OpName(e.Op)
	}
	switch e.Code {
	case wire.ServFull:
		s += " (retry after " + strconv.FormatUint(uint64(e.Lease), 10) + "s)"
	case wire.BadVers:
		if e.Version != 0 && e.Version != wire.Version {
			s += " (server speaks LLQ version " + strconv.Itoa(int(e.Version)) + ")"
		}
	}
	return s
}

// RetryAfter is how long the server asked the client to wait before trying
// again; only SERV-FULL carries one.
func (e *Error) RetryAfter() time.Duration {
	if e.Code != wire.ServFull {
		return 0
	}
	return time.Duration(e.Lease) * time.Second
}

// NoReplyError reports a request that got no reply after every retransmission
// RFC 8764 allows, which usually means nothing serves LLQ at Server.
type NoReplyError struct {
	Server   netip.AddrPort
	Step     string // "SETUP request", "challenge response", "REFRESH", "terminate"
	Attempts int
	Waited   time.Duration // from the first transmission until giving up
}

func (e *NoReplyError) Error() string {
	return fmt.Sprintf("llq: no reply from %s to %s after %d attempts (%s)", e.Server, e.Step, e.Attempts, e.Waited.Round(time.Millisecond))
}

// Timeout lets NoReplyError pass as a net.Error-style timeout.
func (e *NoReplyError) Timeout() bool { return true }

func rcodeName(rcode int) string {
	// 16 is BADSIG only in TSIG; in a header it is the OPT's BADVERS.
	if rcode == dns.RcodeBadVers {
		return "BADVERS"
	}
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(rcode)
}

// rcodeToLLQ maps a DNS rcode to the LLQ error that means the same thing, so
// that callers handle "FORMERR" and "FORMAT-ERR" alike.
func rcodeToLLQ(rcode int) uint16 {
	switch rcode {
	case dns.RcodeFormatError:
		return wire.FormatErr
	case dns.RcodeBadVers:
		return wire.BadVers
	}
	return wire.UnknownErr
}

// checkReply returns r's LLQ option when r is a successful reply to an LLQ
// request with opcode op, and otherwise an *Error or an ErrProtocol.
func checkReply(r *dns.Msg, op uint16) (*dns.EDNS0_LLQ, error) {
	var llq *dns.EDNS0_LLQ
	if opts := wire.Options(r); len(opts) > 0 {
		llq = opts[0]
	}
	// The LLQ error is the more specific of the two: check it first.
	if llq != nil && llq.Error != wire.NoError {
		e := &Error{Code: llq.Error, Lease: llq.LeaseLife, Op: op}
		if e.Code == wire.BadVers {
			e.Version = llq.Version
		}
		if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			e.Rcode = r.Rcode
		}
		return nil, e
	}
	// NXDOMAIN is fine: watching a name that does not exist yet is the point.
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		e := &Error{Code: rcodeToLLQ(r.Rcode), Op: op, Rcode: r.Rcode}
		if llq != nil && e.Code == wire.BadVers {
			e.Version = llq.Version
		}
		return nil, e
	}
	if llq == nil {
		return nil, fmt.Errorf("%w: reply to %s carries no LLQ option (is this an LLQ server?)", ErrProtocol, wire.OpName(op))
	}
	if llq.Version != wire.Version {
		return nil, &Error{Code: wire.BadVers, Op: op, Version: llq.Version}
	}
	if llq.Opcode != op {
		return nil, fmt.Errorf("%w: reply to %s has LLQ opcode %s", ErrProtocol, wire.OpName(op), wire.OpName(llq.Opcode))
	}
	return llq, nil
}

// ErrSessionLost wraps the error of a DSO session that ended without the
// client closing it: the server closed the connection, or it broke.
var ErrSessionLost = errors.New("llq: DSO session lost")

// ErrIdle ends a DSO session the client closed because it had no
// subscription left for the server's inactivity timeout (RFC 8490 section
// 6.2).
var ErrIdle = errors.New("llq: DSO session closed after its inactivity timeout")

// PushError is a DSO response with an error RCODE: to a SUBSCRIBE (the
// subscription is refused, the session stays) or to the Keepalive request
// that establishes a session (the server does not do DSO).
type PushError struct {
	Op    string        // "SUBSCRIBE" or "Keepalive"
	Rcode int           // the response's RCODE
	Retry time.Duration // from a Retry Delay TLV in the response, else 0
}

func (e *PushError) Error() string {
	s := "llq: server answered " + e.Op + " with " + rcodeName(e.Rcode)
	if e.Retry > 0 {
		s += " (retry after " + e.Retry.String() + ")"
	}
	return s
}

// NoDSO reports a server that does not do DSO on this connection (RFC
// 8490 section 5.1: any rcode but NOERROR and DSOTYPENI to the first
// request) or does not do DNS Push (DSOTYPENI to SUBSCRIBE).
func (e *PushError) NoDSO() bool {
	return e.Rcode != dns.RcodeSuccess && (e.Op != "SUBSCRIBE" || e.Rcode == dso.RcodeDSOTypeNI || e.Rcode == dns.RcodeNotImplemented)
}

// RetryAfter is how long to wait before asking again: the response's Retry
// Delay, else RFC 8765 section 6.2.2's recommendation for the rcode.
func (e *PushError) RetryAfter() time.Duration {
	if e.Retry > 0 {
		return e.Retry
	}
	switch e.Rcode {
	case dns.RcodeServerFailure:
		return time.Minute
	case dns.RcodeNotImplemented, dso.RcodeDSOTypeNI:
		return time.Hour
	}
	return 5 * time.Minute
}

// RetryDelayError ends a session the server closed with a Retry Delay
// (RFC 8490 section 7.2): come back to it no sooner than Delay, or never.
type RetryDelayError struct {
	Server netip.AddrPort
	Rcode  int           // the reason: NOERROR shutdown, SERVFAIL overload, REFUSED, NOTAUTH...
	Delay  time.Duration // how long to stay away
	Never  bool          // the delay was 0xFFFFFFFF: do not come back
}

func (e *RetryDelayError) Error() string {
	if e.Never {
		return fmt.Sprintf("llq: %s closed the DSO session (%s) and asked never to come back", e.Server, rcodeName(e.Rcode))
	}
	return fmt.Sprintf("llq: %s closed the DSO session (%s), retry after %s", e.Server, rcodeName(e.Rcode), e.Delay)
}

// Unwrap lets errors.Is(err, ErrSessionLost) hold for a Retry Delay too.
func (e *RetryDelayError) Unwrap() error { return ErrSessionLost }
