//go:build linux

package test

import (
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDig: the dig commands of docs/walk-through.md work against a real
// server: discovery through the ordinary port, then RFC 8764's four-way
// handshake and a termination, each an LLQ option dig sends with +ednsopt
// and decodes in its reply. dig must keep one source port (-b) for the
// challenge, which is bound to the client's address and port.
func TestDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("no dig: apt-get install bind9-dnsutils (.ci/run does)")
	}
	s := startServer(t, "", wwwRecords...)
	_, dnsPort, _ := net.SplitHostPort(s.dns)
	run := digRunner(t, dig)

	out := run("@127.0.0.1", "-p", dnsPort, "_dns-llq._udp.example.org", "SRV", "+short")
	if want := fmt.Sprintf("0 0 %d llq.example.org.", s.llq.Port()); strings.TrimSpace(out) != want {
		t.Fatalf("discovery: %q, want %q", out, want)
	}

	src := "127.0.0.1#" + strconv.Itoa(int(freePort(t)))
	llq := []string{"-b", src, "@127.0.0.1", "-p", strconv.Itoa(int(s.llq.Port())), "www.example.org", "A"}
	out = run(append(llq, "+ednsopt=1:000100010000000000000000000000000e10")...)
	m := regexp.MustCompile(`; LLQ: Version: 1, Opcode: 1, Error: 0, Identifier: (\d+), Lifetime: (\d+)`).FindStringSubmatch(out)
	if m == nil || m[1] == "0" {
		t.Fatalf("no challenge decoded:\n%s", out)
	}
	id, _ := strconv.ParseUint(m[1], 10, 64)
	lease, _ := strconv.ParseUint(m[2], 10, 32)
	out = run(append(llq, fmt.Sprintf("+ednsopt=1:000100010000%016x%08x", id, lease))...)
	if !strings.Contains(out, "; LLQ: Version: 1, Opcode: 1, Error: 0, Identifier: "+m[1]) ||
		!regexp.MustCompile(`www\.example\.org\.\s+\d+\s+IN\s+A\s+192\.0\.2\.1`).MatchString(out) {
		t.Fatalf("no ACK with the answers:\n%s", out)
	}
	out = run(append(llq, fmt.Sprintf("+ednsopt=1:000100020000%016x00000000", id))...)
	if !strings.Contains(out, "; LLQ: Version: 1, Opcode: 2, Error: 0, Identifier: "+m[1]+", Lifetime: 0") {
		t.Fatalf("no termination acknowledged:\n%s", out)
	}
}

// digRunner returns a function that runs dig with its arguments and
// returns what it printed, failing t if dig fails.
func digRunner(t *testing.T, dig string) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		out, err := exec.Command(dig, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
}

// TestDigPrivateLLQ: dig, a client we did not write, finds the private LLQ
// service and sets up an LLQ over TLS in one exchange (RFC 8764's
// two-message setup on a connection: no challenge, since TLS has proven
// the address), decoding the ACK's LLQ option and answers. dig closes its
// connection after the reply, and the LLQ ends with it.
func TestDigPrivateLLQ(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("no dig: apt-get install bind9-dnsutils (.ci/run does)")
	}
	s, _, tlsAddr, _ := pushServer(t, "www IN A 192.0.2.1")
	_, dnsPort, _ := net.SplitHostPort(s.dns)
	run := digRunner(t, dig)
	for _, service := range []string{"_dns-llq-tls._tcp", "_dns-push-tls._tcp"} {
		out := run("@127.0.0.1", "-p", dnsPort, service+".example.org", "SRV", "+short")
		if want := fmt.Sprintf("0 0 %d llq.example.org.", tlsAddr.Port()); strings.TrimSpace(out) != want {
			t.Fatalf("%s: %q, want %q", service, out, want)
		}
	}
	live := metric(t, "subscriptions")
	out := run("+tls", "@127.0.0.1", "-p", strconv.Itoa(int(tlsAddr.Port())), "www.example.org", "A",
		"+ednsopt=1:000100010000000000000000000000000e10")
	m := regexp.MustCompile(`; LLQ: Version: 1, Opcode: 1, Error: 0, Identifier: (\d+), Lifetime: (\d+)`).FindStringSubmatch(out)
	if m == nil || m[1] == "0" || m[2] == "0" {
		t.Fatalf("no ACK decoded:\n%s", out)
	}
	if !regexp.MustCompile(`www\.example\.org\.\s+\d+\s+IN\s+A\s+192\.0\.2\.1`).MatchString(out) {
		t.Fatalf("the ACK has no answers:\n%s", out)
	}
	eventually(t, "the LLQ gone with dig's connection", func() bool { return metric(t, "subscriptions") == live })
}
