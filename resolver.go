package llq

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
)

// backend is one server block's way to answer a question the way an ordinary
// query would be answered, minus the cache: the handler that follows cache in
// the block's plugin chain.
type backend struct {
	owner   *LLQ // the plugin instance that registered it
	zones   []string
	handler plugin.Handler
	// started, when set, is closed once every plugin of the owner's CoreDNS
	// instance has started. The plugins below llq start after it
	// (kubernetes learns its addresses then), and llq must not ask them
	// before. A reload registers the new backend at once, so that nothing
	// is lost between the old instance's end and the new one's start:
	// questions for it wait.
	started chan struct{}
	// viaServer is set when handler is the CoreDNS server (front.go): a
	// question is then answered by a block only if it passed an llq.
	viaServer bool
}

// lookup resolves q through b, as if client had asked.
func (b *backend) lookup(q dns.Question, client netip.AddrPort) ([]dns.RR, bool) {
	res := b.lookupFull(q, client)
	return res.answers, res.ok
}

// lookupFull is lookup with everything it learnt.
func (b *backend) lookupFull(q dns.Question, client netip.AddrPort) resolution {
	if b.started != nil {
		select {
		case <-b.started:
		case <-time.After(resolveTimeout):
			return resolution{rcode: -1, unready: true}
		}
	}
	return resolveFull(b.handler, q, client)
}

// resolution is what one re-resolution found.
type resolution struct {
	answers []dns.RR
	ok      bool // a usable answer: NOERROR or NXDOMAIN, complete
	rcode   int  // the answer's rcode, -1 without one
	reached *LLQ // the llq the question passed through, if any: its block answered
	// unready: the plugins below llq had not started within
	// resolveTimeout, so the question was never asked.
	unready bool
}

const resolveTimeout = 5 * time.Second

// resolveBufSize is the EDNS0 size a re-resolution advertises: a plugin
// that forwards passes it upstream, and an answer cut to 512 bytes would
// look like records removed.
const resolveBufSize = dns.DefaultMsgSize

// resolve asks h for q as if client had asked. ok is false when the backend
// gave no usable answer (SERVFAIL, REFUSED, a timeout, a truncated answer
// even over TCP...): a failure is no news, so the previous answer set
// stands, and an outage or a cut answer is never reported as records
// removed. A truncated answer is asked again over TCP, which forward passes
// on to its upstream.
func resolve(h plugin.Handler, q dns.Question, client netip.AddrPort) (answers []dns.RR, ok bool) {
	res := resolveFull(h, q, client)
	return res.answers, res.ok
}

// resolveFull is resolve with everything it learnt.
func resolveFull(h plugin.Handler, q dns.Question, client netip.AddrPort) resolution {
	res := resolution{rcode: -1}
	if h == nil {
		return res
	}
	r, reached := ask(h, q, client, false)
	if r != nil && r.Truncated {
		r, reached = ask(h, q, client, true)
	}
	res.reached = reached
	if r == nil {
		return res
	}
	res.rcode = r.Rcode
	if r.Truncated {
		return res
	}
	switch r.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		res.answers, res.ok = r.Answer, true
	}
	return res
}

// ask sends q through h once, over UDP or TCP as far as the plugins can
// tell, and returns what they wrote, or nil, and the llq it passed.
func ask(h plugin.Handler, q dns.Question, client netip.AddrPort, tcp bool) (*dns.Msg, *LLQ) {
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.RecursionDesired = true
	m.Question = []dns.Question{q}
	m.SetEdns0(resolveBufSize, false)
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	rs := &resolving{}
	ctx = context.WithValue(ctx, resolvingKey{}, rs)
	w := &captureWriter{remote: client, tcp: tcp}
	if _, err := h.ServeDNS(ctx, w, m); err != nil {
		return nil, rs.reached
	}
	return w.msg, rs.reached
}

// captureWriter is the dns.ResponseWriter of a re-resolution: it keeps the
// answer and presents the subscriber's address, which acl, view and autopath
// look at, as a UDP or a TCP peer.
type captureWriter struct {
	remote netip.AddrPort
	tcp    bool
	msg    *dns.Msg
}

func (w *captureWriter) LocalAddr() net.Addr {
	if w.tcp {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (w *captureWriter) RemoteAddr() net.Addr {
	if w.tcp {
		return net.TCPAddrFromAddrPort(w.remote)
	}
	return net.UDPAddrFromAddrPort(w.remote)
}
func (w *captureWriter) WriteMsg(m *dns.Msg) error { w.msg = m; return nil }
func (w *captureWriter) Write(b []byte) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	w.msg = m
	return len(b), nil
}
func (w *captureWriter) Close() error        { return nil }
func (w *captureWriter) TsigStatus() error   { return nil }
func (w *captureWriter) TsigTimersOnly(bool) {}
func (w *captureWriter) Hijack()             {}
