//go:build linux

package test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// A change to one Service re-resolves the questions about that Service and
// its endpoints, not every cluster name; a change nobody asks about
// re-resolves nothing.

// precisionCorefile serves cluster.local and its reverse zone from the
// kubernetes plugin, with the poll off so that every re-resolution is the
// kubernetes trigger's, and no per-client limits in the way of many LLQs.
func precisionCorefile(dnsPort, llqPort uint16, kubeconfig, extra string) string {
	return fmt.Sprintf(`cluster.local:%d in-addr.arpa:%d {
    bind 127.0.0.1
    %s
    llq {
        listen 127.0.0.1:%d
        poll 0
        max-llqs-per-client 0
        setup-rate 1000000
    }
    kubernetes cluster.local in-addr.arpa {
        kubeconfig %s %s
    }
}
`, dnsPort, dnsPort, extra, llqPort, kubeconfig, kubeContext)
}

// precisionService is service i of a namespace: headless, port http/TCP,
// two endpoints with hostnames, at addresses unique to i.
type precisionService struct {
	ns, name string
	eps      []endpoint
}

func newPrecisionService(ns string, i int) precisionService {
	s := precisionService{ns: ns, name: fmt.Sprintf("svc%d", i)}
	for h := 1; h <= 2; h++ {
		s.eps = append(s.eps, endpoint{ip: fmt.Sprintf("10.%d.%d.%d", 1+i/256, i%256, h), hostname: fmt.Sprintf("ep%d", h)})
	}
	return s
}

func (s precisionService) fqdn() string { return s.name + "." + s.ns + ".svc.cluster.local." }

// questions are the ten questions asked about the service: its addresses,
// ports, endpoints and their PTR names, some with no answer.
func (s precisionService) questions() []dns.Question {
	name := s.fqdn()
	qs := []dns.Question{
		question(name, dns.TypeA),
		question(name, dns.TypeAAAA),
		question(name, dns.TypeSRV),
		question(name, dns.TypeTXT),
		question("_http._tcp."+name, dns.TypeSRV),
		question("_http._udp."+name, dns.TypeSRV),
	}
	for _, ep := range s.eps {
		qs = append(qs, question(ep.hostname+"."+name, dns.TypeA))
		r, _ := dns.ReverseAddr(ep.ip)
		qs = append(qs, question(r, dns.TypePTR))
	}
	return qs
}

func (s precisionService) create(t *testing.T, cp *controlPlane, eps ...endpoint) {
	t.Helper()
	cp.headless(t, s.ns, s.name, "http", 80, corev1.ProtocolTCP)
	cp.setEndpoints(t, s.ns, s.name, "http", 80, corev1.ProtocolTCP, eps...)
}

// subscribeAll subscribes to every question on 8 goroutines.
func subscribeAll(t *testing.T, c *client.Client, qs []dns.Question) map[dns.Question]*client.Subscription {
	t.Helper()
	subs := make(map[dns.Question]*client.Subscription, len(qs))
	var mu sync.Mutex
	work := make(chan dns.Question)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for q := range work {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				sub, err := c.Subscribe(ctx, q)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("subscribe %s %s: %w", q.Name, dns.TypeToString[q.Qtype], err)
					for range work {
					}
					return
				}
				mu.Lock()
				subs[q] = sub
				mu.Unlock()
			}
		})
	}
	for _, q := range qs {
		work <- q
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	return subs
}

// testKubernetesPrecise: with several Services subscribed to, a change to
// one Service's endpoints re-resolves exactly its questions, and changes to
// a Service nobody asks about re-resolve nothing.
func testKubernetesPrecise(t *testing.T, cp *controlPlane) {
	ns := cp.namespace(t)
	svcs := make([]precisionService, 5)
	var qs []dns.Question
	for i := range svcs {
		svcs[i] = newPrecisionService(ns, i)
		svcs[i].create(t, cp, svcs[i].eps...)
		qs = append(qs, svcs[i].questions()...)
	}
	// CoreDNS runs in a process of its own: its kubernetes plugin sets
	// klog's global logger at setup, while the informers of an in-process
	// CoreDNS that an earlier subtest stopped may still be logging, a race
	// between CoreDNS instances, not llq's.
	p := startCoreDNSProcess(t, "precise", func(ports corednsPorts) string {
		return precisionCorefile(ports.dns, ports.llq, cp.kubeconfig, fmt.Sprintf("prometheus 127.0.0.1:%d", ports.metrics))
	})
	c := dial(t, p.llq, client.Options{})
	subs := subscribeAll(t, c, qs)
	s0 := svcs[0]
	a := subs[question(s0.fqdn(), dns.TypeA)]
	converge(t, a, aRecords(t, s0.fqdn(), s0.eps[0].ip, s0.eps[1].ip))

	start := p.metric("resolutions_total", "trigger", "kubernetes")
	if start < 0 {
		t.Fatal("no metrics from the CoreDNS process")
	}
	resolved := func() float64 { return p.metric("resolutions_total", "trigger", "kubernetes") - start }
	// Nobody asks about svc9, in the same namespace and informers.
	idle := newPrecisionService(ns, 9)
	idle.create(t, cp, idle.eps...)
	cp.setEndpoints(t, ns, idle.name, "http", 80, corev1.ProtocolTCP, idle.eps[0])
	// A third endpoint for svc0: its questions are re-resolved (the PTR
	// names of its first two endpoints too: they are in the slice), and no
	// other Service's.
	third := endpoint{ip: "10.1.0.3", hostname: "ep3"}
	cp.setEndpoints(t, ns, s0.name, "http", 80, corev1.ProtocolTCP, s0.eps[0], s0.eps[1], third)
	converge(t, a, aRecords(t, s0.fqdn(), s0.eps[0].ip, s0.eps[1].ip, third.ip))
	// The idle Service's changes were made first, on the same informers:
	// whatever they caused was counted by now, and each question of svc0
	// is re-resolved once.
	eventually(t, "svc0's ten questions re-resolved", func() bool { return resolved() >= 10 })
	// Another change to svc0, whose event marks the end of anything the
	// first might still cause.
	cp.setEndpoints(t, ns, s0.name, "http", 80, corev1.ProtocolTCP, s0.eps[0], s0.eps[1])
	converge(t, a, aRecords(t, s0.fqdn(), s0.eps[0].ip, s0.eps[1].ip))
	eventually(t, "svc0's questions re-resolved again", func() bool { return resolved() >= 20 })
	if got := resolved(); got != 20 {
		t.Errorf("two changes to one of 5 subscribed Services (10 questions each) and three to an unsubscribed one re-resolved %v questions, want 20", got)
	}
	for q, sub := range subs {
		if q.Qtype == dns.TypeA && q.Name == s0.fqdn() {
			continue
		}
		if evs := drain(sub); len(evs) > 0 && q.Name != "_http._tcp."+s0.fqdn() && q.Name != s0.fqdn() {
			t.Errorf("%s %s: %d events for a change to another service's endpoints", q.Name, dns.TypeToString[q.Qtype], len(evs))
		}
	}
}

