// Command trigger-latency measures how long a backend change takes to reach
// an LLQ subscriber: from the change being committed (an etcd Put, a hosts
// or zone file renamed into place) to the event packet arriving at the
// client's socket. It runs everything in one process on loopback: an
// embedded etcd server, CoreDNS with llq (poll off) serving one zone from
// etcd, one from a hosts file and one from a zone file, and an LLQ client
// subscribed to one name in each.
//
// The commit happens between the call that makes the change (etcd Put,
// rename) being issued and it returning; both are reported, as NAME/issued
// and NAME/returned. An etcd watch event can overtake the Put's own reply,
// so /returned can be negative.
//
// Changes are made one at a time: the next one starts after the previous
// event arrived and a random pause (up to -pause, by default the reload
// interval), so that file and hosts changes land at uniformly random points
// of those plugins' reload ticks.
//
// With -proto push, the subscriber is a DNS Push client (client.DialPush)
// on llq's TLS listener instead, and the latency ends when the PUSH
// message reaches it (its OnMessage hook, before the client acts on it).
//
//	go run ./bench/trigger-latency -n 200
//	go run ./bench/trigger-latency -n 200 -proto push
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/core/plugin" // every in-tree plugin
	ctest "github.com/coredns/coredns/test"
	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	_ "github.com/llqdns/llq"
)

func init() {
	d := slices.Clone(dnsserver.Directives)
	d = slices.Insert(d, slices.Index(d, "cache"), "llq")
	if err := dnsserver.SetDirectives(d); err != nil {
		panic(err)
	}
}

func main() {
	n := flag.Int("n", 200, "changes per trigger")
	which := flag.String("triggers", "etcd,hosts,file", "triggers to measure")
	reload := flag.Duration("reload", 100*time.Millisecond, "reload interval of the hosts and file plugins")
	pause := flag.Duration("pause", 100*time.Millisecond, "largest random pause between changes; at least -reload, so that file and hosts changes land at uniformly random points of the reload tick")
	debounce := flag.Duration("debounce", 5*time.Millisecond, "llq's debounce (its default is 5ms)")
	proto := flag.String("proto", "llq", "the subscriber's protocol: llq (events over UDP) or push (DNS Push over TLS)")
	flag.Parse()
	if *proto != "llq" && *proto != "push" {
		fmt.Fprintln(os.Stderr, "trigger-latency: -proto is llq or push")
		os.Exit(2)
	}
	if err := run(*n, strings.Split(*which, ","), *reload, *pause, *debounce, *proto == "push"); err != nil {
		fmt.Fprintln(os.Stderr, "trigger-latency:", err)
		os.Exit(1)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startEtcd(dir string) (*embed.Etcd, string, error) {
	cp, err := freePort()
	if err != nil {
		return nil, "", err
	}
	pp, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Name = "bench"
	cfg.Dir = dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop()) // its shutdown logs errors
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", cp)}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", pp)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("etcd did not become ready")
	}
	return e, cu.String(), nil
}

