package grpcresolver

import (
	"slices"
	"testing"

	"github.com/miekg/dns"
)

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want target
		bad  bool
	}{
		{in: "my-svc.my-ns.svc.cluster.local:8080", want: target{name: "my-svc.my-ns.svc.cluster.local.", port: "8080"}},
		{in: "My-Svc.example.org.", want: target{name: "my-svc.example.org.", port: "443"}},
		{in: "_grpc._tcp.my-svc.my-ns.svc.cluster.local", want: target{name: "_grpc._tcp.my-svc.my-ns.svc.cluster.local.", srv: true}},
		{in: "_grpc.my-svc.example.org:50051", want: target{name: "_grpc.my-svc.example.org.", port: "50051"}},
		{in: "_grpc._tcp.example.org:80", bad: true},
		{in: "", bad: true},
		{in: "svc.example.org:0", bad: true},
		{in: "svc.example.org:http", bad: true},
		{in: "[2001:db8::1]:80", bad: true},
		{in: "a..b", bad: true},
	} {
		got, err := parseTarget(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseTarget(%q) = %+v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseTarget(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestDNSServer(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:1053": "127.0.0.1:1053",
		"10.96.0.10":     "10.96.0.10:53",
		"[2001:db8::1]":  "[2001:db8::1]:53",
	} {
		if got, err := dnsServer(in); err != nil || got != want {
			t.Errorf("dnsServer(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func rrs(t *testing.T, lines ...string) []dns.RR {
	t.Helper()
	var out []dns.RR
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rr)
	}
	return out
}

// TestState: addresses from A and AAAA (through a CNAME too), or from SRV
// targets with their ports; questions follow the SRV targets.
func TestState(t *testing.T) {
	host := target{name: "svc.example.org.", port: "8080"}
	a := answers{
		question("svc.example.org.", dns.TypeA): rrs(t,
			"svc.example.org. 60 IN CNAME web.example.org.",
			"web.example.org. 60 IN A 192.0.2.2",
			"web.example.org. 60 IN A 192.0.2.1"),
		question("svc.example.org.", dns.TypeAAAA): rrs(t, "svc.example.org. 60 IN AAAA 2001:db8::1"),
	}
	if got, want := addrsOf(host.state(a)), []string{"192.0.2.1:8080", "192.0.2.2:8080", "[2001:db8::1]:8080"}; !slices.Equal(got, want) {
		t.Errorf("host state %v, want %v", got, want)
	}
	if got := host.state(answers{}); len(got.Endpoints) != 0 || len(got.Addresses) != 0 {
		t.Errorf("empty answers made %+v", got)
	}

	srv := target{name: "_grpc._tcp.svc.example.org.", srv: true}
	a = answers{}
	if got := srv.questions(a); len(got) != 1 || got[0].Qtype != dns.TypeSRV {
		t.Fatalf("questions before any SRV answer: %v", got)
	}
	a[question(srv.name, dns.TypeSRV)] = rrs(t,
		"_grpc._tcp.svc.example.org. 60 IN SRV 0 0 50051 A.example.org.",
		"_grpc._tcp.svc.example.org. 60 IN SRV 0 0 50052 b.example.org.",
		"_grpc._tcp.svc.example.org. 60 IN SRV 0 0 50053 .")
	if got := srv.questions(a); len(got) != 5 {
		t.Fatalf("questions for two SRV targets: %v", got)
	}
	a[question("a.example.org.", dns.TypeA)] = rrs(t, "a.example.org. 60 IN A 192.0.2.1")
	a[question("b.example.org.", dns.TypeAAAA)] = rrs(t, "b.example.org. 60 IN AAAA 2001:db8::2")
	if got, want := addrsOf(srv.state(a)), []string{"192.0.2.1:50051", "[2001:db8::2]:50052"}; !slices.Equal(got, want) {
		t.Errorf("SRV state %v, want %v", got, want)
	}
}
