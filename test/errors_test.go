package test

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Every LLQ error code, as it travels over the wire to a client.

var wwwA = question("www.example.org.", dns.TypeA)

// checkError checks a reply refusing a request: a response with the given
// DNS rcode and an LLQ option carrying code for each question, or, when the
// request had fewer options than questions, for each option it had (the
// server never answers with more options than it was sent).
func checkError(t *testing.T, r *dns.Msg, rcode int, code uint16) {
	t.Helper()
	if !r.Response {
		t.Errorf("not a response:\n%v", r)
	}
	if r.Rcode != rcode {
		t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode])
	}
	if len(r.Answer) != 0 {
		t.Errorf("refusal carries answers:\n%v", r)
	}
	opts := wire.Options(r)
	if len(opts) > len(r.Question) || len(opts) == 0 {
		t.Fatalf("%d LLQ options for %d questions:\n%v", len(opts), len(r.Question), r)
	}
	for _, o := range opts {
		if o.Error != code {
			t.Errorf("LLQ error %s, want %s", wire.ErrorName(o.Error), wire.ErrorName(code))
		}
		if o.Version != wire.Version {
			t.Errorf("reply speaks LLQ version %d", o.Version)
		}
	}
}

func TestErrNoSuchLLQ(t *testing.T) {
	s := startServer(t, "", wwwRecords...)
	errs := counter(t, "errors_total", "code", "NO-SUCH-LLQ")

	t.Run("unknown ID", func(t *testing.T) {
		r := newRaw(t, s.llq, "")
		reply := r.exchange(llqMsg(wwwA, wire.OpRefresh, 0x1234_5678_9abc_def0, 30))
		checkError(t, reply, dns.RcodeSuccess, wire.NoSuchLLQ)
		if o := option(t, reply); o.Opcode != wire.OpRefresh || o.Id != 0x1234_5678_9abc_def0 {
			t.Errorf("reply option %v does not echo the request", o)
		}
	})

	t.Run("forged challenge response", func(t *testing.T) {
		r := newRaw(t, s.llq, "")
		checkError(t, r.exchange(llqMsg(wwwA, wire.OpSetup, 0x1234_5678_9abc_def0, 30)), dns.RcodeSuccess, wire.NoSuchLLQ)
	})

	t.Run("challenge answered from another port", func(t *testing.T) {
		r := newRaw(t, s.llq, "")
		o := option(t, r.exchange(llqMsg(wwwA, wire.OpSetup, 0, 30)))
		other := newRaw(t, s.llq, "")
		checkError(t, other.exchange(llqMsg(wwwA, wire.OpSetup, o.Id, o.LeaseLife)), dns.RcodeSuccess, wire.NoSuchLLQ)
	})

	t.Run("ID of another client address", func(t *testing.T) {
		c := dial(t, s.llq, client.Options{})
		sub := subscribe(t, c, "www.example.org.", dns.TypeA)
		thief := newRaw(t, s.llq, "127.0.0.2:0")
		checkError(t, thief.exchange(llqMsg(wwwA, wire.OpRefresh, sub.ID(), 30)), dns.RcodeSuccess, wire.NoSuchLLQ)
		// Nor may it terminate it.
		checkError(t, thief.exchange(llqMsg(wwwA, wire.OpRefresh, sub.ID(), 0)), dns.RcodeSuccess, wire.NoSuchLLQ)
		// The owner's LLQ is untouched.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := sub.Refresh(ctx, time.Minute); err != nil {
			t.Errorf("owner's refresh after the attempts: %v", err)
		}
	})

	t.Run("ID for another question", func(t *testing.T) {
		r := newRaw(t, s.llq, "")
		id, _ := r.establish(wwwA, 30)
		checkError(t, r.exchange(llqMsg(question("www.example.org.", dns.TypeAAAA), wire.OpRefresh, id, 30)), dns.RcodeSuccess, wire.NoSuchLLQ)
	})

	if errs() < 6 {
		t.Errorf("errors_total{code=NO-SUCH-LLQ} grew by %v, want 6", errs())
	}
}

