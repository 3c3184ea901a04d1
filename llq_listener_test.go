package llq

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// The listener's own sockets: UDP datagrams and length-framed TCP.

func TestListenerUDP(t *testing.T) {
	env := newTestEnv(t, nil)
	c := newUDPClient(t)
	srv := env.e.Addr().(*net.UDPAddr)
	send := func(m *dns.Msg) *dns.Msg {
		t.Helper()
		if _, err := c.conn.WriteToUDP(packMsg(t, m), srv); err != nil {
			t.Fatal(err)
		}
		r, _ := c.read(t, wait)
		return r
	}
	ch := only(t, send(llqMsg(11, 1232, []dns.Question{qWWW}, setupOpt(0, 3600))))
	wantOpt(t, ch, wire.OpSetup, wire.NoError)
	ack := send(llqMsg(12, 1232, []dns.Question{qWWW}, setupOpt(ch.Id, 3600)))
	sameRRs(t, ack.Answer, wwwRecords...)

	// Events come from the listener's address, and acks sent back there
	// are matched.
	acked := track(t, env.e.metrics.acks)
	swapZone(t, env.zone, eventZone)
	env.changed()
	buf := make([]byte, 2048)
	c.conn.SetReadDeadline(time.Now().Add(wait))
	n, from, err := c.conn.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	if from.Port != srv.Port {
		t.Fatalf("event from port %d, listener is on %d", from.Port, srv.Port)
	}
	ev := unpackMsg(t, buf[:n])
	wantEvent(t, ev, qWWW, ch.Id)
	c.conn.WriteToUDP(ackFor(t, ev), srv)
	eventually(t, "the ack to be matched", func() bool { return acked.moved(t) == 1 }, wait)
}

func TestListenerTCP(t *testing.T) {
	env := newTestEnv(t, nil)
	conn, err := net.Dial("tcp", env.e.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(wait))
	exchange := func(raw []byte) *dns.Msg {
		t.Helper()
		out := binary.BigEndian.AppendUint16(nil, uint16(len(raw)))
		if _, err := conn.Write(append(out, raw...)); err != nil {
			t.Fatal(err)
		}
		var hdr [2]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatal(err)
		}
		return unpackMsg(t, buf)
	}
	// Garbage and an empty frame get no answer and do not end the
	// connection; the next message still does.
	conn.Write([]byte{0, 0})
	conn.Write([]byte{0, 3, 1, 2, 3})
	r := exchange(packMsg(t, llqMsg(21, 1232, []dns.Question{qWWW}, setupOpt(0, 3600))))
	if r.Id != 21 {
		t.Fatalf("reply to message %d", r.Id)
	}
	o := only(t, r)
	wantOpt(t, o, wire.OpSetup, wire.NoError)
	sameRRs(t, r.Answer, wwwRecords...)
	// Several messages on one connection.
	r = exchange(packMsg(t, llqMsg(22, 1232, []dns.Question{qWWW}, refreshOpt(o.Id, 0))))
	if got := only(t, r); got.Opcode != wire.OpRefresh || got.Error != wire.NoError || r.Id != 22 {
		t.Fatalf("terminate over TCP: %v", r)
	}
	if st := env.e.Stats(); st.LLQs != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// close ends every reader, including open TCP connections, promptly.
func TestListenerCloseWithOpenConnection(t *testing.T) {
	cfg := defaultConfig()
	cfg.listen = "127.0.0.1:0"
	e, err := newEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", e.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Make sure the connection is being served before closing.
	conn.Write([]byte{0, 0})
	eventually(t, "the connection to be accepted", func() bool {
		e.llq.ln.mu.Lock()
		defer e.llq.ln.mu.Unlock()
		return len(e.llq.ln.open) == 1
	}, wait)
	done := make(chan struct{})
	go func() { e.close(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatalf("close hangs on an open TCP connection")
	}
	conn.SetReadDeadline(time.Now().Add(wait))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatalf("connection still open after close")
	}
}
