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
}

const resolveTimeout = 5 * time.Second

// resolve asks h for q as if client had asked. ok is false when the backend
// could not answer (SERVFAIL, REFUSED, a timeout...): then the previous
// answer set stands, so that a backend outage is not reported as every
// record being removed.
func resolve(h plugin.Handler, q dns.Question, client netip.AddrPort) (answers []dns.RR, ok bool) {
	if h == nil {
		return nil, false
	}
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.RecursionDesired = true
	m.Question = []dns.Question{q}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	w := &captureWriter{remote: client}
	if _, err := h.ServeDNS(ctx, w, m); err != nil || w.msg == nil {
		return nil, false
	}
	switch w.msg.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return w.msg.Answer, true
	}
	return nil, false
}

// captureWriter is the dns.ResponseWriter of a re-resolution: it keeps the
// answer and presents the subscriber's address, which acl, view and autopath
// look at.
type captureWriter struct {
	remote netip.AddrPort
	msg    *dns.Msg
}

func (w *captureWriter) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (w *captureWriter) RemoteAddr() net.Addr      { return net.UDPAddrFromAddrPort(w.remote) }
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
