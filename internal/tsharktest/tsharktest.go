// Package tsharktest records loopback traffic with dumpcap and decodes it
// with tshark, so that tests can have Wireshark's dissectors, decoders llq
// did not write, check the bytes of a real session. TLS is decrypted with
// the session keys Go's crypto/tls logs (tls.Config.KeyLogWriter).
//
// Tests skip, saying why, when dumpcap or tshark is missing (.ci/run
// installs Debian's tshark) or when the capture cannot start (dumpcap needs
// capture privileges).
package tsharktest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llqdns/llq/internal/pcaptest"
)

// Capture is a running dumpcap on the loopback interface.
type Capture struct {
	t      testing.TB
	cmd    *exec.Cmd
	file   string
	stderr bytes.Buffer
	done   chan error // dumpcap exited and its output is all in file
	stop   uint16     // closed port knocked on by Stop
	ports  chan uint16
}

// Start captures TCP traffic to and from port on the loopback interface.
// It returns once the capture provably runs: it knocks on a closed port,
// which the capture filter takes too, until a packet comes out of dumpcap.
// dumpcap writes to a pipe here, which it flushes after every packet, and
// the test copies that into the capture file.
func Start(t testing.TB, port uint16) *Capture {
	t.Helper()
	for _, tool := range []string{"dumpcap", "tshark"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian package tshark; .ci/run installs it): bytes not checked by Wireshark", tool)
		}
	}
	start, stop := closedPort(t), closedPort(t)
	c := &Capture{t: t, file: filepath.Join(t.TempDir(), "capture.pcapng"), done: make(chan error, 1), stop: stop, ports: make(chan uint16, 1024)} // knocks only
	f, err := os.Create(c.file)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command("dumpcap", "-q", "-i", "lo", "-f",
		fmt.Sprintf("tcp port %d or tcp port %d or tcp port %d", port, start, stop), "-w", "-")
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.cmd.Stderr = &c.stderr
	if err := c.cmd.Start(); err != nil {
		f.Close()
		t.Skipf("dumpcap: %v", err)
	}
	t.Cleanup(func() { c.cmd.Process.Kill() })
	go func() {
		err := copyBlocks(f, out, func(p uint16) {
			if p == start || p == stop {
				select {
				case c.ports <- p:
				default:
				}
			}
		})
		f.Close()
		if werr := c.cmd.Wait(); err == nil {
			err = werr
		}
		c.done <- err
	}()
	if !c.knock(start) {
		t.Skipf("dumpcap saw nothing on lo: %s", c.stderr.String())
	}
	return c
}

// knock connects to the closed port until dumpcap hands over a packet to
// it. Packets on lo come out of the capture in the order they were sent,
// so everything sent before the knock has come out too.
func (c *Capture) knock(port uint16) bool {
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case p := <-c.ports:
			if p == port {
				return true
			}
		case <-c.done:
			return false
		case <-deadline:
			return false
		case <-tick.C:
			if conn, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
				conn.Close()
			}
		}
	}
}

// copyBlocks copies a pcapng stream block by block and calls packet with
// the TCP destination port of every IPv4 packet on Ethernet (Linux's lo).
func copyBlocks(w io.Writer, r io.Reader, packet func(dstPort uint16)) error {
	order := binary.ByteOrder(binary.LittleEndian)
	for first := true; ; first = false {
		var hdr [12]byte
		n := 8
		if first { // Section Header Block: its byte-order magic follows the length
			n = 12
		}
		if _, err := io.ReadFull(r, hdr[:n]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if first && binary.BigEndian.Uint32(hdr[8:]) == 0x1A2B3C4D {
			order = binary.BigEndian
		}
		size := int(order.Uint32(hdr[4:8]))
		if size < n {
			return fmt.Errorf("pcapng block of length %d", size)
		}
		block := make([]byte, size)
		copy(block, hdr[:n])
		if _, err := io.ReadFull(r, block[n:]); err != nil {
			return err
		}
		if _, err := w.Write(block); err != nil {
			return err
		}
		if order.Uint32(block) == 6 && len(block) >= 28 { // Enhanced Packet Block
			if p, ok := tcpDstPort(block[28:min(len(block), 28+int(order.Uint32(block[20:])))]); ok {
				packet(p)
			}
		}
	}
}

// tcpDstPort reads the TCP destination port of an Ethernet frame.
func tcpDstPort(frame []byte) (uint16, bool) {
	if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		return 0, false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0xF) * 4
	if ip[9] != 6 || len(ip) < ihl+4 {
		return 0, false
	}
	return binary.BigEndian.Uint16(ip[ihl+2:]), true
}

// closedPort returns a loopback TCP port nothing listens on.
func closedPort(t testing.TB) uint16 {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).AddrPort().Port()
	ln.Close()
	return port
}

// Stop ends the capture once everything sent before it has come out of
// dumpcap, and returns the file.
func (c *Capture) Stop() string {
	c.t.Helper()
	ok := c.knock(c.stop)
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
		c.t.Fatalf("dumpcap did not stop: %s", c.stderr.String())
	}
	if !ok {
		c.t.Fatalf("dumpcap stopped delivering packets: %s", c.stderr.String())
	}
	return c.file
}

// KeyLog returns a file for tls.Config.KeyLogWriter and its path for
// Fields.
func KeyLog(t testing.TB) (*os.File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, path
}

// Fields runs tshark over file with the extra arguments args (say, a
// display filter) and returns, for each packet shown, the values of fields,
// each field's occurrences joined by ",". With keylog set, TLS on port is
// decrypted and its content decoded as DNS over TLS (RFC 7858), as
// Wireshark does on port 853.
func Fields(t testing.TB, file, keylog string, port uint16, args []string, fields ...string) [][]string {
	t.Helper()
	cmd := []string{"-r", file, "-n", "-2", "-d", fmt.Sprintf("tcp.port==%d,tls", port), "-d", fmt.Sprintf("tls.port==%d,dns", port)}
	if keylog != "" {
		cmd = append(cmd, "-o", "tls.keylog_file:"+keylog)
	}
	return Decode(t, append(cmd, args...), fields...)
}

// Frames writes frames (DNS over TCP messages, each with its length prefix)
// as one TCP stream into a capture file and returns, for each DNS message
// tshark finds in it, the values of fields, as Decode does.
func Frames(t testing.TB, frames [][]byte, fields ...string) [][]string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "frames.pcap")
	if err := os.WriteFile(file, pcaptest.TCP(frames), 0o644); err != nil {
		t.Fatal(err)
	}
	return Decode(t, []string{"-r", file, "-n", "-Y", "dns"}, fields...)
}

// Decode runs tshark with args and returns, for each packet shown, the
// values of fields, each field's occurrences joined by ",".
func Decode(t testing.TB, args []string, fields ...string) [][]string {
	t.Helper()
	cmd := append(slices.Clip(args), "-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,")
	for _, f := range fields {
		cmd = append(cmd, "-e", f)
	}
	out, err := exec.Command("tshark", cmd...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("tshark %s: %v\n%s", strings.Join(cmd, " "), err, stderr)
	}
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if line != "" {
			rows = append(rows, strings.Split(line, "|"))
		}
	}
	return rows
}
