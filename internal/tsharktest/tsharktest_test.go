package tsharktest

import (
	"net"
	"testing"
)

// TestCaptureSeesTraffic sends bytes over a loopback TCP connection while
// capturing and finds them in the capture.
func TestCaptureSeesTraffic(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).AddrPort().Port()
	c := Start(t, port)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			buf := make([]byte, 5)
			conn.Read(buf)
			conn.Close()
		}
	}()
	conn, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("hello"))
	conn.Read(make([]byte, 1)) // until the server closes
	conn.Close()
	file := c.Stop()
	rows := Fields(t, file, "", 1, []string{"-Y", "tcp.payload"}, "tcp.payload")
	if len(rows) != 1 || rows[0][0] != "68656c6c6f" {
		t.Errorf("payloads %q, want hello", rows)
	}
}
