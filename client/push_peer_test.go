package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/llqdns/llq/internal/testcert"
	"github.com/miekg/dns"
)

// The DNS Push tests script the server by hand on a real TLS connection.
// The peer reads and writes DSO messages byte by byte as RFC 8490 section
// 5.4 lays them out, with miekg/dns for the records inside PUSH: it does not
// use package dso, so the client is checked against the RFC, not against
// the same code that encodes its own messages.

type testCA = testcert.CA

func newTestCA(t *testing.T) *testCA { return testcert.New(t, "push.example.org") }

// dsoMsg is a DSO message as the peer reads it.
type dsoMsg struct {
	raw      []byte
	id       uint16
	response bool
	opcode   int
	rcode    int
	counts   [4]uint16
	tlvs     []peerTLV
}

type peerTLV struct {
	typ  uint16
	data []byte
}

// pushPeer is one accepted TLS connection of a scripted DNS Push server.
type pushPeer struct {
	t    *testing.T
	ln   net.Listener
	addr netip.AddrPort
	conn net.Conn
	in   chan dsoMsg // messages from the client on conn; closed at EOF
}

func newPushPeer(t *testing.T, ca *testCA) *pushPeer {
	t.Helper()
	ln, err := tls.Listen("tcp4", "127.0.0.1:0", ca.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &pushPeer{t: t, ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort()}
}

// accept takes the client's connection and starts reading it.
func (p *pushPeer) accept() {
	p.t.Helper()
	conn, err := p.ln.Accept()
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { conn.Close() })
	p.conn = conn
	r, in := bufio.NewReader(conn), make(chan dsoMsg, 100)
	p.in = in
	go func() {
		defer close(in)
		for {
			var l [2]byte
			if _, err := io.ReadFull(r, l[:]); err != nil {
				return
			}
			b := make([]byte, binary.BigEndian.Uint16(l[:]))
			if _, err := io.ReadFull(r, b); err != nil {
				return
			}
			in <- decodeDSO(p.t, b)
		}
	}()
}

// decodeDSO splits a message into header fields and TLVs (RFC 8490
// section 5.4), failing the test on anything malformed.
func decodeDSO(t *testing.T, b []byte) dsoMsg {
	if len(b) < 12 {
		t.Errorf("peer: %d-byte message", len(b))
		return dsoMsg{raw: b}
	}
	m := dsoMsg{raw: b, id: binary.BigEndian.Uint16(b), response: b[2]&0x80 != 0, opcode: int(b[2]>>3) & 0xF, rcode: int(b[3] & 0xF)}
	for i := range m.counts {
		m.counts[i] = binary.BigEndian.Uint16(b[4+2*i:])
	}
	for rest := b[12:]; len(rest) > 0; {
		if len(rest) < 4 || int(binary.BigEndian.Uint16(rest[2:]))+4 > len(rest) {
			t.Errorf("peer: TLV overruns message % x", b)
			return m
		}
		n := int(binary.BigEndian.Uint16(rest[2:]))
		m.tlvs = append(m.tlvs, peerTLV{binary.BigEndian.Uint16(rest), rest[4 : 4+n]})
		rest = rest[4+n:]
	}
	return m
}

func (p *pushPeer) recv() dsoMsg {
	p.t.Helper()
	select {
	case m, ok := <-p.in:
		if !ok {
			p.t.Fatal("peer: connection closed by the client")
		}
		if m.opcode != 6 || m.counts != [4]uint16{} {
			p.t.Errorf("peer: opcode %d counts %v, want a DSO message", m.opcode, m.counts)
		}
		return m
	case <-time.After(waitFor):
		p.t.Fatal("peer: nothing received")
	}
	return dsoMsg{}
}

// recvEOF waits for the client to close the connection.
func (p *pushPeer) recvEOF() {
	p.t.Helper()
	select {
	case m, ok := <-p.in:
		if ok {
			p.t.Fatalf("peer: got % x, want the connection closed", m.raw)
		}
	case <-time.After(waitFor):
		p.t.Fatal("peer: connection not closed")
	}
}

