// Command push-baseline is the bare Go TLS server that `llq bench push`
// measures llq's DNS Push server against: the same certificate and the
// same TLS configuration as llq's listener (CoreDNS's tls plugin helper,
// then TLS 1.2 at least), one goroutine per connection blocked in Read, and
// nothing else. It is the floor for what holding a TLS session costs.
//
// A connection that sends the frame "LLQ-FANOUT" SIZE (two-byte length
// prefix, SIZE a big-endian uint16) has it write one frame of SIZE bytes,
// shaped like a DSO PUSH (a DNS header with opcode 6, a PUSH TLV), to every
// connection, in a random order, from GOMAXPROCS writers: the floor for
// pushing one change to every session.
//
//	go run ./bench/push-baseline -listen 127.0.0.1:8854 -cert cert.pem -key key.pem
package main

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"

	ctls "github.com/coredns/coredns/plugin/pkg/tls"
)

// fanoutMagic starts the control frame; the bench sends it.
const fanoutMagic = "LLQ-FANOUT"

type server struct {
	mu    sync.Mutex
	conns map[*tls.Conn]struct{}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8854", "TCP address to listen on")
	cert := flag.String("cert", "", "certificate chain (PEM)")
	key := flag.String("key", "", "private key (PEM)")
	flag.Parse()
	// What llq's loadTLS does.
	conf, err := ctls.NewTLSConfigFromArgs(*cert, *key)
	if err != nil {
		log.Fatal(err)
	}
	conf.ClientAuth = tls.NoClientCert
	if conf.MinVersion < tls.VersionTLS12 {
		conf.MinVersion = tls.VersionTLS12
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "push-baseline listening on %s\n", ln.Addr())
	s := &server{conns: make(map[*tls.Conn]struct{})}
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go s.serve(tls.Server(c, conf))
	}
}

func (s *server) serve(c *tls.Conn) {
	defer c.Close()
	if err := c.Handshake(); err != nil {
		return
	}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	var hdr [2]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if n == len(fanoutMagic)+2 && string(buf[:len(fanoutMagic)]) == fanoutMagic {
			s.fanout(int(binary.BigEndian.Uint16(buf[len(fanoutMagic):])))
		}
	}
}

// fanout writes one PUSH-shaped frame of size bytes to every connection.
func (s *server) fanout(size int) {
	size = max(size, 16)
	frame := make([]byte, 2+size)
	binary.BigEndian.PutUint16(frame, uint16(size))
	frame[4] = 6 << 3                                       // opcode DSO, ID 0
	binary.BigEndian.PutUint16(frame[14:], 0x41)            // PUSH TLV
	binary.BigEndian.PutUint16(frame[16:], uint16(size-16)) // its length
	s.mu.Lock()
	conns := make([]*tls.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	rand.Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	w := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for k := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := k; i < len(conns); i += w {
				conns[i].Write(frame)
			}
		}()
	}
	wg.Wait()
}
