package client

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

func TestSetupErrors(t *testing.T) {
	tests := []struct {
		name    string
		code    uint16 // LLQ-ERROR in the challenge
		lease   uint32
		version uint16 // LLQ-VERSION in the challenge; 0 means 1
		rcode   int
		noLLQ   bool // reply without an LLQ option

		want Error
		text string
	}{
		{name: "SERV-FULL", code: wire.ServFull, lease: 60,
			want: Error{Code: wire.ServFull, Lease: 60, Op: wire.OpSetup}, text: "llq: server answered SERV-FULL (retry after 60s)"},
		{name: "STATIC", code: wire.Static,
			want: Error{Code: wire.Static, Op: wire.OpSetup}, text: "llq: server answered STATIC"},
		{name: "FORMAT-ERR", code: wire.FormatErr,
			want: Error{Code: wire.FormatErr, Op: wire.OpSetup}, text: "llq: server answered FORMAT-ERR"},
		{name: "NO-SUCH-LLQ", code: wire.NoSuchLLQ,
			want: Error{Code: wire.NoSuchLLQ, Op: wire.OpSetup}, text: "llq: server answered NO-SUCH-LLQ"},
		{name: "BAD-VERS", code: wire.BadVers, version: 2,
			want: Error{Code: wire.BadVers, Op: wire.OpSetup, Version: 2}, text: "llq: server answered BAD-VERS (server speaks LLQ version 2)"},
		{name: "UNKNOWN-ERR", code: wire.UnknownErr,
			want: Error{Code: wire.UnknownErr, Op: wire.OpSetup}, text: "llq: server answered UNKNOWN-ERR"},
		{name: "unassigned code", code: 99,
			want: Error{Code: 99, Op: wire.OpSetup}, text: "llq: server answered ERROR-99"},
		{name: "FORMERR without LLQ", rcode: dns.RcodeFormatError, noLLQ: true,
			want: Error{Code: wire.FormatErr, Op: wire.OpSetup, Rcode: dns.RcodeFormatError}, text: "llq: server answered rcode FORMERR"},
		{name: "FORMERR with FORMAT-ERR", rcode: dns.RcodeFormatError, code: wire.FormatErr,
			want: Error{Code: wire.FormatErr, Op: wire.OpSetup, Rcode: dns.RcodeFormatError}, text: "llq: server answered rcode FORMERR"},
		{name: "BADVERS rcode", rcode: dns.RcodeBadVers, noLLQ: true,
			want: Error{Code: wire.BadVers, Op: wire.OpSetup, Rcode: dns.RcodeBadVers}, text: "llq: server answered rcode BADVERS"},
		{name: "REFUSED", rcode: dns.RcodeRefused, noLLQ: true,
			want: Error{Code: wire.UnknownErr, Op: wire.OpSetup, Rcode: dns.RcodeRefused}, text: "llq: server answered rcode REFUSED"},
		{name: "SERVFAIL with LLQ", rcode: dns.RcodeServerFailure,
			want: Error{Code: wire.UnknownErr, Op: wire.OpSetup, Rcode: dns.RcodeServerFailure}, text: "llq: server answered rcode SERVFAIL"},
		{name: "version 2 without error", version: 2,
			want: Error{Code: wire.BadVers, Op: wire.OpSetup, Version: 2}, text: "llq: server answered BAD-VERS (server speaks LLQ version 2)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t)
			c := dial(t, p, Options{})
			ch := subscribeAsync(c, testQ)
			setup := p.recv()
			r := new(dns.Msg)
			r.SetRcode(setup.m, tc.rcode)
			if tc.noLLQ {
				wire.SetOptions(r, 1232) // an OPT is needed for an extended rcode
			} else {
				o := wire.NewOption(wire.OpSetup, tc.code, 0, tc.lease)
				if tc.version != 0 {
					o.Version = tc.version
				}
				wire.SetOptions(r, 1232, o)
			}
			p.reply(setup, r)

			_, err := result(t, ch)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v, want *Error", err)
			}
			if *e != tc.want {
				t.Errorf("err = %+v, want %+v", *e, tc.want)
			}
			if err.Error() != tc.text {
				t.Errorf("Error() = %q, want %q", err.Error(), tc.text)
			}
		})
	}
}

// The ACK+Answers can refuse too, e.g. when the server filled up between
// challenge and response.
func TestAckError(t *testing.T) {
	p := newPeer(t)
	c := dial(t, p, Options{})
	ch := subscribeAsync(c, testQ)
	setup := p.recv()
	p.reply(setup, llqReply(setup.m, wire.OpSetup, 0, 3, 7200))
	cr := p.recv()
	p.reply(cr, llqReply(cr.m, wire.OpSetup, wire.ServFull, 3, 30))
	_, err := result(t, ch)
	var e *Error
	if !errors.As(err, &e) || e.Code != wire.ServFull || e.RetryAfter().Seconds() != 30 {
		t.Fatalf("err = %v, want SERV-FULL retry after 30s", err)
	}
}

var testAddr = netip.MustParseAddrPort("192.0.2.53:5352")

func TestErrorText(t *testing.T) {
	e := &Error{Code: wire.NoSuchLLQ, Op: wire.OpRefresh}
	if got, want := e.Error(), "llq: server answered NO-SUCH-LLQ to REFRESH"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	nr := &NoReplyError{Server: testAddr, Step: "SETUP request", Attempts: 3}
	if !strings.Contains(nr.Error(), "192.0.2.53:5352") || !strings.Contains(nr.Error(), "3 attempts") {
		t.Errorf("NoReplyError text = %q", nr.Error())
	}
}
