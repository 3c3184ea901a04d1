// Package dso reads and writes DNS Stateful Operations messages (RFC 8490)
// and the TLVs of DNS Push Notifications (RFC 8765) that travel in them. It
// is the one place in llq that hand-parses a wire format: miekg/dns knows
// opcode 6 and the DSOTYPENI rcode but no DSO TLVs. Every resource record
// and domain name inside a TLV is still packed and unpacked by miekg/dns.
//
// A DSO message is a 12-byte DNS header with OPCODE 6 and all four section
// counts zero, followed by TLVs: DSO-TYPE (u16), DSO-LENGTH (u16), DSO-DATA.
// The first TLV is the primary TLV; any others are additional TLVs. On
// TCP and TLS every message is preceded by a 2-byte length (RFC 1035 section
// 4.2.2); ReadMessage and Builder.Frame deal with it.
//
// Parsing never allocates except where miekg/dns builds names and records;
// building appends into a caller-supplied buffer and allocates only when the
// buffer is too small.
package dso

import (
	"time"

	"github.com/miekg/dns"
)

// DSO-TYPE codes (RFC 8490 section 10.3, RFC 8765 section 10.2).
const (
	TypeKeepalive   uint16 = 0x0001 // Keepalive: inactivity timeout and keepalive interval
	TypeRetryDelay  uint16 = 0x0002 // Retry Delay: close the session, come back after
	TypePadding     uint16 = 0x0003 // Encryption Padding: additional TLV only
	TypeSubscribe   uint16 = 0x0040 // SUBSCRIBE: client request, NAME TYPE CLASS
	TypePush        uint16 = 0x0041 // PUSH: server unidirectional, resource records
	TypeUnsubscribe uint16 = 0x0042 // UNSUBSCRIBE: client unidirectional, SUBSCRIBE's message ID
	TypeReconfirm   uint16 = 0x0043 // RECONFIRM: client unidirectional, NAME TYPE CLASS RDATA
)

// Message layout.
const (
	// HeaderLen is the length of the DNS header that starts every DSO message.
	HeaderLen = 12
	// TLVHeaderLen is the length of DSO-TYPE plus DSO-LENGTH.
	TLVHeaderLen = 4
	// MaxMessageLen is the largest message the 2-byte TCP length prefix can frame.
	MaxMessageLen = 0xFFFF
	// MaxPushLen is the largest PUSH message (RFC 8765 section 6.3: 16,382
	// bytes, 16,384 with the TCP length prefix). A client receiving a larger
	// one aborts the session; a server splits its changes to stay under it.
	MaxPushLen = 16382
)

// OpcodeDSO is the DNS opcode of every DSO message.
const OpcodeDSO = dns.OpcodeStateful

// RcodeDSOTypeNI answers a request whose primary TLV the responder does not
// implement (RFC 8490 section 5.1.1). It is never the answer to Keepalive.
const RcodeDSOTypeNI = dns.RcodeStatefulTypeNotImplemented

// TTL values with a special meaning in PUSH records (RFC 8765 section 6.3.1).
const (
	// MaxAddTTL is the largest TTL of an add; 0 means "as long as subscribed".
	MaxAddTTL = 0x7FFFFFFF
	// RemoveRecordTTL removes the one record whose RDATA is given.
	RemoveRecordTTL = 0xFFFFFFFF
	// RemoveCollectiveTTL, with RDLEN 0, removes every record of the given
	// TYPE (255: every type) and CLASS (255: every class, TYPE ignored).
	RemoveCollectiveTTL = 0xFFFFFFFE
)

// Keepalive timers (RFC 8490 sections 6.2 and 7.1).
const (
	// Infinite as a Keepalive value turns the timer off.
	Infinite = 0xFFFFFFFF
	// DefaultTimeout applies to both timers until Keepalive is exchanged.
	DefaultTimeout = 15 * time.Second
	// MinKeepaliveInterval is the smallest interval a server may send; a
	// client receiving less aborts the session.
	MinKeepaliveInterval = 10 * time.Second
	// RetryCloseGrace is how long a client has to close after a Retry Delay
	// before the server aborts the connection.
	RetryCloseGrace = 5 * time.Second
	// ResponseTimeout is how long a client waits for the response to its
	// first DSO request before it concludes the server does not do DSO.
	ResponseTimeout = 30 * time.Second
)

// ServiceLabel is prepended to a zone to find its DNS Push server (RFC 8765
// section 6.1): an SRV record at _dns-push-tls._tcp.ZONE.
const ServiceLabel = "_dns-push-tls._tcp."

// TypeName returns the RFC name of a DSO-TYPE, or TYPE0xNNNN.
func TypeName(t uint16) string {
	switch t {
	case TypeKeepalive:
		return "KEEPALIVE"
	case TypeRetryDelay:
		return "RETRY-DELAY"
	case TypePadding:
		return "ENCRYPTION-PADDING"
	case TypeSubscribe:
		return "SUBSCRIBE"
	case TypePush:
		return "PUSH"
	case TypeUnsubscribe:
		return "UNSUBSCRIBE"
	case TypeReconfirm:
		return "RECONFIRM"
	}
	const hex = "0123456789ABCDEF"
	return string([]byte{'T', 'Y', 'P', 'E', '0', 'x', hex[t>>12], hex[t>>8&15], hex[t>>4&15], hex[t&15]})
}
