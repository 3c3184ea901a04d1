package grpcresolver_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	ctest "github.com/coredns/coredns/test"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	_ "github.com/llqdns/llq"              // the CoreDNS plugin, for the example's DNS server
	_ "github.com/llqdns/llq/grpcresolver" // registers the llq scheme
)

// A channel on an llq:/// target follows the zone: a server added to it
// gets calls as soon as the zone says so, with no reconnect and no wait for
// a re-resolution. In a pod the target is just
// "llq:///my-svc.my-ns.svc.cluster.local:8080"; here the DNS server is a
// CoreDNS with llq on loopback, named in the target's authority.
func Example() {
	port := serveHealth("127.0.0.1", 0)
	zone, dnsAddr := startDNS("svc IN A 127.0.0.1")

	conn, err := grpc.NewClient(fmt.Sprintf("llq://%s/svc.example.org:%d", dnsAddr, port),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	check := func() string {
		var p peer.Peer
		r, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true), grpc.Peer(&p))
		if err != nil {
			log.Fatal(err)
		}
		host, _, _ := net.SplitHostPort(p.Addr.String())
		return host + " " + r.GetStatus().String()
	}
	fmt.Println(check())

	// A second server, and its address in the zone.
	serveHealth("127.0.0.2", port)
	zone("svc IN A 127.0.0.1", "svc IN A 127.0.0.2")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if s := check(); s != "127.0.0.1 SERVING" {
			fmt.Println(s)
			break
		}
	}
	// Output:
	// 127.0.0.1 SERVING
	// 127.0.0.2 SERVING
}

// serveHealth starts a gRPC server with the health service on ip:port
// (port 0: any) and returns its port.
func serveHealth(ip string, port int) int {
	l, err := net.Listen("tcp4", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(l)
	return l.Addr().(*net.TCPAddr).Port
}

// startDNS starts CoreDNS with llq serving example.org from a zone file
// holding records, and returns a function that rewrites the zone's records
// and the address of its DNS port.
func startDNS(records ...string) (setRecords func(...string), addr string) {
	dir, err := os.MkdirTemp("", "llq-example")
	if err != nil {
		log.Fatal(err)
	}
	file := filepath.Join(dir, "db.example.org")
	serial := 0
	setRecords = func(records ...string) {
		serial++
		zone := fmt.Sprintf("$ORIGIN example.org.\n@ 3600 IN SOA ns1 hostmaster %d 7200 3600 1209600 3600\n  3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\n", serial)
		for _, r := range records {
			zone += r + "\n"
		}
		if err := os.WriteFile(file+".tmp", []byte(zone), 0o644); err != nil {
			log.Fatal(err)
		}
		if err := os.Rename(file+".tmp", file); err != nil {
			log.Fatal(err)
		}
	}
	setRecords(records...)

	// llq goes before cache, as in cmd/coredns.
	d := slices.Clone(dnsserver.Directives)
	if !slices.Contains(d, "llq") {
		d = slices.Insert(d, slices.Index(d, "cache"), "llq")
		if err := dnsserver.SetDirectives(d); err != nil {
			log.Fatal(err)
		}
	}
	_, udp, _, err := ctest.CoreDNSServerAndPorts(fmt.Sprintf(`example.org:0 {
    bind 127.0.0.1
    llq {
        listen 127.0.0.1:0
    }
    file %s {
        reload 100ms
    }
}`, file))
	if err != nil {
		log.Fatal(err)
	}
	_, p, _ := net.SplitHostPort(udp)
	return setRecords, net.JoinHostPort("127.0.0.1", p)
}
