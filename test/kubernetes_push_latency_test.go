package test

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/dso"
	"github.com/llqdns/llq/internal/testcert"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKubernetesPushTriggerLatency is TestKubernetesTriggerLatency with a
// DNS Push subscriber: from an EndpointSlice Update returning to the PUSH
// message reaching the client (its OnMessage hook, before the client acts
// on it), over llq's TLS listener, against the same real etcd and
// kube-apiserver. A measurement, not a check: it runs only with
// LLQ_TRIGGER_LATENCY=1; LLQ_TRIGGER_LATENCY_N sets the number of changes.
func TestKubernetesPushTriggerLatency(t *testing.T) {
	if os.Getenv("LLQ_TRIGGER_LATENCY") != "1" {
		t.Skip("a measurement: set LLQ_TRIGGER_LATENCY=1 to run it")
	}
	n := 100
	if s := os.Getenv("LLQ_TRIGGER_LATENCY_N"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			t.Fatalf("LLQ_TRIGGER_LATENCY_N=%q", s)
		}
	}
	cp := startControlPlane(t)
	ns := cp.namespace(t)
	const svc, port = "web", "http"
	cp.headless(t, ns, svc, port, 80, corev1.ProtocolTCP)
	cp.setEndpoints(t, ns, svc, port, 80, corev1.ProtocolTCP, endpoint{ip: "10.1.0.1"})

	ca := testcert.New(t, "127.0.0.1")
	llqPort, tlsPort := freePort(t), freePort(t)
	startCoreDNS(t, fmt.Sprintf(`cluster.local:0 {
    bind 127.0.0.1
    llq {
        listen 127.0.0.1:%d
        tls %s %s
        tls-listen 127.0.0.1:%d
        poll 0
    }
    kubernetes cluster.local {
        kubeconfig %s %s
    }
}
`, llqPort, ca.CertFile, ca.KeyFile, tlsPort, cp.kubeconfig, kubeContext))

	// Arrival times of PUSH messages, stamped before the client parses
	// more than the DSO header.
	pushes := make(chan time.Time, 16)
	hook := func(dir client.Direction, b []byte) {
		if dir != client.Received {
			return
		}
		now := time.Now()
		m, err := dso.Parse(b)
		if err != nil || m.ID != 0 {
			return
		}
		if p, ok := m.Primary(); !ok || p.Type != dso.TypePush {
			return
		}
		select {
		case pushes <- now:
		default:
		}
	}
	name := svc + "." + ns + ".svc.cluster.local."
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.DialPush(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), tlsPort),
		client.PushOptions{TLS: ca.ClientConfig(), OnMessage: hook})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sub, err := c.Subscribe(ctx, dns.Question{Name: name, Qtype: dns.TypeA, Qclass: dns.ClassINET})
	if err != nil {
		t.Fatal(err)
	}
	convergePush(t, sub, "10.1.0.1")

	api := cp.client.DiscoveryV1().EndpointSlices(ns)
	slice, err := api.Get(ctx, svc+"-llq", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := true
	var issued, returned []time.Duration
	lost := 0
	for i := range n {
		// A random pause, so that changes land at random points of the
		// second, as in TestKubernetesTriggerLatency.
		var r [2]byte
		rand.Read(r[:])
		time.Sleep(time.Duration(int(r[0])<<8|int(r[1])) * 1200 * time.Millisecond / 65536)
		drainTimes(pushes)
		eps := []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}}
		want := []string{"10.1.0.1"}
		if i%2 == 0 {
			eps = append(eps, discoveryv1.Endpoint{Addresses: []string{"10.1.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
			want = append(want, "10.1.0.2")
		}
		slice.Endpoints = eps
		t0 := time.Now()
		slice, err = api.Update(context.Background(), slice, metav1.UpdateOptions{})
		t1 := time.Now()
		if err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-pushes:
			issued = append(issued, at.Sub(t0))
			returned = append(returned, at.Sub(t1))
		case <-time.After(5 * time.Second):
			lost++
		}
		convergePush(t, sub, want...)
	}
	t.Logf("kubernetes trigger over DNS Push, %d changes, %d lost (no PUSH within 5 s)", n, lost)
	logLatencies(t, "issued", issued)
	logLatencies(t, "returned", returned)
	if lost > 0 {
		t.Errorf("%d of %d changes produced no PUSH within 5 s", lost, n)
	}
}

// convergePush waits until the subscription's answers are A records of
// exactly ips.
func convergePush(t *testing.T, sub *client.PushSubscription, ips ...string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		var got []string
		for _, rr := range sub.Answers() {
			if a, ok := rr.(*dns.A); ok {
				got = append(got, a.A.String())
			}
		}
		slices.Sort(got)
		if slices.Equal(got, ips) {
			return
		}
		select {
		case <-sub.Events():
		case <-deadline:
			t.Fatalf("answers %v, want %v", got, ips)
		}
	}
}

// logLatencies logs the quantiles as bench/trigger-latency computes them.
func logLatencies(t *testing.T, from string, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	q := func(p float64) time.Duration {
		return lat[min(len(lat)-1, int(p*float64(len(lat))))].Round(10 * time.Microsecond)
	}
	t.Logf("from %-8s min %v p50 %v p90 %v p99 %v max %v mean %v", from, q(0), q(0.5), q(0.9), q(0.99), q(1),
		(sum / time.Duration(len(lat))).Round(10*time.Microsecond))
}