// TestKubernetesTriggerPrecision measures how many questions one change to
// one Service re-resolves, with many Services subscribed to. It is a
// measurement, so it only runs with LLQ_K8S_PRECISION=1 (see
// bench/kubernetes-precision.md); LLQ_K8S_PRECISION_SERVICES sets the
// number of Services (default 1000, ten questions each),
// LLQ_K8S_PRECISION_CHANGES the number of changes (default 20).
func TestKubernetesTriggerPrecision(t *testing.T) {
	if os.Getenv("LLQ_K8S_PRECISION") != "1" {
		t.Skip("a measurement: set LLQ_K8S_PRECISION=1 to run it")
	}
	env := func(name string, def int) int {
		if s := os.Getenv(name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				t.Fatalf("%s=%q", name, s)
			}
			return n
		}
		return def
	}
	nSvc, nChanges := env("LLQ_K8S_PRECISION_SERVICES", 1000), env("LLQ_K8S_PRECISION_CHANGES", 20)
	cp := startControlPlane(t)
	// client-go's default of 5 requests per second would spend most of the
	// run creating objects.
	fast := rest.CopyConfig(cp.config)
	fast.QPS, fast.Burst = 1000, 1000
	var err error
	if cp.client, err = kubernetes.NewForConfig(fast); err != nil {
		t.Fatal(err)
	}
	ns := cp.namespace(t)
	svcs := make([]precisionService, nSvc)
	var qs []dns.Question
	start := time.Now()
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				svcs[i].create(t, cp, svcs[i].eps...)
			}
		})
	}
	for i := range svcs {
		svcs[i] = newPrecisionService(ns, i)
		qs = append(qs, svcs[i].questions()...)
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("%d Services and EndpointSlices created in %v", nSvc, time.Since(start).Round(time.Millisecond))

	llqPort := freePort(t)
	startCoreDNS(t, precisionCorefile(0, llqPort, cp.kubeconfig, ""))
	c := dial(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), llqPort), client.Options{})
	start = time.Now()
	subs := subscribeAll(t, c, qs)
	t.Logf("%d LLQs established in %v", len(subs), time.Since(start).Round(time.Millisecond))

	// settle waits until the counter has not moved for 3 s: the old
	// trigger's second looks come up to 1.1 s after a change.
	settle := func(f func() float64) float64 {
		last, since := f(), time.Now()
		for time.Since(since) < 3*time.Second {
			time.Sleep(100 * time.Millisecond)
			if v := f(); v != last {
				last, since = v, time.Now()
			}
		}
		return last
	}
	resolved := counter(t, "resolutions_total", "trigger", "kubernetes")
	settle(resolved)
	base := resolved()

	s0 := svcs[0]
	a := subs[question(s0.fqdn(), dns.TypeA)]
	converge(t, a, aRecords(t, s0.fqdn(), s0.eps[0].ip, s0.eps[1].ip))
	third := endpoint{ip: "10.1.0.3", hostname: "ep3"}
	start = time.Now()
	for i := range nChanges {
		eps, want := s0.eps, []string{s0.eps[0].ip, s0.eps[1].ip}
		if i%2 == 0 {
			eps, want = append(eps[:2:2], third), append(want, third.ip)
		}
		cp.setEndpoints(t, ns, s0.name, "http", 80, corev1.ProtocolTCP, eps...)
		converge(t, a, aRecords(t, s0.fqdn(), want...))
	}
	took := time.Since(start)
	total := settle(resolved) - base
	t.Logf("%d changes to one EndpointSlice of %d Services with %d LLQs: %.0f re-resolutions, %.1f per change (changes converged in %v)",
		nChanges, nSvc, len(subs), total, total/float64(nChanges), took.Round(time.Millisecond))

	// Changes to a Service that nobody asks about.
	idle := newPrecisionService(ns, nSvc)
	base = resolved()
	idle.create(t, cp, idle.eps...)
	for i := range nChanges {
		cp.setEndpoints(t, ns, idle.name, "http", 80, corev1.ProtocolTCP, idle.eps[:1+i%2]...)
	}
	ctx := context.Background()
	if err := cp.client.CoreV1().Services(ns).Delete(ctx, idle.name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	total = settle(resolved) - base
	t.Logf("%d changes to a Service nobody asks about: %.0f re-resolutions, %.1f per change", nChanges+2, total, total/float64(nChanges+2))
}