func TestErrBadVers(t *testing.T) {
	s := startServer(t, "", wwwRecords...)
	r := newRaw(t, s.llq, "")
	errs := counter(t, "errors_total", "code", "BAD-VERS")

	m := llqMsg(wwwA, wire.OpSetup, 0, 30)
	option(t, m).Version = 2
	reply := r.exchange(m)
	checkError(t, reply, dns.RcodeSuccess, wire.BadVers)
	if o := option(t, reply); o.Version != 1 {
		t.Errorf("BAD-VERS reply names version %d, want 1", o.Version)
	}
	if errs() != 1 {
		t.Errorf("errors_total{code=BAD-VERS} grew by %v", errs())
	}
}

func TestErrEDNSVersion(t *testing.T) {
	s := startServer(t, "", wwwRecords...)
	r := newRaw(t, s.llq, "")
	m := llqMsg(wwwA, wire.OpSetup, 0, 30)
	m.IsEdns0().SetVersion(1)
	reply := r.exchange(m)
	if reply.Rcode != dns.RcodeBadVers {
		t.Errorf("rcode %d, want BADVERS (16)", reply.Rcode)
	}
	opt := reply.IsEdns0()
	if opt == nil {
		t.Fatal("BADVERS without OPT")
	}
	if opt.Version() != 0 {
		t.Errorf("BADVERS reply has EDNS version %d, want 0", opt.Version())
	}
	if len(reply.Answer) != 0 {
		t.Errorf("answers in a BADVERS reply")
	}
}

func TestErrFormat(t *testing.T) {
	s := startServer(t, "", wwwRecords...)
	r := newRaw(t, s.llq, "")
	errs := counter(t, "errors_total", "code", "FORMAT-ERR")

	t.Run("option length 20", func(t *testing.T) {
		// miekg/dns would pack the option at its proper 18 bytes; write a
		// 20-byte one as an opaque option with the LLQ code.
		data := make([]byte, 20)
		binary.BigEndian.PutUint16(data[0:], wire.Version)
		binary.BigEndian.PutUint16(data[2:], wire.OpSetup)
		binary.BigEndian.PutUint32(data[14:], 30)
		m := new(dns.Msg)
		m.Id = dns.Id()
		m.Question = []dns.Question{wwwA}
		m.Extra = []dns.RR{&dns.OPT{
			Hdr:    dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 1232},
			Option: []dns.EDNS0{&dns.EDNS0_LOCAL{Code: dns.EDNS0LLQ, Data: data}},
		}}
		checkError(t, r.exchange(m), dns.RcodeFormatError, wire.FormatErr)
	})

	t.Run("option length 10", func(t *testing.T) {
		m := new(dns.Msg)
		m.Id = dns.Id()
		m.Question = []dns.Question{wwwA}
		m.Extra = []dns.RR{&dns.OPT{
			Hdr:    dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 1232},
			Option: []dns.EDNS0{&dns.EDNS0_LOCAL{Code: dns.EDNS0LLQ, Data: make([]byte, 10)}},
		}}
		// Too short to parse at all: a bare FORMERR header.
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		r.sendBytes(b)
		reply := r.recv(func(x *dns.Msg) bool { return x.Id != m.Id })
		if !reply.Response || reply.Rcode != dns.RcodeFormatError {
			t.Errorf("short option: %v", reply)
		}
	})

	t.Run("two questions one option", func(t *testing.T) {
		m := llqMsg(wwwA, wire.OpSetup, 0, 30)
		m.Question = append(m.Question, question("www.example.org.", dns.TypeAAAA))
		reply := r.exchange(m)
		checkError(t, reply, dns.RcodeFormatError, wire.FormatErr)
		if n := len(wire.Options(reply)); n != 1 {
			t.Errorf("%d LLQ options in the reply to 1", n)
		}
	})

	t.Run("unknown LLQ opcode", func(t *testing.T) {
		reply := r.exchange(llqMsg(wwwA, 7, 0, 30))
		checkError(t, reply, dns.RcodeSuccess, wire.FormatErr)
		if o := option(t, reply); o.Opcode != 7 {
			t.Errorf("reply opcode %d, want the request's 7 echoed", o.Opcode)
		}
	})

	t.Run("EVENT opcode in a request", func(t *testing.T) {
		checkError(t, r.exchange(llqMsg(wwwA, wire.OpEvent, 0, 30)), dns.RcodeSuccess, wire.FormatErr)
	})

	t.Run("DNS opcode UPDATE", func(t *testing.T) {
		m := llqMsg(wwwA, wire.OpSetup, 0, 30)
		m.Opcode = dns.OpcodeUpdate
		if reply := r.exchange(m); reply.Rcode != dns.RcodeNotImplemented || len(wire.Options(reply)) != 0 {
			t.Errorf("UPDATE on the LLQ port: %v", reply)
		}
	})

	t.Run("no LLQ option", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetQuestion("www.example.org.", dns.TypeA)
		if reply := r.exchange(m); reply.Rcode != dns.RcodeRefused || len(reply.Answer) != 0 {
			t.Errorf("ordinary query on the LLQ port: %v", reply)
		}
	})

	if n := errs(); n < 4 {
		t.Errorf("errors_total{code=FORMAT-ERR} grew by %v, want at least 4", n)
	}
	// Nothing above set anything up.
	c := dial(t, s.llq, client.Options{})
	subscribe(t, c, "www.example.org.", dns.TypeA)
}

