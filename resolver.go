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
}

// lookup resolves q through b, as if client had asked.
func (b *backend) lookup(q dns.Question, client netip.AddrPort) ([]dns.RR, bool) {
	if b.started != nil {
		select {
		case <-b.started:
		case <-time.After(resolveTimeout):
			return nil, false
		}
	}
	return resolve(b.handler, q, client)
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
	if h == nil {
		return nil, false
	}
	r := ask(h, q, client, false)
	if r != nil && r.Truncated {
		r = ask(h, q, client, true)
	}
	if r == nil || r.Truncated {
		return nil, false
	}
	switch r.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return r.Answer, true
	}
	return nil, false
}

// ask sends q through h once, over UDP or TCP as far as the plugins can
// tell, and returns what they wrote, or nil.
func ask(h plugin.Handler, q dns.Question, client netip.AddrPort, tcp bool) *dns.Msg {
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.RecursionDesired = true
	m.Question = []dns.Question{q}
	m.SetEdns0(resolveBufSize, false)
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	w := &captureWriter{remote: client, tcp: tcp}
	if _, err := h.ServeDNS(ctx, w, m); err != nil {
		return nil
	}
	return w.msg
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
