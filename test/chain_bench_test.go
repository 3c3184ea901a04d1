package test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	ctest "github.com/coredns/coredns/test"
	"github.com/miekg/dns"
)

// BenchmarkChain measures what one ordinary query costs a real CoreDNS
// server, built from a Corefile with the typical chain errors, prometheus,
// [llq | any], cache, file, with llq, without it, and with CoreDNS's own
// "any" plugin in llq's slot as the control for a plugin that does nothing.
//
// Each op is what the server does for a UDP query apart from the socket
// calls: unpack the wire message, serve it on a fresh goroutine (as
// miekg/dns does, so that stack growth is counted), and pack the answer.
// Leaving the two syscalls per query out makes llq's share look larger
// than it is on a real socket. Compare the variants with benchstat; see
// BENCHMARKS.md.
func BenchmarkChain(b *testing.B) {
	dir := b.TempDir()
	zone := filepath.Join(dir, "db.example.org")
	const names = 1000
	var z strings.Builder
	z.WriteString("$ORIGIN example.org.\n$TTL 3600\n@ IN SOA ns1 hostmaster 1 7200 3600 1209600 3600\n  IN NS ns1\nns1 IN A 127.0.0.1\n")
	for i := range names {
		fmt.Fprintf(&z, "n%d IN A 192.0.2.%d\n", i, i%250+1)
	}
	if err := os.WriteFile(zone, []byte(z.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	queries := make([][]byte, names)
	for i := range queries {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("n%d.example.org.", i), dns.TypeA)
		m.SetEdns0(1232, false)
		buf, err := m.Pack()
		if err != nil {
			b.Fatal(err)
		}
		queries[i] = buf
	}

	for _, v := range []struct{ name, plugin string }{
		{"without", ""},
		{"any", "    any\n"},
		{"llq", "    llq {\n        listen 127.0.0.1:0\n    }\n"},
	} {
		corefile := "example.org:0 {\n    bind 127.0.0.1\n    errors\n    prometheus 127.0.0.1:0\n" +
			v.plugin + "    cache 30\n    file " + zone + "\n}\n"
		b.Run(v.name, func(b *testing.B) {
			inst, err := ctest.CoreDNSServer(corefile)
			if err != nil {
				b.Fatalf("starting CoreDNS: %v", err)
			}
			defer inst.Stop()
			srv := dnsServer(b, inst.Servers())
			ctx := context.WithValue(context.Background(), dnsserver.Key{}, srv)
			ctx = context.WithValue(ctx, dnsserver.LoopKey{}, 0)
			w := &packingWriter{}
			// Warm the cache, as a busy server's is.
			for _, q := range queries {
				serveWire(ctx, srv, w, q)
			}
			if w.last == 0 {
				b.Fatal("no answer packed")
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				serveWire(ctx, srv, w, queries[i%names])
			}
		})
	}
}

func dnsServer(b *testing.B, servers []caddy.ServerListener) *dnsserver.Server {
	b.Helper()
	for _, s := range servers {
		// caddy keeps the server unexported; a test may look.
		f := reflect.ValueOf(&s).Elem().FieldByName("server")
		x := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface()
		if srv, ok := x.(*dnsserver.Server); ok {
			return srv
		}
	}
	b.Fatalf("no *dnsserver.Server among %T", servers)
	return nil
}

// serveWire does for one query what miekg/dns's UDP server does, minus the
// socket: unpack, then serve on a goroutine of its own.
func serveWire(ctx context.Context, srv *dnsserver.Server, w *packingWriter, wire []byte) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := new(dns.Msg)
		if err := r.Unpack(wire); err != nil {
			panic(err)
		}
		srv.ServeDNS(ctx, w, r)
	}()
	wg.Wait()
}

// packingWriter packs every answer, as the UDP writer does before its
// write call, and keeps only the size.
type packingWriter struct {
	buf  [4096]byte
	last int
}

var (
	benchLocal  = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	benchRemote = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
)

func (w *packingWriter) LocalAddr() net.Addr  { return benchLocal }
func (w *packingWriter) RemoteAddr() net.Addr { return benchRemote }
func (w *packingWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.PackBuffer(w.buf[:])
	w.last = len(b)
	return err
}
func (w *packingWriter) Write(b []byte) (int, error) { w.last = len(b); return len(b), nil }
func (w *packingWriter) Close() error                { return nil }
func (w *packingWriter) TsigStatus() error           { return nil }
func (w *packingWriter) TsigTimersOnly(bool)         {}
func (w *packingWriter) Hijack()                     {}