// TestErrStatic: questions outside llq's zones are STATIC, whether another
// server block serves them or llq is restricted to a subzone.
func TestErrStatic(t *testing.T) {
	listener := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
	s := startServerWith(t, config{
		zones:   "sub.example.org",
		options: "listen " + listener.String() + "\n        lease 2 60",
		llq:     listener,
		blocks: `other.test:0 {
    bind 127.0.0.1
    template IN A other.test {
        answer "{{ .Name }} 60 IN A 192.0.2.99"
    }
}`,
	}, "www IN A 192.0.2.1", "x.sub IN A 192.0.2.50")
	static := counter(t, "errors_total", "code", "STATIC")

	// Both names resolve the ordinary way.
	if r := s.query("www.other.test.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("other.test not served: %v", r)
	}
	if r := s.query("www.example.org.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("example.org not served: %v", r)
	}

	for _, name := range []string{"www.example.org.", "www.other.test.", "www.example.net."} {
		t.Run(name, func(t *testing.T) {
			c := dial(t, s.llq, client.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := c.Subscribe(ctx, question(name, dns.TypeA))
			if e := llqError(t, err); e.Code != wire.Static {
				t.Errorf("subscribe to %s: %v, want STATIC", name, err)
			}
			// The refusal comes with the challenge, before any state.
			r := newRaw(t, s.llq, "")
			checkError(t, r.exchange(llqMsg(question(name, dns.TypeA), wire.OpSetup, 0, 30)), dns.RcodeSuccess, wire.Static)
		})
	}
	if static() < 6 {
		t.Errorf("errors_total{code=STATIC} grew by %v, want 6", static())
	}

	// The subzone llq does serve works.
	c := dial(t, s.llq, client.Options{})
	sub := subscribe(t, c, "x.sub.example.org.", dns.TypeA)
	if len(sub.Answers()) != 1 {
		t.Errorf("answers %v", sub.Answers())
	}
}

// TestErrUnknown: a backend that cannot answer (SERVFAIL) makes the setup
// fail with UNKNOWN-ERR rather than report an empty answer.
func TestErrUnknown(t *testing.T) {
	s := startServerWith(t, config{plugins: `template IN ANY broken.example.org {
        rcode SERVFAIL
    }`}, wwwRecords...)
	unknown := counter(t, "errors_total", "code", "UNKNOWN-ERR")
	if r := s.query("broken.example.org.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("backend does not fail: %v", r)
	}
	c := dial(t, s.llq, client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Subscribe(ctx, question("broken.example.org.", dns.TypeA))
	if e := llqError(t, err); e.Code != wire.UnknownErr {
		t.Errorf("subscribe to a failing name: %v, want UNKNOWN-ERR", err)
	}
	if unknown() != 1 {
		t.Errorf("errors_total{code=UNKNOWN-ERR} grew by %v", unknown())
	}
	// The rest of the zone is fine.
	subscribe(t, c, "www.example.org.", dns.TypeA)
}