// send writes a DSO message: the header, then the TLVs, with its length
// prefix.
func (p *pushPeer) send(id uint16, response bool, rcode int, tlvs ...[]byte) {
	p.t.Helper()
	b := []byte{0, 0, byte(id >> 8), byte(id), 6 << 3, byte(rcode), 0, 0, 0, 0, 0, 0, 0, 0}
	if response {
		b[4] |= 0x80
	}
	for _, t := range tlvs {
		b = append(b, t...)
	}
	binary.BigEndian.PutUint16(b, uint16(len(b)-2))
	if _, err := p.conn.Write(b); err != nil {
		p.t.Fatal(err)
	}
}

func tlv(typ uint16, data []byte) []byte {
	return append([]byte{byte(typ >> 8), byte(typ), byte(len(data) >> 8), byte(len(data))}, data...)
}

func u32s(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

// pushTLV packs records into a PUSH TLV with miekg/dns, names compressed
// against each other with offsets from the start of a message whose TLV
// follows the 12-byte header directly.
func pushTLV(t *testing.T, rrs ...dns.RR) []byte {
	t.Helper()
	msg := make([]byte, 16+4096)
	comp := map[string]int{}
	off := 16
	for _, rr := range rrs {
		var err error
		if off, err = dns.PackRR(rr, msg, off, comp, true); err != nil {
			t.Fatal(err)
		}
	}
	return tlv(0x41, msg[16:off])
}

// establish completes the client's session: it answers the first message,
// a Keepalive request, with the given values.
func (p *pushPeer) establish(inactivity, interval uint32) dsoMsg {
	p.t.Helper()
	p.accept()
	req := p.recv()
	if req.response || req.id == 0 || len(req.tlvs) < 1 || req.tlvs[0].typ != 1 || len(req.tlvs[0].data) != 8 {
		p.t.Fatalf("first message is not a Keepalive request: %+v", req)
	}
	p.send(req.id, true, 0, tlv(1, u32s(inactivity, interval)))
	return req
}

// dialPush connects a client to the peer and establishes the session.
func dialPush(t *testing.T, p *pushPeer, ca *testCA, opts PushOptions) *PushClient {
	t.Helper()
	if opts.TLS == nil && opts.CAFile == "" {
		opts.TLS = ca.ClientConfig()
	}
	type res struct {
		c   *PushClient
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := DialPush(context.Background(), p.addr, opts)
		ch <- res{c, err}
	}()
	p.establish(15000, 3600000)
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	return r.c
}

// subscribe runs Subscribe against the peer, which accepts it, and returns
// the subscription and the SUBSCRIBE's message ID.
func subscribe(t *testing.T, p *pushPeer, c *PushClient, q dns.Question, initial ...dns.RR) (*PushSubscription, uint16) {
	t.Helper()
	type res struct {
		s   *PushSubscription
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := c.Subscribe(context.Background(), q)
		ch <- res{s, err}
	}()
	req := p.recv()
	wantSubscribe(t, req, q)
	p.send(req.id, true, 0)
	if len(initial) > 0 {
		p.send(0, false, 0, pushTLV(t, initial...))
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.s, req.id
}

// wantSubscribe checks a SUBSCRIBE request for q: NAME uncompressed, TYPE,
// CLASS (RFC 8765 section 6.2).
func wantSubscribe(t *testing.T, m dsoMsg, q dns.Question) {
	t.Helper()
	name := make([]byte, 256)
	n, err := dns.PackDomainName(q.Name, name, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	want := append(name[:n], byte(q.Qtype>>8), byte(q.Qtype), byte(q.Qclass>>8), byte(q.Qclass))
	if m.response || m.id == 0 || len(m.tlvs) != 1 || m.tlvs[0].typ != 0x40 || string(m.tlvs[0].data) != string(want) {
		t.Fatalf("not a SUBSCRIBE for %v: id %d tlvs %+v", q, m.id, m.tlvs)
	}
}

func nextPush(t *testing.T, events <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("events closed")
		}
		return ev
	case <-time.After(waitFor):
		t.Fatal("no event")
	}
	return Event{}
}

func waitDone(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatal("not ended")
	}
}

func tlsFor(ca *testCA) *tls.Config { return ca.ClientConfig() }