func writeFile(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

const zoneFmt = `$ORIGIN file.example.
@ 3600 IN SOA ns1 hostmaster %d 7200 3600 1209600 300
@ 3600 IN NS ns1
ns1 3600 IN A 192.0.2.53
www 3600 IN A %s
`

// arrivals hands out the arrival time of the next event packet per name.
type arrivals struct {
	mu sync.Mutex
	ch map[string]chan time.Time
}

func (a *arrivals) hook(dir client.Direction, _ netip.AddrPort, b []byte) {
	if dir != client.Received {
		return
	}
	now := time.Now()
	m := new(dns.Msg)
	if m.Unpack(b) != nil || len(m.Question) != 1 {
		return
	}
	if opts := wire.Options(m); len(opts) != 1 || opts[0].Opcode != wire.OpEvent {
		return
	}
	a.mu.Lock()
	ch := a.ch[strings.ToLower(m.Question[0].Name)]
	a.mu.Unlock()
	select {
	case ch <- now:
	default:
	}
}

// subscriber is what run needs of an LLQ or a DNS Push client.
type subscriber interface {
	subscribe(ctx context.Context, q dns.Question) (io.Closer, error)
	Close() error
}

type llqSubscriber struct{ *client.Client }

func (c llqSubscriber) subscribe(ctx context.Context, q dns.Question) (io.Closer, error) {
	return c.Subscribe(ctx, q)
}

type pushSubscriber struct{ *client.PushClient }

func (c pushSubscriber) subscribe(ctx context.Context, q dns.Question) (io.Closer, error) {
	return c.Subscribe(ctx, q)
}

func run(n int, which []string, reload, pause, debounce time.Duration, push bool) error {
	dir, err := os.MkdirTemp("", "trigger-latency")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	es, endpoint, err := startEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		return err
	}
	defer es.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()

	hostsFile := filepath.Join(dir, "hosts")
	zoneFile := filepath.Join(dir, "db.file.example")
	if err := writeFile(hostsFile, "192.0.2.1 www.hosts.example\n"); err != nil {
		return err
	}
	if err := writeFile(zoneFile, fmt.Sprintf(zoneFmt, 1, "192.0.2.1")); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = cli.Put(ctx, "/skydns/example/etcd/www", `{"host":"192.0.2.1","ttl":60}`)
	cancel()
	if err != nil {
		return err
	}

	lp, err := freePort()
	if err != nil {
		return err
	}
	llqAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(lp))
	tlsOpts := ""
	var tlsAddr netip.AddrPort
	var clientTLS *tls.Config
	if push {
		cert, key, conf, err := makeCert(dir)
		if err != nil {
			return err
		}
		tp, err := freePort()
		if err != nil {
			return err
		}
		tlsAddr = netip.AddrPortFrom(llqAddr.Addr(), uint16(tp))
		tlsOpts = fmt.Sprintf("\n        tls %s %s\n        tls-listen %s", cert, key, tlsAddr)
		clientTLS = conf
	}
	llqBlock := fmt.Sprintf("llq {\n        listen %s\n        poll 0\n        debounce %s%s\n    }", llqAddr, debounce, tlsOpts)
	corefile := fmt.Sprintf(`etcd.example:0 {
    bind 127.0.0.1
    %[1]s
    cache 30
    etcd etcd.example {
        endpoint %[2]s
        path /skydns
    }
}
hosts.example:0 {
    bind 127.0.0.1
    %[1]s
    cache 30
    hosts %[3]s hosts.example {
        reload %[5]s
    }
}
file.example:0 {
    bind 127.0.0.1
    %[1]s
    cache 30
    file %[4]s {
        reload %[5]s
    }
}
`, llqBlock, endpoint, hostsFile, zoneFile, reload)
	inst, _, _, err := ctest.CoreDNSServerAndPorts(corefile)
	if err != nil {
		return fmt.Errorf("starting CoreDNS: %v", err)
	}
	defer func() {
		inst.ShutdownCallbacks()
		inst.Stop()
	}()
	time.Sleep(200 * time.Millisecond) // the etcd watch and the first zone scans

	arr := &arrivals{ch: make(map[string]chan time.Time)}
	var c subscriber
	if push {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		pc, err := client.DialPush(ctx, tlsAddr, client.PushOptions{TLS: clientTLS, OnMessage: arr.pushHook})
		cancel()
		if err != nil {
			return err
		}
		c = pushSubscriber{pc}
	} else {
		lc, err := client.Dial(llqAddr, client.Options{OnPacket: arr.hook})
		if err != nil {
			return err
		}
		c = llqSubscriber{lc}
	}
	defer c.Close()

	serial := 1
	changes := map[string]func(i int) error{
		"etcd": func(i int) error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := cli.Put(ctx, "/skydns/example/etcd/www", fmt.Sprintf(`{"host":"192.0.2.%d","ttl":60}`, 2+i%250))
			return err
		},
		"hosts": func(i int) error {
			return writeFile(hostsFile, fmt.Sprintf("192.0.2.%d www.hosts.example\n", 2+i%250))
		},
		"file": func(i int) error {
			serial++
			return writeFile(zoneFile, fmt.Sprintf(zoneFmt, serial, fmt.Sprintf("192.0.2.%d", 2+i%250)))
		},
	}

	proto := "LLQ event over UDP"
	if push {
		proto = "DNS Push PUSH over TLS"
	}
	fmt.Printf("subscriber: %s; changes per trigger: %d; hosts/file reload %s; llq debounce %s; random pause up to %s between changes\n", proto, n, reload, debounce, pause)
	fmt.Printf("%-14s %8s %8s %8s %8s %8s %8s %5s\n", "trigger", "min", "p50", "p90", "p99", "max", "mean", "lost")
	for _, name := range which {
		change, ok := changes[name]
		if !ok {
			return fmt.Errorf("unknown trigger %q", name)
		}
		qname := "www." + name + ".example."
		ch := make(chan time.Time, 16)
		arr.mu.Lock()
		arr.ch[qname] = ch
		arr.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		sub, err := c.subscribe(ctx, dns.Question{Name: qname, Qtype: dns.TypeA, Qclass: dns.ClassINET})
		cancel()
		if err != nil {
			return fmt.Errorf("subscribing to %s: %v", qname, err)
		}
		if push {
			// The initial PUSH of the subscription's answers is no change.
			select {
			case <-ch:
			case <-time.After(5 * time.Second):
				return fmt.Errorf("no initial PUSH for %s", qname)
			}
		}
		var fromIssue, fromReturn []time.Duration
		lost := 0
		for i := range n {
			time.Sleep(time.Duration(rand.Int64N(int64(pause) + 1)))
			for len(ch) > 0 { // a retransmission, say
				<-ch
			}
			issued := time.Now()
			if err := change(i); err != nil {
				return fmt.Errorf("%s change: %v", name, err)
			}
			returned := time.Now()
			select {
			case at := <-ch:
				fromIssue = append(fromIssue, at.Sub(issued))
				fromReturn = append(fromReturn, at.Sub(returned))
			case <-time.After(5 * time.Second):
				lost++
			}
		}
		sub.Close()
		report(name+"/issued", fromIssue, lost)
		report(name+"/returned", fromReturn, lost)
	}
	return nil
}

func report(name string, lat []time.Duration, lost int) {
	if len(lat) == 0 {
		fmt.Printf("%-14s no events, %d lost\n", name, lost)
		return
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	r := func(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }
	fmt.Printf("%-14s %8s %8s %8s %8s %8s %8s %5d\n", name, r(lat[0]), r(q(0.50)), r(q(0.90)), r(q(0.99)), r(lat[len(lat)-1]), r(sum/time.Duration(len(lat))), lost)
}
