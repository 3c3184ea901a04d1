package dso

import "errors"

// ErrFormat matches (errors.Is) every error this package returns for a
// malformed message or TLV. Both RFCs make a malformed DSO message fatal: a
// responder answers a request it can still identify with FORMERR and, like
// an initiator, aborts the session.
var ErrFormat = errors.New("dso: malformed message")

// ErrNotDSO reports a well-formed DNS header whose opcode is not 6. It is
// not a format error: a server may serve ordinary queries on the same
// connection (RFC 8765 section 6.5.1).
var ErrNotDSO = errors.New("dso: opcode is not DSO")

// Format errors, each matching ErrFormat.
var (
	// ErrShort: fewer than 12 bytes, not even a DNS header to answer.
	ErrShort error = formatError("message shorter than a DNS header")
	// ErrCounts: a DSO message with a non-zero QD, AN, NS or AR count.
	ErrCounts error = formatError("non-zero section count in a DSO message")
	// ErrTruncated: a TLV header cut short or a DSO-LENGTH past the message end.
	ErrTruncated error = formatError("TLV overruns the message")
	// ErrNoPrimary: a request or unidirectional message without a TLV.
	ErrNoPrimary error = formatError("DSO message without a primary TLV")
	// ErrLength: a TLV whose DSO-LENGTH its type does not allow.
	ErrLength error = formatError("TLV length wrong for its type")
	// ErrName: a malformed domain name inside a TLV.
	ErrName error = formatError("malformed name in TLV")
	// ErrTrailing: bytes left in a TLV after its last field.
	ErrTrailing error = formatError("trailing bytes in TLV")
	// ErrRecord: a resource record in a PUSH or RECONFIRM miekg/dns cannot unpack.
	ErrRecord error = formatError("malformed resource record in TLV")
	// ErrEmptyPush: a PUSH TLV without records (RFC 8765 section 6.3.1).
	ErrEmptyPush error = formatError("PUSH without records")
	// ErrAnyInAdd: TYPE or CLASS 255 in a PUSH add or single remove, or in a RECONFIRM.
	ErrAnyInAdd error = formatError("TYPE or CLASS ANY in an add or single remove")
	// ErrCollectiveRdata: a collective remove (TTL 0xFFFFFFFE) with RDATA.
	ErrCollectiveRdata error = formatError("collective remove with RDATA")
	// ErrTooLong: a framed message longer than the reader allows.
	ErrTooLong error = formatError("message longer than allowed")
)

type formatError string

func (e formatError) Error() string        { return "dso: " + string(e) }
func (e formatError) Is(target error) bool { return target == ErrFormat }
